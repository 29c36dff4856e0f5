"""A logits processor that keeps an assistant reply to what the request demands.

Three demands, in any combination, one processor per generation (`ReplyConstraint`):

- **headers** (`tool_choice` "required", a named function, "none", a strict response format): at
  each message header (the prompt ends in `<|start|>assistant`; later headers follow
  `<|end|><|start|>assistant`) only the tokens that continue one of the allowed headers are
  possible, each header being exactly the tokens our renderer writes for such a message, so a
  forced call re-renders token-exact in the next prompt (the cache reuse depends on that). The
  first message may be analysis (the model reasons first, as it normally does); after it only the
  target headers (`then`) are allowed, so the model cannot keep thinking instead of answering.
  Without this demand (`first=None`) headers are the model's own and only read.
- **content** (strict JSON schemas, `grammar.py`): the content of the final answer (key `final`)
  or of a call to a strict function (key: its recipient) follows its grammar token by token, and its
  end token (`<|return|>`, `<|call|>`) is possible only where the document is complete. Every other
  message, analysis first of all, is left to the model.
- **a reasoning budget**: after that many analysis tokens the analysis is closed (`<|end|>`) and the
  reply goes on with one of the `then` headers.

Inside constrained content no harmony special token is possible except the one that ends this kind
of message, so a call cannot be ended as an answer and no markup is written into text. The reply is
read with the harmony `StreamParser` (free headers are classified as the parser classifies them).
Only the last context token is read per step (the processor is called once per sampled token), on the
host, so the next mask is computed while the device runs the forward pass the engine queued before.
When an earlier processor left nothing allowed possible (a test script forcing a banned token), the
preferred allowed token is taken instead, so the constraint always wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import mlx.core as mx
import numpy as np
import tiktoken

from mlx_oss import tokenizer as tk
from mlx_oss.harmony import ANALYSIS, FINAL, Message, Role, StreamParser, render_message

if TYPE_CHECKING:
    from mlx_oss.grammar import ContentMatcher, Grammar, Grammars

__all__ = ["Header", "ReplyConstraint", "call_header", "channel_header", "reply_constraint", "tool_choice_constraint"]


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
# Far below any real logit (a logit_bias of -100 included) and finite in float16: what an allowed token
# an earlier processor made impossible (-inf) gets, so the constraint always leaves a token to draw.
_FLOOR, _PREFERRED = -30000.0, -20000.0
_ENDS = (tk.END, tk.RETURN, tk.CALL)


class ReplyConstraint:
    """Logits processor (mlx-lm signature); stateful: one instance per generation.

    `first`: the headers the reply may open with (None: the model's own); `then`: the headers allowed
    after an analysis message when headers are constrained, and after the reasoning budget is spent.
    Headers listed first are preferred when an earlier processor left no allowed token possible.
    `content`: grammars by target (`final`, or a call's recipient), walked with `grammars`.
    `reasoning_budget`: analysis tokens allowed in the reply (None: no limit)."""

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        *,
        first: list[Header] | None = None,
        then: list[Header] | None = None,
        content: Mapping[str, Grammar] | None = None,
        grammars: Grammars | None = None,
        reasoning_budget: int | None = None,
    ) -> None:
        if first is not None and not first or (first is not None or reasoning_budget is not None) and not then:
            raise ValueError("a header constraint needs at least one header to allow")
        if content and grammars is None:
            raise ValueError("content grammars need the Grammars that compiled them")
        if reasoning_budget is not None and reasoning_budget < 0:
            raise ValueError(f"reasoning_budget must be >= 0, got {reasoning_budget}")
        self.first, self.then = first, then
        self.content, self.grammars, self.budget = dict(content or {}), grammars, reasoning_budget
        self._parser = StreamParser(Role.ASSISTANT, encoding=encoding)
        self._restart = _RESTART + tuple(encoding.encode_ordinary(Role.ASSISTANT.value))
        self._calls = 0
        self._candidates: list[Header] | None = first  # in a forced header: the headers still possible
        self._pos = 0  # tokens of the current header (or restart) read so far
        self._mode = "header" if first is not None else "open"  # header | open | content | restart | done
        self._forced_after_end = first is not None  # an <|end|> is followed by a forced restart and `then`
        self._end: int | None = None  # the token that ends the current content (None: the model's choice)
        self._matcher: ContentMatcher | None = None
        self._thinking = False  # in analysis content, counted against the budget
        self.reasoning_tokens = 0
        self._content_bias: dict[tuple[int, int], mx.array] = {}

    @property
    def matcher(self) -> ContentMatcher | None:
        """The grammar walk of the current content, if it must conform."""
        return self._matcher

    # state ---------------------------------------------------------------------------------

    def _feed(self, tok: int) -> None:
        ev = self._parser.process(tok)
        if self._mode == "header":
            self._candidates = [h for h in self._candidates if h.tokens[self._pos] == tok]
            self._pos += 1
            if not self._candidates:
                self._mode = "done"  # cannot happen unless something overrode the constraint
            elif len(self._candidates[0].tokens) == self._pos:
                self._open_content(ev.channel, ev.recipient, self._candidates[0].end)
        elif self._mode == "open":
            if ev.header_done:
                self._open_content(ev.channel, ev.recipient, None)
        elif self._mode == "content":
            if tok in _ENDS:
                self._matcher, self._thinking = None, False
                if tok != tk.END:
                    self._mode = "done"
                elif self._forced_after_end:
                    self._mode, self._pos = "restart", 0
                else:
                    self._mode = "open"
            else:
                if self._matcher is not None:
                    self._matcher.feed(tok)
                if self._thinking:
                    self.reasoning_tokens += 1
        elif self._mode == "restart":
            self._pos = self._pos + 1 if tok == self._restart[self._pos] else -1
            if self._pos < 0:
                self._mode = "done"
            elif self._pos == len(self._restart):
                self._mode, self._pos, self._candidates = "header", 0, self.then

    def _open_content(self, channel: str | None, recipient: str | None, end: int | None) -> None:
        self._mode, self._end = "content", end
        target = recipient if recipient is not None else channel
        grammar = self.content.get(target) if target is not None else None
        if grammar is not None:
            self._end = tk.CALL if recipient is not None else tk.RETURN if channel == FINAL else tk.END
            self._matcher = self.grammars.matcher(grammar, self._end)
        self._thinking = channel == ANALYSIS and recipient is None and self.budget is not None

    def _allowed(self, vocab: int) -> tuple[np.ndarray | list[int] | None, int]:
        """(the tokens allowed next: ids, or a bool mask; None: all but other specials, or all when the
        content's end is the model's choice; the preferred token)."""
        if self._mode == "header":
            out: list[int] = []
            for h in self._candidates:
                if h.tokens[self._pos] not in out:
                    out.append(h.tokens[self._pos])
            return out, out[0]
        if self._mode == "restart":
            return [self._restart[self._pos]], self._restart[self._pos]
        if self._thinking and self.reasoning_tokens >= self.budget:
            self._forced_after_end = True
            return [tk.END], tk.END
        if self._matcher is not None:
            mask = self._matcher.allowed(vocab)
            preferred = self._end if self._end < vocab and mask[self._end] else int(np.argmax(mask))
            return mask, preferred
        return None, -1  # the content's own end is preferred (`_content_masks`)

    # processor -----------------------------------------------------------------------------

    def _masks(self, allowed: np.ndarray, preferred: int) -> tuple[mx.array, mx.array]:
        """(bias: 0 where allowed, -inf elsewhere; floor: _FLOOR where allowed, _PREFERRED at `preferred`,
        -inf elsewhere) for `max(logits + bias, floor)`: the allowed tokens keep their logits, unless an
        earlier processor made them -inf (a test script forcing a banned token), in which case the floor
        makes them possible again, the preferred one first."""
        bias = np.where(allowed, np.float32(0), np.float32(-np.inf))
        floor = np.where(allowed, np.float32(_FLOOR), np.float32(-np.inf))
        if 0 <= preferred < floor.shape[0]:
            floor[preferred] = _PREFERRED
        return mx.array(bias), mx.array(floor)

    def _content_masks(self, vocab: int, end: int) -> tuple[mx.array, mx.array]:
        key = (vocab, end)
        if key not in self._content_bias:
            allowed = np.ones(vocab, dtype=bool)
            allowed[min(tk.FIRST_SPECIAL, vocab) :] = False
            if end < vocab:
                allowed[end] = True
            self._content_bias[key] = self._masks(allowed, end)
        return self._content_bias[key]

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        if self._calls > 0 and context.size:
            # read on the host: `context[-1].item()` would queue behind the forward pass the engine has
            # just started, and the mask would wait for it instead of being computed meanwhile
            self._feed(int(np.asarray(context)[-1]))
        self._calls += 1
        if self._mode in ("open", "done"):
            return logits
        vocab = logits.shape[-1]
        allowed, preferred = self._allowed(vocab)
        if allowed is None:
            if self._end is None:  # the model's own message: nothing to enforce
                return logits
            bias, floor = self._content_masks(vocab, self._end)
        else:
            if not isinstance(allowed, np.ndarray):
                ids, allowed = allowed, np.zeros(vocab, dtype=bool)
                allowed[ids] = True
            bias, floor = self._masks(allowed, preferred)
        return mx.maximum(logits + bias.astype(logits.dtype), floor.astype(logits.dtype))


def reply_constraint(
    encoding: tiktoken.Encoding,
    *,
    tool_choice: str = "auto",
    recipients: tuple[str, ...] = (),
    answer: Grammar | None = None,
    arguments: Mapping[str, Grammar] | None = None,
    grammars: Grammars | None = None,
    reasoning_budget: int | None = None,
    builtin_calls: bool = False,
) -> ReplyConstraint | None:
    """The constraint for a request (None when it demands nothing):

    - `tool_choice` "required" (`recipients`: the calls allowed) -> (analysis, then) one of those calls;
      "none" -> (analysis, then) a final answer; "auto" -> the model's own headers, unless `answer`;
    - `answer`: the final answer's grammar (a strict response format): headers are constrained too
      (analysis, then the answer or, with `auto`, a call to one of `recipients`);
    - `arguments`: grammars of strict functions' arguments, by recipient;
    - `reasoning_budget`: analysis tokens before the analysis is closed (0: no analysis message);
    - `builtin_calls`: the reply may call built-in tools (browser, python), whose headers the model
      writes its own way: a strict `answer` then leaves the headers to the model (the answer is still
      enforced once the model opens it; after a spent budget the reply goes on with `then`)."""
    if tool_choice not in ("auto", "none", "required") or tool_choice == "required" and not recipients:
        raise ValueError(f"no constraint for tool_choice {tool_choice!r} with recipients {recipients!r}")
    final = channel_header(FINAL, encoding)
    calls = [call_header(r, encoding) for r in recipients] if tool_choice != "none" else []
    then = calls if tool_choice == "required" else [final, *calls]
    forced = tool_choice != "auto" or answer is not None and not builtin_calls
    content = {**(arguments or {}), **({FINAL: answer} if answer is not None else {})}
    if not forced and not content and reasoning_budget is None:
        return None
    first = None
    if forced:
        first = list(then) if reasoning_budget == 0 else [*then, channel_header(ANALYSIS, encoding)]
    return ReplyConstraint(encoding, first=first, then=then, content=content, grammars=grammars,
                           reasoning_budget=reasoning_budget)  # fmt: skip


def tool_choice_constraint(mode: str, recipients: tuple[str, ...], encoding: tiktoken.Encoding) -> ReplyConstraint:
    """The constraint for `tool_choice` alone: "required"/named -> the reply is (analysis, then) a JSON
    call to one of `recipients`; "none" -> (analysis, then) a final answer, never a call."""
    if mode not in ("required", "none"):
        raise ValueError(f"no constraint for tool_choice {mode!r} with recipients {recipients!r}")
    c = reply_constraint(encoding, tool_choice=mode, recipients=recipients)
    assert c is not None
    return c
