"""A logits processor that keeps an assistant reply to a set of harmony message headers.

`tool_choice` "required", a named function and "none" cannot be honoured by asking: the model has
to be kept from writing what it must not. `HeaderConstraint` walks the reply token by token:

- at each message header (the prompt ends in `<|start|>assistant`; later headers follow
  `<|end|><|start|>assistant`) only the tokens that continue one of the allowed headers are
  possible, each header being exactly the tokens our renderer writes for such a message, so a
  forced call re-renders token-exact in the next prompt (the cache reuse depends on that);
- the first message may be analysis (the model reasons first, as it normally does); after an
  analysis message only the target headers (`then`) are allowed, so the model cannot keep
  thinking forever instead of answering;
- inside content no harmony special token is possible except the one that ends this kind of
  message (`<|end|>` for analysis, `<|call|>` for a call, `<|return|>` for a final answer), so
  a call cannot be ended as an answer and no markup is written into text.

Only the last context token is read per step (the processor is called once per sampled token).
When an earlier processor left nothing allowed possible (a test script forcing a banned token),
the preferred allowed token is taken instead, so the constraint always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
import tiktoken

from mlx_oss import tokenizer as tk
from mlx_oss.harmony import ANALYSIS, FINAL, Message, Role, render_message

__all__ = ["Header", "HeaderConstraint", "call_header", "channel_header", "tool_choice_constraint"]


@dataclass(frozen=True)
class Header:
    """One allowed message header: its tokens after `<|start|>assistant` through `<|message|>`,
    and the special token that ends its content."""

    tokens: tuple[int, ...]
    end: int


def _header_of(message: Message, encoding: tiktoken.Encoding) -> tuple[int, ...]:
    toks = render_message(message, encoding=encoding)
    role = 1 + len(encoding.encode_ordinary(Role.ASSISTANT.value))
    return tuple(toks[role : toks.index(tk.MESSAGE) + 1])


def call_header(recipient: str, encoding: tiktoken.Encoding) -> Header:
    """A JSON call to `recipient` (`functions.get_weather`), as `Message.tool_call` renders."""
    return Header(_header_of(Message.tool_call(recipient, ""), encoding), tk.CALL)


def channel_header(channel: str, encoding: tiktoken.Encoding) -> Header:
    """A message on `channel` with no recipient (analysis ends with `<|end|>`, final with `<|return|>`)."""
    end = tk.RETURN if channel == FINAL else tk.END
    return Header(_header_of(Message.assistant("", channel=channel), encoding), end)


_RESTART = (tk.START,)  # + the role tokens, filled in per encoding


class HeaderConstraint:
    """Logits processor (mlx-lm signature). `first`: the headers the reply may open with; `then`:
    the headers allowed after an analysis message. Headers listed first are preferred when an
    earlier processor left no allowed token possible. Stateful: one instance per generation."""

    def __init__(self, first: list[Header], then: list[Header], encoding: tiktoken.Encoding) -> None:
        if not first or not then:
            raise ValueError("a header constraint needs at least one header to allow")
        self.first, self.then = list(first), list(then)
        self._restart = _RESTART + tuple(encoding.encode_ordinary(Role.ASSISTANT.value))
        self._calls = 0
        self._candidates: list[Header] = self.first  # in a header: the headers still possible
        self._pos = 0  # tokens of the current header (or restart) read so far
        self._mode = "header"  # header | content | restart | free
        self._end = tk.END
        self._content_bias: dict[tuple[int, int], mx.array] = {}

    # state ---------------------------------------------------------------------------------

    def _feed(self, tok: int) -> None:
        if self._mode == "header":
            self._candidates = [h for h in self._candidates if h.tokens[self._pos] == tok]
            self._pos += 1
            if not self._candidates:
                self._mode = "free"  # cannot happen unless something overrode the constraint
            elif len(self._candidates[0].tokens) == self._pos:
                self._end, self._mode = self._candidates[0].end, "content"
        elif self._mode == "content":
            if tok == self._end:
                self._mode, self._pos = ("restart", 0) if tok == tk.END else ("free", 0)
        elif self._mode == "restart":
            self._pos = self._pos + 1 if tok == self._restart[self._pos] else -1
            if self._pos < 0:
                self._mode = "free"
            elif self._pos == len(self._restart):
                self._mode, self._pos, self._candidates = "header", 0, self.then

    def _allowed(self) -> list[int] | None:
        """Token ids allowed next, preferred first; None: content (all but the other specials)."""
        if self._mode == "header":
            out: list[int] = []
            for h in self._candidates:
                if h.tokens[self._pos] not in out:
                    out.append(h.tokens[self._pos])
            return out
        if self._mode == "restart":
            return [self._restart[self._pos]]
        return None

    # processor -----------------------------------------------------------------------------

    def _bias_content(self, vocab: int) -> mx.array:
        key = (vocab, self._end)
        if key not in self._content_bias:
            b = np.zeros(vocab, dtype=np.float32)
            b[min(tk.FIRST_SPECIAL, vocab) :] = -np.inf
            if self._end < vocab:
                b[self._end] = 0.0
            self._content_bias[key] = mx.array(b)
        return self._content_bias[key]

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        if self._calls > 0 and context.size:
            self._feed(int(context[-1].item()))
        self._calls += 1
        if self._mode == "free":
            return logits
        vocab = logits.shape[-1]
        allowed = self._allowed()
        if allowed is None:
            bias, preferred = self._bias_content(vocab), self._end
        else:
            b = np.full(vocab, -np.inf, dtype=np.float32)
            b[allowed] = 0.0
            bias, preferred = mx.array(b), allowed[0]
        masked = logits + bias.astype(logits.dtype)
        fallback = mx.where(mx.arange(vocab) == preferred, mx.array(0.0, logits.dtype), mx.array(-mx.inf, logits.dtype))
        return mx.where(mx.isfinite(mx.max(masked, axis=-1, keepdims=True)), masked, fallback)


def tool_choice_constraint(
    mode: str, recipients: tuple[str, ...], encoding: tiktoken.Encoding
) -> HeaderConstraint:
    """The constraint for `tool_choice`: "required"/named -> the reply is (analysis, then) a JSON
    call to one of `recipients`; "none" -> (analysis, then) a final answer, never a call."""
    analysis = channel_header(ANALYSIS, encoding)
    if mode == "none":
        final = channel_header(FINAL, encoding)
        return HeaderConstraint([final, analysis], [final], encoding)
    if mode != "required" or not recipients:
        raise ValueError(f"no constraint for tool_choice {mode!r} with recipients {recipients!r}")
    calls = [call_header(r, encoding) for r in recipients]
    return HeaderConstraint([*calls, analysis], calls, encoding)
