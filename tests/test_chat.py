"""Chat sessions on the tiny synthetic model (full harmony vocabulary, sliding window 8).

Random weights never produce harmony, so replies are scripted with a logits processor that forces
harmony-shaped token sequences; the model still runs every forward pass, so cache reuse is checked
against from-scratch logits (float32, relative error <= 1e-5).
"""

from __future__ import annotations

import json
import threading

import mlx.core as mx
import numpy as np
import pytest

import mlx_oss
from mlx_oss.events import AnswerDelta, Done, ReasoningDelta, ToolCall, ToolResult
from mlx_oss.harmony import FINAL, Message, Role, render_message
from mlx_oss.sampling import SamplingConfig, ScriptedTokens


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


def reply(tok, *, analysis=None, final=None, call=None, preamble=None) -> list[int]:
    """Tokens of an assistant reply after the prompt's `<|start|>assistant`, as gpt-oss writes it
    (channel before recipient in tool calls)."""
    parts = []
    if analysis is not None:
        parts.append(f"<|channel|>analysis<|message|>{analysis}<|end|>")
    if preamble is not None:
        parts.append(f"<|channel|>commentary<|message|>{preamble}<|end|>")
    if call is not None:
        name, args = call
        parts.append(f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{args}<|call|>")
    if final is not None:
        parts.append(f"<|channel|>final<|message|>{final}<|return|>")
    return tok.encode("<|start|>assistant".join(parts), allowed_special="all")


class Script(ScriptedTokens):
    """Forces `tokens` and records the logits the sampler saw at the given steps (step 0 is the
    prefill's last position)."""

    def __init__(self, tokens, record=(0,)):
        super().__init__(tokens)
        self.record = set(record)
        self.seen: dict[int, np.ndarray] = {}

    def __call__(self, context, logits):
        if self.step in self.record:
            self.seen[self.step] = np.array(logits.reshape(-1))
        return super().__call__(context, logits)


def use(chat, tokens, record=(0,)) -> Script:
    s = Script(tokens, record)
    chat.sampling = SamplingConfig(seed=0, logits_processors=(s,))
    return s


def scratch_logits(model, tokens) -> np.ndarray:
    return np.array(model(mx.array([tokens]), None, last_only=True)[0, -1])


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_logits(model, script: Script, prompt, step=0):
    assert rel_err(script.seen[step], scratch_logits(model, prompt)) <= 1e-5


# ----------------------------------------------------------------------------- one turn


def test_scripted_turn_events_reply_and_stats(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    assert chat.sampling.temperature == 1.0 and chat.max_tokens is None
    use(chat, reply(tok, analysis="User greets. Reply kindly.", final="Hello there!"))
    events = list(chat.send("Hi"))
    assert isinstance(events[-1], Done) and not any(isinstance(e, Done) for e in events[:-1])
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    answer = "".join(e.text for e in events if isinstance(e, AnswerDelta))
    assert reasoning == "User greets. Reply kindly." and answer == "Hello there!"
    r, s = events[-1].reply, events[-1].stats
    assert (r.answer, r.reasoning, r.tool_calls) == ("Hello there!", reasoning, ())
    assert s.stop_reason == "stop" and s.error is None
    assert s.prompt_tokens == len(chat.engine.tokens) - s.generated_tokens
    assert s.reused_tokens + s.prefilled_tokens == s.prompt_tokens and s.reused_tokens == 0
    assert s.generated_tokens == len(reply(tok, analysis="User greets. Reply kindly.", final="Hello there!"))
    assert s.reasoning_tokens == len(tok.encode("User greets. Reply kindly."))
    assert s.answer_tokens == len(tok.encode("Hello there!"))
    assert s.ttft_s > 0 and s.prefill_tps > 0 and s.decode_tps > 0 and s.peak_memory_bytes > 0
    assert s.context_used == len(chat.engine.tokens) and s.context_limit == model.args.max_position_embeddings
    hist = chat.history
    assert [m.role for m in hist] == [Role.USER, Role.ASSISTANT, Role.ASSISTANT]
    assert hist[-1].channel == FINAL and hist[-1].text == "Hello there!" and not hist[-1].incomplete
    assert chat.messages[0].role is Role.SYSTEM and len(chat.messages) == 4


def test_ask_blocks_and_returns_reply(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, instructions="Answer in French.")
    use(chat, reply(tok, analysis="ok", final="Bonjour"))
    r = chat.ask("Hello")
    assert r.answer == "Bonjour" and r.reasoning == "ok" and r.stats.stop_reason == "stop"
    assert chat.messages[1].role is Role.DEVELOPER


# ----------------------------------------------------------------------------- cache reuse


def test_multiturn_prefills_only_new_tokens_and_logits_match(model_tok):
    """Turn k prefills exactly what turn k adds to the prompt (previous answer, new user message,
    headers), although the previous analysis was generated into the cache and the 8-slot ring
    wrapped many times; the logits equal a from-scratch pass."""
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    prev = None
    for k in range(5):
        prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user(f"question {k} " * 3)])
        s = use(chat, reply(tok, analysis=f"thinking about {k} " * 4, final=f"answer {k}"))
        stats = chat.ask(f"question {k} " * 3).stats
        check_logits(model, s, prompt)
        if prev is not None:
            assert prompt[: len(prev)] == prev  # the previous prompt is a prefix (analysis dropped)
            assert stats.prefilled_tokens == len(prompt) - len(prev)
            assert stats.reused_tokens == len(prev)
        prev = prompt


def test_effort_change_reprefills_from_system_message(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, reasoning_effort="low")
    use(chat, reply(tok, analysis="a", final="b"))
    chat.ask("one")
    chat.reasoning_effort = "HIGH"
    assert chat.reasoning_effort == "high"
    prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user("two")])
    assert "Reasoning: high" in tok.decode(prompt)
    s = use(chat, reply(tok, analysis="c", final="d"))
    stats = chat.ask("two").stats
    check_logits(model, s, prompt)
    # The prompts diverge inside the system message, before any ring snapshot: all is prefilled again.
    assert stats.reused_tokens == 0 and stats.prefilled_tokens == len(prompt)
    stats = use(chat, reply(tok, final="e")) and chat.ask("three").stats
    assert stats.reused_tokens == len(prompt)  # and the next turn is incremental again
    with pytest.raises(ValueError, match="low, medium or high"):
        chat.reasoning_effort = "extreme"


def test_instruction_change_reprefills_after_system_message(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, instructions="Be brief.")
    use(chat, reply(tok, final="b"))
    chat.ask("one")
    chat.instructions = "Be verbose."
    prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user("two")])
    s = use(chat, reply(tok, final="d"))
    stats = chat.ask("two").stats
    check_logits(model, s, prompt)
    system = len(render_message(chat.messages[0], encoding=tok))
    assert stats.reused_tokens == system and stats.prefilled_tokens == len(prompt) - system


def test_cancel_from_another_thread_then_continue(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    use(chat, reply(tok, analysis="one two three four five six seven eight nine ten", final="never"))
    events = []
    for ev in chat.send("count"):
        events.append(ev)
        if sum(isinstance(e, ReasoningDelta) for e in events) == 3:
            t = threading.Thread(target=chat.cancel)
            t.start()
            t.join()
    assert isinstance(events[-1], Done) and events[-1].stats.stop_reason == "cancelled"
    assert sum(isinstance(e, ReasoningDelta) for e in events) == 3  # nothing after the cancel
    last = chat.history[-1]
    assert last.channel == "analysis" and last.incomplete and last.text == "one two three"
    # The cache holds exactly what was fed; the next turn reuses up to the last message's end.
    before = chat.prompt_tokens(chat.history[:-1])
    boundary = len(before) - 2  # before `<|start|>assistant`
    prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user("again")])
    s = use(chat, reply(tok, analysis="x", final="y"))
    stats = chat.ask("again").stats
    assert stats.reused_tokens == boundary and stats.prefilled_tokens == len(prompt) - boundary
    check_logits(model, s, prompt)
    assert "one two three" not in tok.decode(prompt)  # the cut-off reasoning is pruned from the prompt


def test_cancel_in_worker_thread(model_tok):
    """The TUI's case: generation runs in a worker, the UI thread cancels."""
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    started, cancelled = threading.Event(), threading.Event()

    class Blocking(ScriptedTokens):
        def __call__(self, context, logits):
            if self.step == 5:
                started.set()
                cancelled.wait(10)
            return super().__call__(context, logits)

    chat.sampling = SamplingConfig(logits_processors=(Blocking(reply(tok, final="word " * 100)),))
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", chat.ask("go")))
    worker.start()
    assert started.wait(10)
    chat.cancel()
    cancelled.set()
    worker.join(10)
    r = out["r"]
    assert r.stats.stop_reason == "cancelled" and r.answer and len(r.answer) < len("word " * 100)
    assert chat.history[-1].incomplete and chat.history[-1].text == r.answer  # kept as incomplete answer
    assert len(chat.engine.tokens) == r.stats.prompt_tokens + r.stats.generated_tokens
    # An incomplete answer stays in the conversation; the next turn is still exact.
    prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user("more")])
    s = use(chat, reply(tok, final="ok"))
    assert chat.ask("more").answer == "ok"
    check_logits(model, s, prompt)


def test_breaking_out_of_the_stream_keeps_session_consistent(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    use(chat, reply(tok, final="a b c d e f g"))
    stream = chat.send("x")
    for ev in stream:
        if isinstance(ev, AnswerDelta):
            break
    stream.close()  # what the garbage collector or the next send() does to an abandoned stream
    assert chat.history[1].incomplete and chat.history[1].text == "a"  # partial answer kept
    s = use(chat, reply(tok, final="z"))
    prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user("y")])
    assert chat.ask("y").answer == "z"
    check_logits(model, s, prompt)
    # Abandoned without close(): the next send() closes it first.
    use(chat, reply(tok, final="p q r s"))
    stream = chat.send("w")
    next(e for e in stream if isinstance(e, AnswerDelta))  # not next(): a Progress event may come first
    use(chat, reply(tok, final="t"))
    assert chat.ask("v").answer == "t"
    assert [m.text for m in chat.history[-4:]] == ["w", "p", "v", "t"]
    # Abandoned, then reset(): that closes it, and the next send() has nothing left to close.
    use(chat, reply(tok, final="k l m"))
    stream = chat.send("u")
    next(e for e in stream if isinstance(e, AnswerDelta))
    chat.reset()
    use(chat, reply(tok, final="n"))
    assert chat.ask("new").answer == "n" and [m.text for m in chat.history] == ["new", "n"]


# ----------------------------------------------------------------------------- tools


def get_weather(city: str, unit: str = "celsius") -> dict:
    """Current weather for a city.

    Args:
        city: City name.
        unit: celsius or fahrenheit.
    """
    return {"city": city, "temperature": 21, "unit": unit}


def test_auto_tool_round_trip_reuses_cache(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[get_weather])
    first = reply(tok, analysis="Need weather.", call=("get_weather", '{"city": "Paris"}'))
    second = reply(tok, analysis="Got it.", final="It is 21 C in Paris.")
    s = use(chat, first + second, record=(0, len(first)))
    events = list(chat.send("Weather in Paris?"))
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("ToolCall") < kinds.index("ToolResult") < kinds.index("AnswerDelta")
    call = next(e for e in events if isinstance(e, ToolCall))
    assert (call.name, call.arguments, call.error, call.recipient) == (
        "get_weather", {"city": "Paris"}, None, "functions.get_weather")  # fmt: skip
    result = next(e for e in events if isinstance(e, ToolResult))
    assert json.loads(result.content) == {"city": "Paris", "temperature": 21, "unit": "celsius"}
    assert result.id == call.id and not result.error
    done = events[-1]
    assert done.reply.answer == "It is 21 C in Paris." and done.stats.rounds == 2
    assert done.reply.tool_calls == (call,)
    roles = [m.role for m in chat.history]
    assert roles == [Role.USER, Role.ASSISTANT, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT, Role.ASSISTANT]
    # Round 2's prompt: the analysis stays (same turn); only the re-rendered call (its header order
    # differs from the model's) and the tool result are prefilled, from the snapshot after `<|end|>`.
    prompt2 = chat.prompt_tokens(chat.history[:4])
    check_logits(model, s, prompt2, step=len(first))
    prompt1 = chat.prompt_tokens(chat.history[:1])
    analysis_end = len(prompt1) + len(reply(tok, analysis="Need weather."))
    assert done.stats.reused_tokens == analysis_end  # round 1 reused nothing
    assert done.stats.prefilled_tokens == len(prompt1) + len(prompt2) - analysis_end
    assert done.stats.prompt_tokens == len(chat.prompt_tokens(chat.history[:4]))


def test_tool_rounds_are_capped(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[get_weather], max_tool_rounds=2)
    call = reply(tok, call=("get_weather", '{"city": "Rome"}'))
    use(chat, call * 3 + reply(tok, final="done"))
    r = chat.ask("loop")
    assert r.stats.rounds == 2 and r.stats.stop_reason == "tool_call" and len(r.tool_calls) == 2
    assert len(chat.pending_tool_calls()) == 1  # the last call is left for the caller (or send())
    assert r.stats.stop_detail == "tool round limit (2) reached; the call to functions.get_weather not run"


@pytest.mark.parametrize(
    ("tools", "auto", "detail"),
    [
        ([], True, "tool round limit (2) reached"),  # no tools configured: each call answered "unknown tool"
        (["schema"], True, "waiting for the result of the call to functions.lookup (schema-only"),
        ([get_weather], False, "the call to functions.lookup not run (auto_tools is off"),
    ],
)
def test_a_tool_call_stop_says_why(model_tok, tools, auto, detail):
    """The stop notes (TUI, generate) come from `stop_detail`: never a round limit that did not happen."""
    model, tok = model_tok
    schema = {"name": "lookup", "description": "Look up.", "parameters": {"type": "object", "properties": {}}}
    chat = mlx_oss.Chat(model, tok, tools=[schema if t == "schema" else t for t in tools], auto_tools=auto, max_tool_rounds=2)
    use(chat, reply(tok, call=("lookup", "{}")) * 3)
    r = chat.ask("go")
    assert r.stats.stop_reason == "tool_call" and r.stats.stop_detail.startswith(detail)
    if not tools:
        assert "unknown tool 'functions.lookup' (tools: none configured)" in chat.history[2].text


def test_caller_runs_schema_tools(model_tok):
    model, tok = model_tok
    schema = {"type": "function", "function": {"name": "lookup", "description": "Look up a word.",
              "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}  # fmt: skip
    chat = mlx_oss.Chat(model, tok, tools=[schema])
    use(chat, reply(tok, call=("lookup", '{"word": "cat"}')))
    r = chat.ask("define cat")
    assert r.stats.stop_reason == "tool_call" and r.tool_calls[0].arguments == {"word": "cat"}
    assert [c.id for c in chat.pending_tool_calls()] == [r.tool_calls[0].id]
    with pytest.raises(ValueError, match="no pending tool call"):
        chat.add_tool_result("nope", "x")
    chat.add_tool_result(r.tool_calls[0].id, "a small feline")
    assert chat.pending_tool_calls() == []
    prompt = chat.prompt_tokens()
    s = use(chat, reply(tok, final="A cat is a small feline."))
    r2 = chat.ask()  # continue after the tool result
    assert r2.answer == "A cat is a small feline."
    check_logits(model, s, prompt)
    # The model wrote the call's channel before its recipient, the renderer writes it after: the call
    # is prefilled again from the previous prompt's end, the rest came from the cache.
    assert r2.stats.reused_tokens == r.stats.prompt_tokens
    assert r2.stats.prefilled_tokens == len(prompt) - r.stats.prompt_tokens
    with pytest.raises(ValueError, match=r"^send\(\) without text continues after a user message or a tool result$"):
        chat.send()


def test_invalid_tool_arguments_are_reported_and_fed_back(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[get_weather])
    use(chat, reply(tok, call=("get_weather", '{"city": Paris}')) + reply(tok, final="Sorry."))
    events = list(chat.send("weather?"))
    call = next(e for e in events if isinstance(e, ToolCall))
    assert call.arguments is None and "invalid JSON" in call.error and call.raw == '{"city": Paris}'
    res = next(e for e in events if isinstance(e, ToolResult))
    assert res.error and "invalid JSON" in res.content
    assert events[-1].reply.answer == "Sorry."


def test_tool_exceptions_become_results(model_tok):
    model, tok = model_tok

    def boom(x: int) -> str:
        """Always fails."""
        raise RuntimeError("no network")

    chat = mlx_oss.Chat(model, tok, tools=[boom])
    use(chat, reply(tok, call=("boom", '{"x": 1}')) + reply(tok, call=("missing", "{}")) + reply(tok, final="k"))
    results = [e for e in chat.send("go") if isinstance(e, ToolResult)]
    assert results[0].error and "RuntimeError: no network" in results[0].content
    assert results[1].error and "unknown tool" in results[1].content


def test_preamble_is_answer_text_on_commentary(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[get_weather], auto_tools=False)
    use(chat, reply(tok, preamble="Let me check.", call=("get_weather", '{"city": "Oslo"}')))
    events = list(chat.send("weather"))
    pre = [e for e in events if isinstance(e, AnswerDelta)]
    assert "".join(e.text for e in pre) == "Let me check." and {e.channel for e in pre} == {"commentary"}
    assert events[-1].stats.stop_reason == "tool_call" and events[-1].reply.answer == ""


# ----------------------------------------------------------------------------- limits, errors


def test_context_error_before_compute(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, max_context=120)
    with pytest.raises(mlx_oss.ContextLengthError, match="context limit is 120"):
        chat.send("word " * 200)
    assert chat.history == [] and chat.engine.tokens == []
    assert isinstance(mlx_oss.ContextLengthError("x"), ValueError)


def test_context_limit_and_max_tokens_stop_generation(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, max_context=120)
    use(chat, reply(tok, final="w " * 200))
    r = chat.ask("hi")
    assert r.stats.stop_reason == "context" and len(chat.engine.tokens) == 120
    assert chat.history[-1].incomplete and chat.history[-1].text == r.answer
    chat = mlx_oss.Chat(model, tok, max_tokens=7, max_context=400)  # a lost max_tokens ends at 400, not 131072
    use(chat, reply(tok, analysis="long " * 50))
    r = chat.ask("hi")
    assert r.stats.stop_reason == "length" and r.stats.generated_tokens == 7


def test_runtime_error_ends_stream_with_error(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)

    def broken(context, logits):
        raise RuntimeError("kernel exploded\nsecond line")

    chat.sampling = SamplingConfig(logits_processors=(broken,))
    events = list(chat.send("hi"))
    assert len(events) == 1 and events[0].stats.stop_reason == "error"
    assert events[0].stats.error == "RuntimeError: kernel exploded"
    s = use(chat, reply(tok, final="fine"))
    prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user("again")])
    assert chat.ask("again").answer == "fine"  # the session recovers (cache rebuilt)
    check_logits(model, s, prompt)


# ----------------------------------------------------------------------------- settings, saving


def test_structured_output(model_tok):
    model, tok = model_tok
    schema = {"title": "person", "type": "object", "properties": {"name": {"type": "string"}}}
    chat = mlx_oss.Chat(model, tok, response_format=schema, strict=False)  # described only: the script stands
    assert "# Response Formats" in tok.decode(chat.prompt_tokens([mlx_oss.chat.Message.user("x")]))
    use(chat, reply(tok, final='{"name": "Ada"}'))
    assert chat.ask("who?").parsed == {"name": "Ada"}


def test_seed_reproduces_sampling(model_tok):
    model, tok = model_tok
    outs = []
    for seed in (3, 3, 4):
        chat = mlx_oss.Chat(model, tok, max_tokens=12, max_context=400, sampling=SamplingConfig(seed=seed))
        chat.ask("hello")
        outs.append(chat.engine.tokens)
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_save_and_reopen(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, reasoning_effort="high", instructions="Be brief.", tools=[get_weather],
                        response_format={"title": "r", "type": "object"}, strict=False, max_tokens=500,
                        max_reasoning_tokens=64, date="2025-01-02")  # fmt: skip
    use(chat, reply(tok, analysis="hm", final="Hi!"))
    chat.ask("hello")
    data = json.loads(json.dumps(chat.to_json()))
    again = mlx_oss.Chat.from_json(data, model, tok, tools=[get_weather])
    assert again.history == chat.history and again.settings()["reasoning_effort"] == "high"
    assert again.tools[0].fn is get_weather and again.max_tokens == 500
    assert (again.strict, again.max_reasoning_tokens) == (False, 64)
    nxt = [mlx_oss.chat.Message.user("next")]
    assert again.prompt_tokens(again.history + nxt) == chat.prompt_tokens(chat.history + nxt)
    assert "\nCurrent date: 2025-01-02\n" in tok.decode(again.prompt_tokens(nxt))  # the date reaches the prompt
    schema_only = mlx_oss.Chat.from_json(json.dumps(data), model, tok)
    assert schema_only.tools[0].fn is None and schema_only.tools[0].name == "get_weather"
    with pytest.raises(ValueError, match="not a saved chat"):
        mlx_oss.Chat.from_json({"x": 1}, model, tok)


def test_reset_keeps_shared_prefix(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, instructions="Be nice.")
    use(chat, reply(tok, final="a"))
    chat.ask("one")
    chat.reset()
    assert chat.history == []
    prompt = chat.prompt_tokens([mlx_oss.chat.Message.user("two")])
    s = use(chat, reply(tok, final="b"))
    r = chat.ask("two")
    assert r.stats.reused_tokens == len(chat.prompt_tokens([])) - 2  # system + developer messages
    check_logits(model, s, prompt)


# ----------------------------------------------------------------------------- tool-call edge cases


LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look up a word.",
          "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}  # fmt: skip


def test_half_written_tool_call_is_dropped_from_history(model_tok):
    """max_tokens cuts the call's arguments: half a call cannot be answered, so it is not kept; the
    analysis before it (complete) is; the next turn's prompt renders as if the call never started."""
    model, tok = model_tok
    full = reply(tok, analysis="Need it.", call=("lookup", '{"word": "a long word here"}'))
    chat = mlx_oss.Chat(model, tok, tools=[LOOKUP], max_tokens=len(full) - 4)
    use(chat, full)
    r = chat.ask("define")
    assert r.stats.stop_reason == "length" and r.tool_calls == ()
    assert [(m.role, m.recipient) for m in chat.history] == [(Role.USER, None), (Role.ASSISTANT, None)]
    assert chat.history[-1].text == "Need it." and chat.pending_tool_calls() == []
    chat.max_tokens = None
    s = use(chat, reply(tok, final="ok"))
    prompt = chat.prompt_tokens(chat.history + [mlx_oss.chat.Message.user("again")])
    assert chat.ask("again").answer == "ok"
    check_logits(model, s, prompt)


def test_several_pending_calls_answered_by_name_and_id(model_tok):
    """Two calls of the same tool and one of another in one turn: a result by name answers the first
    call of that name, by id the exact one; non-string content is sent as JSON."""
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[LOOKUP, get_weather], auto_tools=False)
    chat._history = [
        Message.user("three things"),
        Message.tool_call("functions.lookup", {"word": "a"}),
        Message.tool_call("functions.get_weather", {"city": "Rome"}),
        Message.tool_call("functions.lookup", {"word": "b"}),
    ]
    pending = chat.pending_tool_calls()
    assert [(c.name, c.arguments) for c in pending] == [("lookup", {"word": "a"}), ("get_weather", {"city": "Rome"}),
                                                        ("lookup", {"word": "b"})]  # fmt: skip
    assert len({c.id for c in pending}) == 3
    chat.add_tool_result(pending[2].id, "bee")  # by id: the second lookup, not the first
    chat.add_tool_result("lookup", {"meaning": ["letter"], "n": 1})  # by name: the first lookup
    assert [c.id for c in chat.pending_tool_calls()] == [pending[1].id]
    results = [m for m in chat.history if m.role is Role.TOOL]
    assert [(m.name, m.text) for m in results] == [
        ("functions.lookup", "bee"), ("functions.lookup", '{"meaning": ["letter"], "n": 1}')]  # fmt: skip
    chat.add_tool_result("functions.get_weather", 21)  # by recipient; a number becomes JSON text
    assert chat.history[-1].text == "21" and chat.pending_tool_calls() == []
    with pytest.raises(ValueError, match="pending: none"):
        chat.add_tool_result("lookup", "again")
    # an earlier turn's unanswered call is not pending once the user wrote again
    chat._history += [Message.tool_call("functions.lookup", {"word": "left"}), Message.user("next"),
                      Message.tool_call("functions.lookup", {"word": "c"})]  # fmt: skip
    assert [c.arguments for c in chat.pending_tool_calls()] == [{"word": "c"}]


def test_context_full_right_after_a_tool_round(model_tok):
    """The tool result does not fit: the turn ends with stop reason "context" (not "error"), the
    cache is kept (no reset), and the result is in the history for a caller who raises the limit."""
    model, tok = model_tok
    first = reply(tok, call=("get_weather", '{"city": "Paris"}'))
    probe = mlx_oss.Chat(model, tok, tools=[get_weather])
    probe._history = [mlx_oss.chat.Message.user("w")]
    n_prompt = len(probe.prompt_tokens())
    chat = mlx_oss.Chat(model, tok, tools=[get_weather], max_context=n_prompt + len(first) + 3)
    use(chat, first + reply(tok, final="never"))
    r = chat.ask("w")
    assert r.stats.stop_reason == "context" and r.stats.error is None and r.stats.rounds == 1
    assert chat.history[-1].role is Role.TOOL and chat.pending_tool_calls() == []
    assert len(chat.prompt_tokens()) >= chat.max_context
    assert chat.engine.tokens and len(chat.engine.tokens) == n_prompt + len(first)  # not reset


def test_from_json_restores_sampling_and_applies_overrides(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, sampling=SamplingConfig(temperature=0.3, top_p=0.8, top_k=5, min_p=0.1, seed=9),
                        max_tool_rounds=3, max_context=900, auto_tools=False)  # fmt: skip
    data = json.loads(json.dumps(chat.to_json()))
    again = mlx_oss.Chat.from_json(data, model, tok)
    assert again.sampling == SamplingConfig(temperature=0.3, top_p=0.8, top_k=5, min_p=0.1, seed=9)
    assert (again.max_tool_rounds, again.max_context, again.auto_tools) == (3, 900, False)
    over = mlx_oss.Chat.from_json(data, model, tok, reasoning_effort="low", max_context=500,
                                  sampling=SamplingConfig(seed=1))  # fmt: skip
    assert over.reasoning_effort == "low" and over.max_context == 500 and over.sampling == SamplingConfig(seed=1)
    data["settings"]["sampling"]["unknown_knob"] = 1  # a newer file's extra field is ignored
    assert mlx_oss.Chat.from_json(data, model, tok).sampling.top_k == 5


def test_bad_response_format_and_concurrent_send_are_errors(model_tok):
    model, tok = model_tok
    with pytest.raises(TypeError, match="response_format must be a JSON schema dict, not list"):
        mlx_oss.Chat(model, tok, response_format=[1])
    wrapped = mlx_oss.Chat(model, tok, response_format={"name": "w", "schema": {"type": "object"}, "description": "d"})
    assert (wrapped.response_format.name, wrapped.response_format.schema) == ("w", {"type": "object"})
    assert wrapped.response_format.description == "d"

    chat = mlx_oss.Chat(model, tok)
    started, release = threading.Event(), threading.Event()

    class Block(Script):
        def __call__(self, context, logits):
            started.set()
            release.wait(60)
            return super().__call__(context, logits)

    chat.sampling = SamplingConfig(logits_processors=(Block(reply(tok, final="x")),))
    stream = chat.send("hi")
    worker = threading.Thread(target=lambda: list(stream))
    worker.start()
    try:
        assert started.wait(60)
        with pytest.raises(RuntimeError, match=r"^a reply is being generated in another thread; cancel\(\) it first$"):
            chat.send("second")
    finally:
        release.set()
        worker.join(60)
    assert not worker.is_alive()
    assert [m.role for m in chat.history] == [Role.USER, Role.ASSISTANT]  # the second send added nothing


def test_decode_tps_counts_decode_steps_exactly(model_tok):
    """decode_tps = (tokens after the first of each round) / decode time, over all rounds."""
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[get_weather])
    first = reply(tok, call=("get_weather", '{"city": "Paris"}'))
    second = reply(tok, final="sunny")
    use(chat, first + second)
    s = chat.ask("weather").stats
    assert s.rounds == 2 and s.generated_tokens == len(first) + len(second) and s.decode_s > 0
    assert s.decode_tps == pytest.approx((s.generated_tokens - 2) / s.decode_s, rel=1e-9)
    assert s.prefill_tps == pytest.approx(s.prefilled_tokens / s.prefill_s, rel=1e-9)


# ----------------------------------------------------------------------------- exact figures


def timed(model, monkeypatch):
    """`model` behind a clock (the chat's and the engine's) that advances one second per forward call,
    from 100 s: times then count forward passes."""
    import types

    import mlx_oss.chat as chat_mod
    import mlx_oss.engine as engine_mod

    now = [100.0]

    class Timed:
        args, source = model.args, model.source

        def make_cache(self):
            return model.make_cache()

        def __call__(self, *a, **k):
            now[0] += 1
            return model(*a, **k)

    clock = types.SimpleNamespace(perf_counter=lambda: now[0])
    monkeypatch.setattr(chat_mod, "time", clock)
    monkeypatch.setattr(engine_mod, "time", clock)
    return Timed()


def test_stats_and_progress_on_a_clock_that_moves_per_forward_pass(model_tok, monkeypatch):
    """Every figure of a turn, exactly, on the `timed` clock. With one-second steps every token is
    past the 0.25 s progress interval, so each token brings one Progress."""
    from mlx_oss.events import Progress

    model, tok = model_tok
    chat = mlx_oss.Chat(timed(model, monkeypatch), tok, max_context=4000)
    script = reply(tok, analysis="Think.", final="Hi there")
    use(chat, script)
    prompt = chat.prompt_tokens(chat.history + [Message.user("Hello")])
    events = list(chat.send("Hello"))
    n, P = len(script), len(prompt)
    k = 3  # prefill: up to the system message's end, to the user message's end, to the prompt's end
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress == [Progress(i, P + i, 4000, k + 1, 1.0 if i > 1 else 0.0) for i in range(1, n + 1)]
    s = events[-1].stats
    assert (s.prompt_tokens, s.reused_tokens, s.prefilled_tokens, s.generated_tokens) == (P, 0, P, n)
    assert (s.reasoning_tokens, s.answer_tokens) == (len(tok.encode("Think.")), len(tok.encode("Hi there")))
    assert (s.ttft_s, s.prefill_s, s.decode_s) == (k + 1, k, n - 1)
    assert (s.prefill_tps, s.decode_tps) == (P / k, 1.0)
    assert (s.stop_reason, s.context_used, s.context_limit, s.rounds, s.unparsed_tokens) == ("stop", P + n, 4000, 1, 0)
    assert s.error is None and s.stop_detail is None and s.peak_memory_bytes > 0
    # the next turn prefills the previous answer, the new user message and the header in 2 passes
    # (to the end of the new user message, to the prompt's end)
    use(chat, reply(tok, final="ok"))
    nxt = chat.prompt_tokens(chat.history + [Message.user("More")])
    s2 = chat.ask("More").stats
    assert s2.prompt_tokens == len(nxt) and s2.reused_tokens + s2.prefilled_tokens == len(nxt)
    assert s2.reused_tokens == P and s2.prefill_s == 2 and s2.prefill_tps == s2.prefilled_tokens / 2


def test_figures_of_a_tool_turn_add_up_over_its_rounds_and_progress_follows_the_interval(model_tok, monkeypatch):
    """A second turn with a tool round, on the `timed` clock: reuse, prefill and its time are the sums
    of both rounds' (each reuses something); with a 1 s interval every token is exactly one interval
    after the last Progress, so each brings one; with a long interval a turn brings none."""
    from mlx_oss.events import Progress

    model, tok = model_tok
    chat = mlx_oss.Chat(timed(model, monkeypatch), tok, tools=[get_weather], max_context=4000)
    use(chat, reply(tok, final="Hi"))
    chat.ask("Hello")
    rounds = []
    generate = chat.engine.generate

    def recorded(*a, **k):
        rounds.append(generate(*a, **k))
        return rounds[-1]

    monkeypatch.setattr(chat.engine, "generate", recorded)
    first, second = reply(tok, call=("get_weather", '{"city": "Paris"}')), reply(tok, final="sunny")
    use(chat, first + second)
    chat.progress_interval_s = 1.0
    events = list(chat.send("weather?"))
    s = events[-1].stats
    assert s.rounds == len(rounds) == 2 and all(g.reused_tokens > 0 and g.prefill_s > 0 for g in rounds)
    assert s.reused_tokens == sum(g.reused_tokens for g in rounds)
    assert s.prefilled_tokens == sum(g.prefilled_tokens for g in rounds)
    assert s.prefill_s == sum(g.prefill_s for g in rounds) and s.decode_s == sum(g.decode_s for g in rounds)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.generated_tokens for p in progress] == list(range(1, len(first) + len(second) + 1))
    chat.progress_interval_s = 100.0  # longer than the turn (its clock reads past 100 s)
    use(chat, reply(tok, final="ok"))
    assert not any(isinstance(e, Progress) for e in chat.send("more"))


def test_a_round_cancelled_in_its_prefill_adds_no_decode_step(model_tok):
    """The tool stops the turn: the next round is cancelled before its first token, so decode_tps is
    the first round's steps (its tokens after the first) over the decode time."""
    model, tok = model_tok
    chat = None

    def get_weather(city: str) -> str:
        """Weather.

        Args:
            city: City name.
        """
        chat.cancel()
        return "sunny"

    chat = mlx_oss.Chat(model, tok, tools=[get_weather])
    first = reply(tok, call=("get_weather", '{"city": "Paris"}'))
    use(chat, first + reply(tok, final="never"))
    s = chat.ask("weather").stats
    assert (s.stop_reason, s.rounds, s.generated_tokens) == ("cancelled", 2, len(first)) and s.decode_s > 0
    assert s.decode_tps == pytest.approx((len(first) - 1) / s.decode_s, rel=1e-9)


def test_settings_and_saved_form_exactly(model_tok):
    """`settings()` and `to_json()` name every setting (what a saved chat and the TUI's file hold)."""
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, reasoning_effort="low", instructions="Be brief.", tools=[get_weather],
                        auto_tools=False, response_format={"name": "r", "schema": {"type": "object"}, "description": "d"},
                        sampling=SamplingConfig(temperature=0.5, seed=4), max_tokens=7, max_context=900,
                        max_tool_rounds=3, date="2025-01-02", strict=False, max_reasoning_tokens=9)  # fmt: skip
    settings = chat.settings()
    builtin = {k: v for k, v in settings.items() if k not in {
        "reasoning_effort", "instructions", "tools", "auto_tools", "response_format", "sampling", "max_tokens",
        "max_context", "max_tool_rounds", "date", "strict", "max_reasoning_tokens"}}  # fmt: skip
    assert builtin == chat.builtins.settings()
    assert {k: v for k, v in settings.items() if k not in builtin} == {
        "reasoning_effort": "low", "instructions": "Be brief.", "tools": [chat.tools[0].to_dict()], "auto_tools": False,
        "response_format": {"name": "r", "schema": {"type": "object"}, "description": "d"},
        "sampling": SamplingConfig(temperature=0.5, seed=4).to_dict(), "max_tokens": 7, "max_context": 900,
        "max_tool_rounds": 3, "date": "2025-01-02", "strict": False, "max_reasoning_tokens": 9,
    }  # fmt: skip
    chat.history = [Message.user("hi")]
    assert chat.to_json() == {"version": 1, "settings": settings, "messages": [Message.user("hi").to_dict()]}
    assert mlx_oss.Chat(model, tok).settings()["response_format"] is None


# ----------------------------------------------------------------------------- without generating


def test_stop_note_effort_response_format_and_vocabulary_helpers():
    from types import SimpleNamespace

    from mlx_oss.chat import _calls, _effort, _response_format, vocabulary_problem
    from mlx_oss.harmony import ReasoningEffort, ResponseFormat

    a = ToolCall("a", {}, "{}", recipient="functions.a")
    b = ToolCall("b", {}, "{}", recipient="functions.b")
    assert _calls([]) == "the call to none" and _calls([a]) == "the call to functions.a"
    assert _calls([a, b, a]) == "the calls to functions.a, functions.b" and _calls([a, a]) == "the calls to functions.a"
    assert _calls([ToolCall("bare", {}, "{}")]) == "the call to bare"  # no recipient: the name
    assert _effort("HIGH") is ReasoningEffort.HIGH and _effort(ReasoningEffort.LOW) is ReasoningEffort.LOW
    with pytest.raises(ValueError, match=r"^reasoning_effort must be low, medium or high, not 'max'$"):
        _effort("max")
    rf = ResponseFormat("x", {"type": "object"})
    assert _response_format(None) is None and _response_format(rf) is rf
    with pytest.raises(TypeError, match=r"^response_format must be a JSON schema dict, not str$"):
        _response_format("{}")
    assert _response_format({"name": "w", "schema": {"type": "object"}, "description": "d"}) == ResponseFormat(
        "w", {"type": "object"}, "d")  # fmt: skip
    assert _response_format({"schema": {"type": "object"}}) == ResponseFormat("response", {"type": "object"}, None)
    plain = {"title": "T", "type": "object", "description": "e"}
    assert _response_format(plain) == ResponseFormat("T", plain, "e")
    assert _response_format({"type": "object"}) == ResponseFormat("response", {"type": "object"}, None)
    tok = SimpleNamespace(n_vocab=20)
    fits = SimpleNamespace(args=SimpleNamespace(vocab_size=20), source="/m")
    assert vocabulary_problem(fits, tok) is None
    small = SimpleNamespace(args=SimpleNamespace(vocab_size=10), source="/m")
    assert vocabulary_problem(small, tok) == (
        "/m: vocabulary of 10 tokens, but the o200k_harmony tokenizer needs 20 (ids up to 19); this model cannot "
        "chat (synthetic models: use the 'tiny-chat' preset)")  # fmt: skip
    assert vocabulary_problem(SimpleNamespace(args=small.args), tok).startswith("the model: vocabulary of 10 tokens")


def test_what_a_new_chat_holds_and_puts_in_its_prompt(model_tok, tmp_path):
    """The tools' descriptions are in the prompt's developer message, exactly; the defaults; the
    model and tokenizer it was given; the built-in tools get the chat's folder and its token count;
    a model whose vocabulary is too small is refused with vocabulary_problem's line."""
    from types import SimpleNamespace

    from mlx_oss.chat import vocabulary_problem
    from mlx_oss.errors import VocabularyError

    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[get_weather])
    text = tok.decode(chat.prompt_tokens([Message.user("q")]))
    assert text.endswith(
        "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n// Current weather for a "
        "city.\ntype get_weather = (_: {\n// City name.\ncity: string,\n// celsius or fahrenheit.\nunit?: string, "
        '// default: "celsius"\n}) => any;\n\n} // namespace functions<|end|><|start|>user<|message|>q<|end|>'
        "<|start|>assistant")  # fmt: skip
    assert chat.model is model and chat.tokenizer is tok
    assert chat.max_tool_rounds == 8 and chat.settings()["reasoning_effort"] == "medium"
    tools = mlx_oss.Chat(model, tok, builtin_tools=("browser", "python"), python_workdir=str(tmp_path)).builtins
    try:
        assert tools.python.workdir == tmp_path
        assert tools.browser.counts_exactly and tools.browser.count_tokens("hello there, world") == len(
            tok.encode_ordinary("hello there, world"))  # fmt: skip
    finally:
        tools.close()
    # it renders with the tokenizer it was given (a folder's own vocabulary), not the bundled one
    import tiktoken

    ranks = dict(tok._mergeable_ranks)
    ranks[b"q"], ranks[b"z"] = ranks[b"z"], ranks[b"q"]
    swapped = tiktoken.Encoding("swapped", pat_str=tok._pat_str, mergeable_ranks=ranks, special_tokens=tok._special_tokens)
    plain = tok.decode(mlx_oss.Chat(model, tok).prompt_tokens([Message.user("q")]))
    ids = mlx_oss.Chat(model, swapped).prompt_tokens([Message.user("q")])
    assert ids == swapped.encode(plain, allowed_special="all") != tok.encode(plain, allowed_special="all")
    # ... and reads the reply with it: "q" is written with the bundled vocabulary's "z" token
    chat = mlx_oss.Chat(model, swapped)
    chat.sampling = SamplingConfig(seed=0, logits_processors=(
        ScriptedTokens(swapped.encode("<|channel|>final<|message|>q<|return|>", allowed_special="all")),))  # fmt: skip
    assert list(chat.send("x"))[-1].reply.answer == "q"
    small = SimpleNamespace(args=SimpleNamespace(vocab_size=10), source="/m")
    with pytest.raises(VocabularyError) as e:
        mlx_oss.Chat(small, tok)
    assert str(e.value) == vocabulary_problem(small, tok)


def test_pending_calls_and_tool_results_from_the_history(model_tok):
    """Calls of the current turn without a result, with their ids (history index), names, parsed
    arguments and errors; results answer them by id, name or recipient; non-text results become JSON."""
    import datetime

    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, tools=[get_weather])  # a call to python is python's even with the tool off
    old = Message.tool_call("functions.get_weather", {"city": "Oslo"})
    chat.history = [
        Message.user("earlier"), old,  # an earlier turn's call is never pending
        Message.user("now"),
        Message.assistant("Need weather.", channel="analysis"),
        Message.tool_call("functions.get_weather", {"city": "Paris"}),
        Message.tool_call("functions.lookup", "{not json"),
        Message.tool_call("python", "print(1)", content_type=None),
    ]
    pending = chat.pending_tool_calls()
    assert [(c.id, c.name, c.recipient, c.tool, c.arguments, c.raw) for c in pending] == [
        ("call_4", "get_weather", "functions.get_weather", "functions", {"city": "Paris"}, '{"city": "Paris"}'),
        ("call_5", "lookup", "functions.lookup", "functions", None, "{not json"),
        ("call_6", "python", "python", "python", "print(1)", "print(1)"),
    ]
    assert pending[0].error is None and pending[1].error and pending[2].error is None
    with pytest.raises(ValueError, match=r"^no pending tool call 'nope' \(pending: call_4 \(get_weather\), "
                                         r"call_5 \(lookup\), call_6 \(python\)\)$"):  # fmt: skip
        chat.add_tool_result("nope", "x")
    chat.add_tool_result("call_5", {"when": datetime.date(2025, 1, 2), "où": "ici"})
    assert chat.history[-1] == Message.tool_result("functions.lookup", '{"when": "2025-01-02", "où": "ici"}')
    chat.add_tool_result("functions.get_weather", "sunny")  # by recipient
    chat.add_tool_result("python", "1\n")  # by name
    assert chat.pending_tool_calls() == []
    assert [m.name for m in chat.history[-3:]] == ["functions.lookup", "functions.get_weather", "python"]
    with pytest.raises(ValueError, match=r"\(pending: none\)$"):
        chat.add_tool_result("call_4", "again")
    chat.history = [Message.tool_call("functions.get_weather", {"city": "Rome"})]  # no user message at all
    assert [c.id for c in chat.pending_tool_calls()] == ["call_0"]
    chat.add_tool_result("get_weather", "rain")
    assert chat.pending_tool_calls() == []


def test_from_json_minimal_and_refusals(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat.from_json({"messages": [Message.user("hi").to_dict()]}, model, tok)
    assert chat.history == [Message.user("hi")] and chat.sampling == SamplingConfig() and chat.tools == ()
    assert chat.settings() == mlx_oss.Chat(model, tok).settings()
    again = mlx_oss.Chat.from_json(json.dumps({"settings": {"tools": [], "sampling": None}, "messages": []}), model, tok,
                                   tools=[get_weather])  # fmt: skip
    assert [t.name for t in again.tools] == ["get_weather"] and again.tools[0].fn is get_weather
    for bad in ({"settings": {}}, [1], "[]"):
        with pytest.raises(ValueError, match=r"^not a saved chat: expected an object with 'settings' and 'messages'$"):
            mlx_oss.Chat.from_json(bad, model, tok)



def test_turn_edges_exactly(model_tok, monkeypatch):
    """The figures at their edges, on the `timed` clock: a turn cancelled before its first chunk, a
    one-pass prefill, a two-token decode, a tool round (Progress counts decode steps per round), two
    reasoning messages, a JSON-looking answer without a response format."""
    from mlx_oss.events import Progress

    model, tok = model_tok
    chat = mlx_oss.Chat(timed(model, monkeypatch), tok, tools=[get_weather])
    use(chat, reply(tok, final="never"))
    stream = chat.send("Hello")
    chat.cancel()  # before the stream starts: not even the first chunk runs
    (done,) = list(stream)
    s = done.stats
    assert s.stop_reason == "cancelled" and (s.generated_tokens, s.prefilled_tokens, s.prefill_s) == (0, 0, 0)
    assert (s.ttft_s, s.prefill_tps, s.decode_tps) == (0.0, 0.0, 0.0) and done.reply == mlx_oss.events.Reply(
        stats=s)  # fmt: skip
    chat.history = chat.history[:1]
    use(chat, reply(tok, analysis="One.", final='{"a": 1}'))
    chat.max_tokens = 2
    s = chat.ask(None).stats  # two tokens: one decode step in one second
    assert (s.generated_tokens, s.decode_s, s.decode_tps, s.stop_reason) == (2, 1, 1.0, "length")
    chat.max_tokens = None
    chat.history = chat.history[:1]  # the same prompt again: only its last token is prefilled
    start = tok.encode("<|start|>assistant", allowed_special="all")
    first = reply(tok, analysis="One.") + start + reply(tok, analysis="Two.") + start + reply(
        tok, call=("get_weather", '{"city": "Oslo"}'))  # fmt: skip
    second = reply(tok, final='{"a": 1}')
    use(chat, first + second)
    events = list(chat.send(None))
    r = events[-1].reply
    assert r.reasoning == "One.\n\nTwo." and r.answer == '{"a": 1}' and r.parsed is None and r.citations == ()
    assert r.stats.rounds == 2 and r.stats.generated_tokens == len(first) + len(second)
    n1 = len(first)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.generated_tokens for p in progress] == list(range(1, n1 + len(second) + 1))
    assert progress[n1 - 1].decode_tps == 1.0 and progress[n1].decode_tps == 1.0  # round 2's first token: no new step
    assert r.stats.decode_tps == 1.0 and r.stats.decode_s == n1 - 1 + len(second) - 1


def test_tool_round_limits_at_their_edges(model_tok):
    """max_tokens used up exactly by a tool round ends the turn with "length" before another round; one
    token left is generated; a next prompt exactly at the context limit ends it with "context"."""
    model, tok = model_tok
    call = reply(tok, call=("get_weather", '{"city": "Paris"}'))
    final = reply(tok, final="sunny")
    for budget, generated in ((len(call), len(call)), (len(call) + 1, len(call) + 1)):
        chat = mlx_oss.Chat(model, tok, tools=[get_weather], max_tokens=budget)
        use(chat, call + final)
        events = list(chat.send("w"))
        s = events[-1].stats
        assert s.stop_reason == "length" and s.generated_tokens == generated and isinstance(events[-1], Done)
        assert s.rounds == (1 if budget == len(call) else 2)
    probe = mlx_oss.Chat(model, tok, tools=[get_weather])
    use(probe, call + final)
    probe.ask("w")
    n_next = len(probe.prompt_tokens(probe.history[:3]))  # user, call, result
    for limit, reason in ((n_next, "context"), (n_next + 1, "context")):
        chat = mlx_oss.Chat(model, tok, tools=[get_weather], max_context=limit)
        use(chat, call + final)
        s = chat.ask("w").stats
        assert s.stop_reason == reason and s.error is None and s.rounds == (1 if limit == n_next else 2)


def test_error_text_of_an_exception_without_a_message(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)

    def broken(context, logits):
        raise KeyError()

    chat.sampling = SamplingConfig(logits_processors=(broken,))
    (done,) = list(chat.send("hi"))
    assert done.stats.stop_reason == "error" and done.stats.error == "KeyError"


def test_tool_calls_that_reach_no_function_tool(model_tok):
    """A call to an unprefixed name is no function call even when a tool has that name; the error
    lists the configured tools; a `<|call|>` after a message without recipient is no call at all."""
    model, tok = model_tok

    def boom(x: int) -> str:
        """Always fails."""
        raise RuntimeError("no network")

    chat = mlx_oss.Chat(model, tok, tools=[get_weather, boom])
    bare = tok.encode('<|channel|>commentary to=get_weather <|constrain|>json<|message|>{"city": "Rome"}<|call|>',
                      allowed_special="all")  # fmt: skip
    use(chat, bare + reply(tok, final="k"))
    (result,) = [e for e in chat.send("go") if isinstance(e, ToolResult)]
    assert (result.name, result.tool, result.error) == ("get_weather", "functions", True)
    assert result.content == "Error: unknown tool 'get_weather' (tools: get_weather, boom)"
    assert chat.history[2] == Message.tool_result("get_weather", result.content)
    use(chat, tok.encode("<|channel|>commentary<|message|>hmm<|call|>", allowed_special="all"))
    s = chat.ask("again").stats
    assert (s.stop_reason, s.stop_detail) == ("tool_call", "the model ended its turn with <|call|> but wrote no complete tool call")


def test_a_tool_result_that_answers_no_call_is_not_pending(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    chat.history = [Message.user("q"), Message.tool_result("functions.lookup", "stray"),
                    Message.tool_call("functions.lookup", {})]  # fmt: skip
    assert [c.id for c in chat.pending_tool_calls()] == ["call_2"]


def test_two_calls_in_one_round_are_both_answered(model_tok):
    """A call closed with `<|end|>` does not stop the round: the next call's `<|call|>` does, and each
    pending call is handled, a schema-only one left to the caller without holding up the others."""
    model, tok = model_tok
    schema = {"name": "lookup", "description": "Look up.", "parameters": {"type": "object", "properties": {}}}
    chat = mlx_oss.Chat(model, tok, tools=[schema, get_weather])
    first = tok.encode("<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{}<|end|><|start|>assistant",
                       allowed_special="all")  # fmt: skip
    use(chat, first + reply(tok, call=("get_weather", '{"city": "Oslo"}')))
    events = list(chat.send("go"))
    assert [e.name for e in events if isinstance(e, ToolCall)] == ["lookup", "get_weather"]
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.name == "get_weather" and json.loads(result.content)["city"] == "Oslo"
    s = events[-1].stats
    assert s.stop_reason == "tool_call" and s.rounds == 1
    assert s.stop_detail == "waiting for the result of the call to functions.lookup (schema-only: answer with add_tool_result)"
    assert [c.name for c in chat.pending_tool_calls()] == ["lookup"]
