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

Structured output (docs/SERVER.md): a strict response format (`json_schema` with `strict: true`, or
`json_object`) and the parameters of `strict: true` function tools are `StrictSchema`s of the turn
(`Turn.schemas`). `Turn.compile` compiles them (`mlx_oss.grammar.Grammars`, cached by hash) before the
request is queued, a schema that cannot be enforced being a 400 that names its parameter and the
keyword; `Turn.constraint` then makes the `ReplyConstraint` of one generation round (fresh each
round: it is stateful), which also applies `tool_choice` and the reasoning budget
(`reasoning.max_tokens`). The prompt is the same with or without them (the schemas are described to
the model either way): the constraint acts on sampling only, so cache reuse is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import mlx.core as mx
import tiktoken

from mlx_oss.harmony import (
    ANALYSIS,
    FINAL,
    Message,
    ReasoningEffort,
    ResponseFormat,
    Role,
    SystemContent,
    prune_analysis,
    render_with_spans,
)
from mlx_oss.constraint import ReplyConstraint, reply_constraint
from mlx_oss.grammar import ANY_JSON_OBJECT, Grammar, GrammarError, Grammars
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server.errors import APIError, bad_request
from mlx_oss.server.tools import StrictSchema, ToolChoice, ToolSet, check_schema

__all__ = ["Turn", "LogitBias", "logprobs_setting", "effort", "reasoning_message", "sampling", "first_of", "response_format",
           "strict_answer", "reasoning_budget", "text_of", "stop_strings", "logit_bias"]  # fmt: skip

# "none"/"minimal" exist in OpenAI's API for other models; gpt-oss's lowest effort is low. "xhigh"
# (OpenAI's newer models) and "max" (Anthropic's `output_config.effort`) ask for the most: high.
_EFFORTS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high",
            "max": "high"}  # fmt: skip
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
    answer_schema: StrictSchema | None = None  # a strict response format / json_object: the answer must follow it
    reasoning_budget: int | None = None  # `reasoning.max_tokens`: analysis tokens before the analysis is closed
    grammars: tuple[tuple[str, Grammar], ...] = ()  # `schemas()` compiled, by target (`compile`)

    def schemas(self) -> tuple[StrictSchema, ...]:
        """What the reply must follow: the answer's schema, then strict functions' arguments."""
        return ((self.answer_schema,) if self.answer_schema is not None else ()) + self.tools.strict

    def compile(self, grammars: Grammars) -> Turn:
        """This turn with its schemas compiled (llguidance; cached by hash, so a client that sends the
        same schema each time compiles it once); 400 naming the parameter and the keyword for a schema
        that cannot be enforced. Slow the first time (the vocabulary is read): call it off the event loop."""
        out = []
        for s in self.schemas():
            try:
                out.append((s.target, grammars.json_schema(s.schema, s.param)))
            except GrammarError as e:
                raise bad_request(f"{e}; with strict false it would only be described to the model", s.param) from None
        return replace(self, grammars=tuple(out))

    def constraint(
        self, encoding: tiktoken.Encoding, grammars: Grammars | None, reasoning_used: int = 0
    ) -> ReplyConstraint | None:
        """A fresh `ReplyConstraint` for one generation round (None when the turn demands nothing):
        `tool_choice`, the answer's and strict calls' grammars (compiled now if `compile` was not
        called), and what is left of the reasoning budget after `reasoning_used` analysis tokens of
        earlier rounds (built-in tool calls)."""
        compiled = dict(self.grammars)
        if self.schemas() and not compiled:
            if grammars is None:
                raise ValueError("a turn with strict schemas needs the Grammars to compile them")
            compiled = dict(self.compile(grammars).grammars)
        answer = compiled.pop(FINAL, None)  # (only the answer's schema has the target `final`)
        c = self.tool_choice
        budget = None if self.reasoning_budget is None else max(0, self.reasoning_budget - reasoning_used)
        recipients = c.recipients if c.mode == "required" else self.tools.recipients()
        return reply_constraint(encoding, tool_choice=c.mode, recipients=recipients,
                                answer=answer, arguments=compiled, grammars=grammars, reasoning_budget=budget,
                                builtin_calls=bool(self.tools.builtin))  # fmt: skip

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

    def generation_sampling(self) -> SamplingConfig:
        """`sampling` plus `logit_bias`. The constraint (`constraint`) is not part of it: it is stateful,
        so the generation sets a fresh one per round as the sampler's `extra`, after these."""
        if not self.logit_bias:
            return self.sampling
        return replace(self.sampling, logits_processors=(*self.sampling.logits_processors, LogitBias(self.logit_bias)))

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
        raise bad_request(f"{param} must be one of low, medium, high (none/minimal mean low, xhigh/max high), "
                          f"not {value!r}", param)  # fmt: skip
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


def _format_fields(spec: dict, param: str) -> tuple[dict, str]:
    """(the json_schema fields, where they are): Chat Completions nests them under `json_schema`."""
    if isinstance(spec.get("json_schema"), dict):
        return spec["json_schema"], f"{param}.json_schema"
    return spec, param


def response_format(spec: Any, param: str) -> ResponseFormat | None:
    """`{"type": "json_schema", "json_schema"|…: {"name", "schema", "description"}}` -> ResponseFormat,
    what the developer message describes to the model. `text` is the default; `json_object` (JSON
    mode) is described as a format whose schema is any object. Whether it is also enforced:
    `strict_answer`."""
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
    d, where = _format_fields(spec, param)
    schema = d.get("schema")
    if not isinstance(schema, dict):
        raise bad_request(f"{param} needs a 'schema' object", f"{where}.schema")
    name = d.get("name") or "response"
    desc = d.get("description")
    check_schema(schema, param, f"{where}.schema")
    return ResponseFormat(name, schema, desc)


def strict_answer(spec: Any, param: str) -> StrictSchema | None:
    """The schema the answer must follow, for a format `response_format` accepted: `json_object`
    (any object), or `json_schema` with `strict: true`; None otherwise (described only)."""
    kind = spec.get("type") if spec is not None else None
    if kind == "json_object":
        return StrictSchema(FINAL, ANY_JSON_OBJECT, f"{param}.type")
    if kind != "json_schema":
        return None
    d, where = _format_fields(spec, param)
    return StrictSchema(FINAL, d.get("schema"), f"{where}.schema") if d.get("strict") is True else None


def reasoning_budget(reasoning: dict) -> int | None:
    """`reasoning.max_tokens` (OpenRouter's convention; an integer >= 0, checked by the request schema)."""
    value = reasoning.get("max_tokens")
    return None if value is None else int(value)  # (2.0 passes the schema as an integer)


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
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        # OpenAI's refusal parts hold their text in `refusal`
        text = part.get("refusal" if kind == "refusal" and "refusal" in part else "text") if isinstance(part, dict) else None
        if kind not in kinds or not isinstance(text, str):
            raise bad_request(f"{param}[{i}]: only text parts are supported (got {kind!r})", f"{param}[{i}]")
        out.append(text)
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
