"""The API-independent form of a request: a harmony conversation plus generation settings.

Both APIs translate into `Turn`; `Turn.render` makes the prompt exactly as `Chat` does (earlier
turns' analysis pruned, token-exact harmony), so the engine's cross-turn reuse works the same for
stateless HTTP clients. Reasoning a client sends back is added as an analysis message before that
assistant turn's other messages; `prune_analysis` then keeps it only where harmony does (the turn
being continued after a tool call) and drops it elsewhere.

`truncation: "auto"` (Responses): when the prompt does not fit the context, the oldest turns (each a
user message and what follows it up to the next one) are dropped, as few as needed; the system and
developer messages and the last user turn always stay (if even that does not fit: 400
`context_length_exceeded`). `logit_bias` (both APIs): `LogitBias`, a logits processor that adds each
bias to its token's logit (ids checked against the vocabulary when the prompt is rendered).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import mlx.core as mx
import tiktoken

from mlx_oss.harmony import (
    ANALYSIS,
    Message,
    ReasoningEffort,
    ResponseFormat,
    Role,
    SystemContent,
    prune_analysis,
    render_with_spans,
)
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server.errors import APIError, bad_request
from mlx_oss.constraint import tool_choice_constraint
from mlx_oss.server.tools import ToolChoice, ToolSet, check_schema

__all__ = ["Turn", "LogitBias", "logprobs_setting", "effort", "reasoning_message", "sampling", "first_of", "response_format",
           "text_of", "stop_strings", "logit_bias"]  # fmt: skip

# "none"/"minimal" exist in OpenAI's API for other models; gpt-oss's lowest effort is low.
_EFFORTS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high"}
REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking")


@dataclass(frozen=True)
class Turn:
    """What to generate: history (user/assistant/tool messages), settings for the header messages."""

    history: tuple[Message, ...]
    instructions: str | None = None
    tools: ToolSet = field(default_factory=ToolSet)
    effort: ReasoningEffort = ReasoningEffort.MEDIUM
    response_format: ResponseFormat | None = None
    max_tokens: int | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias): `logit_bias`, checked by the request schema
    truncate: bool = False  # `truncation: "auto"`: drop the oldest turns to fit the context

    def header(self) -> list[Message]:
        sys = Message.system(SystemContent(reasoning_effort=self.effort, tools=self.tools.builtin))
        out = [sys]
        t = self.tools
        if self.instructions is not None or t.functions or t.namespaces or self.response_format is not None:
            out.append(
                Message.developer(
                    self.instructions,
                    functions=t.functions,
                    response_formats=[self.response_format] if self.response_format else [],
                    tools=t.namespaces,
                )
            )
        return out

    def generation_sampling(self, encoding: tiktoken.Encoding) -> SamplingConfig:
        """`sampling` plus `logit_bias` and, for a constrained `tool_choice`, a fresh `HeaderConstraint`
        (stateful: one per generation), last so that it overrides anything before it. `auto` without a
        bias adds nothing."""
        added: tuple = (LogitBias(self.logit_bias),) if self.logit_bias else ()
        c = self.tool_choice
        if c.constrained:
            added += (tool_choice_constraint(c.mode, c.recipients, encoding),)
        if not added:
            return self.sampling
        return replace(self.sampling, logits_processors=(*self.sampling.logits_processors, *added))

    def render(self, encoding: tiktoken.Encoding, max_context: int | None = None) -> tuple[list[int], tuple[int, ...]]:
        """(prompt tokens ending in `<|start|>assistant`, snapshot points: end of the system message,
        of the developer message, of the last message). With `truncate` and `max_context`, the oldest
        turns are dropped until the prompt fits (see the module doc)."""
        for token, _ in self.logit_bias:
            if token >= encoding.n_vocab:
                raise bad_request(f"logit_bias names token {token}; the vocabulary has {encoding.n_vocab} tokens "
                                  f"(ids 0-{encoding.n_vocab - 1})", "logit_bias")  # fmt: skip
        head = self.header()
        history = list(self.history)
        out = self._render(head, history, encoding)
        if not self.truncate or max_context is None or len(out[0]) < max_context:
            return out
        cuts = [i for i, m in enumerate(history) if m.role is Role.USER and i > 0]  # where a kept part may start
        lo, hi, best = 0, len(cuts) - 1, None  # the fewest dropped turns that fit (binary search)
        while lo <= hi:
            mid = (lo + hi) // 2
            tried = self._render(head, history[cuts[mid] :], encoding)
            if len(tried[0]) < max_context:
                best, hi = tried, mid - 1
            else:
                lo = mid + 1
        if best is None:
            raise APIError(400, f"This model's maximum context length is {max_context} tokens; with truncation 'auto' "
                           "the last turn alone (and the instructions and tools) does not fit.",
                           param="input", code="context_length_exceeded")  # fmt: skip
        return best

    @staticmethod
    def _render(head: list[Message], history: list[Message], encoding: tiktoken.Encoding) -> tuple[list[int], tuple[int, ...]]:
        try:
            r = render_with_spans(head + prune_analysis(history), Role.ASSISTANT, encoding=encoding)
        except (ValueError, TypeError) as e:
            raise bad_request(f"the conversation cannot be rendered as harmony: {e}", "messages") from None
        return r.tokens, (r.spans[0].end, r.spans[len(head) - 1].end, r.spans[-1].end)


class LogitBias:
    """A logits processor adding `bias` ((token id, value) pairs, values -100..100 as OpenAI's
    `logit_bias`) to the logits; ids past the model's vocabulary are ignored (the request's ids are
    checked against the tokenizer's when it is rendered)."""

    def __init__(self, bias: tuple[tuple[int, float], ...]) -> None:
        self.bias = bias
        self._dense: mx.array | None = None

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        if self._dense is None or self._dense.shape[-1] != logits.shape[-1]:
            n = logits.shape[-1]
            kept = [(t, v) for t, v in self.bias if t < n]
            dense = mx.zeros((n,))  # float32
            if kept:
                dense = dense.at[mx.array([t for t, _ in kept])].add(mx.array([v for _, v in kept]))
            self._dense = dense
        return logits + self._dense.astype(logits.dtype)


def logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """`logit_bias` (checked by the request schema: token-id keys, values -100..100) as pairs."""
    if not value:
        return ()
    return tuple(sorted((int(k), float(v)) for k, v in value.items()))


def effort(value: Any, param: str) -> ReasoningEffort:
    if value is None:
        return ReasoningEffort.MEDIUM
    if not isinstance(value, str) or value.lower() not in _EFFORTS:
        raise bad_request(f"{param} must be one of low, medium, high (none/minimal mean low), not {value!r}", param)
    return ReasoningEffort(_EFFORTS[value.lower()])


def reasoning_message(text: str) -> Message:
    return Message.assistant(text, channel=ANALYSIS)


def first_of(body: dict, *keys: str) -> Any:
    """The first of `keys` that the body sets (e.g. `max_completion_tokens`, then `max_tokens`)."""
    return next((body[k] for k in keys if body.get(k) is not None), None)


def sampling(body: dict, base: SamplingConfig) -> SamplingConfig:
    """The request's temperature/top_p/seed (ranges checked by the request schema) over the server's
    defaults `base`."""
    pick = lambda key, default: default if body.get(key) is None else body[key]  # noqa: E731
    return replace(base, temperature=float(pick("temperature", base.temperature)), top_p=float(pick("top_p", base.top_p)),
                   seed=pick("seed", base.seed))  # fmt: skip


def response_format(spec: Any, param: str) -> ResponseFormat | None:
    """`{"type": "json_schema", "json_schema"|…: {"name", "schema", "description"}}` -> ResponseFormat.
    `text` is the default; `json_object` (JSON mode) is rendered as a format whose schema is any
    object (not enforced while sampling: the model is asked, as with a schema)."""
    if spec is None:
        return None
    kind = spec.get("type") or "text"
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind != "json_schema":
        raise bad_request(f"{param}.type {kind!r} is not supported (use 'text', 'json_object' or 'json_schema')",
                          f"{param}.type")  # fmt: skip
    d = spec.get("json_schema") if isinstance(spec.get("json_schema"), dict) else spec
    schema = d.get("schema")
    if not isinstance(schema, dict):
        raise bad_request(f"{param} needs a 'schema' object", f"{param}.schema")
    name = d.get("name") or "response"
    desc = d.get("description")
    check_schema(schema, param, f"{param}.schema")
    return ResponseFormat(name, schema, desc)


JSON_OBJECT = ResponseFormat("json_object", {"type": "object"}, "Reply with one JSON object.")


def text_of(content: Any, param: str, kinds: tuple[str, ...] = ("text", "input_text", "output_text")) -> str:
    """A message's content: a string or a list of text parts (other part types are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or an array of content parts", param)
    out = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            out.append(part)
            continue
        if not isinstance(part, dict) or part.get("type") not in kinds or not isinstance(part.get("text"), str):
            t = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad_request(f"{param}[{i}]: only text parts are supported (got {t!r})", f"{param}[{i}]")
        out.append(part["text"])
    return "".join(out)


def stop_strings(value: str | list[str] | None) -> tuple[str, ...]:
    """`stop` (checked by the request schema: up to 4 non-empty strings) as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def logprobs_setting(body: dict, on: bool, flag: str) -> int | None:
    """`top_logprobs` (0-20, checked by the request schema) when log-probabilities are asked for (`on`,
    from the field `flag`), else None; 400 for `top_logprobs` without them."""
    top = body.get("top_logprobs")
    if not on:
        if top:
            raise bad_request(f"'top_logprobs' needs {flag}", "top_logprobs")
        return None
    return top or 0
