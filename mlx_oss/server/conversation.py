"""The API-independent form of a request: a harmony conversation plus generation settings.

Both APIs translate into `Turn`; `Turn.render` makes the prompt exactly as `Chat` does (earlier
turns' analysis pruned, token-exact harmony), so the engine's cross-turn reuse works the same for
stateless HTTP clients. Reasoning a client sends back is added as an analysis message before that
assistant turn's other messages; `prune_analysis` then keeps it only where harmony does (the turn
being continued after a tool call) and drops it elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

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
from mlx_oss.server.errors import bad_request
from mlx_oss.constraint import tool_choice_constraint
from mlx_oss.server.tools import FUNCTIONS, ToolChoice, ToolSet, check_schema

__all__ = ["Turn", "logprobs_setting", "effort", "reasoning_message", "sampling", "positive_int", "response_format", "text_of", "stop_strings"]

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

    def header(self) -> list[Message]:
        sys = Message.system(SystemContent(reasoning_effort=self.effort, tools=self.tools.builtin))
        out = [sys]
        if self.instructions is not None or self.tools.functions or self.response_format is not None:
            out.append(
                Message.developer(
                    self.instructions,
                    functions=self.tools.functions,
                    response_formats=[self.response_format] if self.response_format else [],
                )
            )
        return out

    def generation_sampling(self, encoding: tiktoken.Encoding) -> SamplingConfig:
        """`sampling` plus, for a constrained `tool_choice`, a fresh `HeaderConstraint` (stateful: one
        per generation), last so that it overrides anything before it. `auto` adds nothing."""
        c = self.tool_choice
        if not c.constrained:
            return self.sampling
        processor = tool_choice_constraint(c.mode, tuple(FUNCTIONS + n for n in c.functions), encoding)
        return replace(self.sampling, logits_processors=(*self.sampling.logits_processors, processor))

    def render(self, encoding: tiktoken.Encoding) -> tuple[list[int], tuple[int, ...]]:
        """(prompt tokens ending in `<|start|>assistant`, snapshot points: end of the system message,
        of the developer message, of the last message)."""
        head = self.header()
        try:
            r = render_with_spans(head + prune_analysis(list(self.history)), Role.ASSISTANT, encoding=encoding)
        except (ValueError, TypeError) as e:
            raise bad_request(f"the conversation cannot be rendered as harmony: {e}", "messages") from None
        return r.tokens, (r.spans[0].end, r.spans[len(head) - 1].end, r.spans[-1].end)


def effort(value: Any, param: str) -> ReasoningEffort:
    if value is None:
        return ReasoningEffort.MEDIUM
    if not isinstance(value, str) or value.lower() not in _EFFORTS:
        raise bad_request(f"{param} must be one of low, medium, high (none/minimal mean low), not {value!r}", param)
    return ReasoningEffort(_EFFORTS[value.lower()])


def reasoning_message(text: str) -> Message:
    return Message.assistant(text, channel=ANALYSIS)


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise bad_request(f"'{key}' must be a number between {lo:g} and {hi:g}, got {v!r}", key)
    return float(v)


def positive_int(body: dict, *keys: str) -> int | None:
    """The first of `keys` present, validated as an integer >= 1."""
    for key in keys:
        v = body.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad_request(f"'{key}' must be an integer >= 1, got {v!r}", key)
        return v
    return None


def sampling(body: dict, base: SamplingConfig) -> SamplingConfig:
    """The request's temperature/top_p/seed (OpenAI's ranges) over the server's defaults `base`."""
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request(f"'seed' must be an integer, got {seed!r}", "seed")
    top_p = _number(body, "top_p", 0, 1, base.top_p)
    if top_p == 0:
        raise bad_request("'top_p' must be greater than 0", "top_p")
    temperature = _number(body, "temperature", 0, 2, base.temperature)
    return replace(base, temperature=temperature, top_p=top_p, seed=base.seed if seed is None else seed)


def response_format(spec: Any, param: str) -> ResponseFormat | None:
    """`{"type": "json_schema", "json_schema"|…: {"name", "schema", "description"}}` -> ResponseFormat.
    `text` is the default; `json_object` has no schema to render, so it is refused."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise bad_request(f"'{param}' must be an object", param)
    kind = spec.get("type", "text")
    if kind == "text":
        return None
    if kind != "json_schema":
        raise bad_request(f"{param}.type {kind!r} is not supported (use 'text' or 'json_schema')", f"{param}.type")
    d = spec.get("json_schema") if isinstance(spec.get("json_schema"), dict) else spec
    schema = d.get("schema")
    if not isinstance(schema, dict):
        raise bad_request(f"{param} needs a 'schema' object", f"{param}.schema")
    name = d.get("name") or "response"
    if not isinstance(name, str):
        raise bad_request(f"{param}.name must be a string", f"{param}.name")
    desc = d.get("description")
    if desc is not None and not isinstance(desc, str):
        raise bad_request(f"{param}.description must be a string", f"{param}.description")
    check_schema(schema, param, f"{param}.schema")
    return ResponseFormat(name, schema, desc)


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


def stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value) or len(value) > 4:
        raise bad_request("'stop' must be a non-empty string or an array of up to 4 of them", "stop")
    return tuple(value)


MAX_TOP_LOGPROBS = 20  # OpenAI's limit


def logprobs_setting(body: dict, on: bool, flag: str) -> int | None:
    """`top_logprobs` (0-20) when log-probabilities are asked for (`on`, from the field `flag`), else
    None; 400 for `top_logprobs` without them or out of range."""
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise bad_request(f"'top_logprobs' must be an integer between 0 and {MAX_TOP_LOGPROBS}, got {top!r}", "top_logprobs")
    if not on:
        if top:
            raise bad_request(f"'top_logprobs' needs {flag}", "top_logprobs")
        return None
    return top or 0
