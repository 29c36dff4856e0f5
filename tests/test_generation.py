"""One request's generation logic (`generation_program` in mlx_oss/server/generation.py) without a model
or HTTP: a scripted driver answers each round's decode with chosen tokens (the real harmony parser, the
real o200k vocabulary) and runs the built-in calls it asks for, and the events are checked one by one:
items and their deltas, usage summed over rounds, the stop reasons, client stop strings (answer text
only), the built-in call limit, the context limit after a tool round, a failed round, text that is not
harmony, log-probabilities. The server tests cover the same through the three APIs; these make a broken
line fail in milliseconds (`scripts/mutation.sh server_generation`)."""

from __future__ import annotations

import threading

import mlx.core as mx
import pytest

from mlx_oss.builtin import BuiltinTools
from mlx_oss.events import Citation, ToolCall, ToolResult
from mlx_oss.harmony import ANALYSIS, COMMENTARY, FINAL, UNPARSED, Message
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server.conversation import Turn
from mlx_oss.server.generation import (
    BROWSER_CALL,
    FUNCTION_CALL,
    MESSAGE,
    PYTHON_CALL,
    REASONING,
    Finished,
    ItemDelta,
    ItemDone,
    ItemStarted,
    ToolDone,
    Usage,
    _Decode,
    _Decoded,
    _RunTool,
    _error_text,
    generation_program,
    run_tool,
)
from mlx_oss.tokenizer import load_tokenizer

ENC = load_tokenizer(None)
MAX_CONTEXT = 4096


def toks(text: str) -> list[int]:
    return ENC.encode(text, allowed_special="all")


REPLY = "<|channel|>analysis<|message|>think hard<|end|><|start|>assistant<|channel|>final<|message|>Hello world<|return|>"
SEARCH = '<|channel|>analysis<|message|>look<|end|><|start|>assistant<|channel|>commentary to=browser.search<|constrain|>json<|message|>{"query": "q"}<|call|>'  # fmt: skip


class ScriptedTools(BuiltinTools):
    """The built-in tools with scripted answers (no browser or kernel): records each call it runs."""

    def __init__(self, *answers: str, fail: Exception | None = None, cancel: threading.Event | None = None) -> None:
        super().__init__()
        self.answers, self.fail, self.cancel = list(answers), fail, cancel
        self.calls: list[tuple[str, str]] = []
        self.stopped: list[bool] = []  # what `should_stop()` said during each call

    def run(self, call: ToolCall, should_stop=lambda: False) -> ToolResult:
        self.calls.append((call.recipient, call.raw))
        if self.cancel is not None:  # the client goes while the tool runs
            self.cancel.set()
        self.stopped.append(should_stop())
        if self.fail is not None:
            raise self.fail
        return ToolResult(call.name, self.answers.pop(0), tool=self.owner(call.recipient) or "")

    def citations(self, text: str) -> tuple[Citation, ...]:
        i = text.find("【0†L1】")
        return (Citation("【0†L1】", i, i + 6, "https://x.test/", "X", 1, 1, "one"),) if i >= 0 else ()


class Run:
    """A program driven to its end: each `_Decode` answered with the next scripted round (its tokens fed until
    `feed` says stop; then `reason`/`error`), each `_RunTool` run. `sample`: each token is also drawn by the
    round's sampler from logits that make it certain (so the sampler records its log-probabilities)."""

    def __init__(self, rounds: list[tuple[str | list[int], str | None] | tuple[str | list[int], str | None, str]],
                 *, prompt: list[int] | None = None, max_tokens: int | None = None, stops: tuple[str, ...] = (),
                 turn: Turn | None = None, tools: BuiltinTools | None = None, max_calls: int = 8,
                 sampling: SamplingConfig = SamplingConfig(), cancel_after_tool: bool = False,
                 max_context: int = MAX_CONTEXT, sample: bool = False, reused: int = 0, grammars=None,
                 cancelled: threading.Event | None = None, no_turn: bool = False) -> None:  # fmt: skip
        self.events: list[object] = []
        self.asks: list[_Decode] = []
        self.fed: list[list[int]] = []  # the tokens each round took before it stopped
        self.extras: list[tuple] = []  # each round's sampler.extra, when it was asked
        cancelled = cancelled or threading.Event()
        if turn is None and tools is not None and not no_turn:
            turn = Turn(history=(Message.user("hi"),))
        if prompt is None:
            prompt = turn.render(ENC)[0] if turn is not None else toks("<|start|>user<|message|>hi<|end|><|start|>assistant")
        prog = generation_program(ENC, prompt, (len(prompt),), sampling, max_tokens, stops, cancelled,
                                  self.events.append, turn, tools, max_calls, grammars, max_context)  # fmt: skip
        script = list(rounds)
        answer: object = None
        while True:
            try:
                ask = prog.send(answer)
            except StopIteration:
                break
            if isinstance(ask, _RunTool):
                answer = ask.run()
                if cancel_after_tool:
                    cancelled.set()
                continue
            assert isinstance(ask, _Decode)
            self.asks.append(ask)
            self.extras.append(ask.sampler.extra)
            body, reason, *error = script.pop(0)
            tokens = toks(body) if isinstance(body, str) else body
            fed: list[int] = []
            for t in tokens:
                if sample:
                    logits = mx.zeros((1, ENC.n_vocab)).at[0, t].add(50.0)
                    assert ask.sampler(logits).item() == t
                fed.append(t)
                if ask.out.feed(t):
                    break
            self.fed.append(fed)
            answer = _Decoded(reason, reused, error[0] if error else None)
        assert not script, "rounds left that the program never asked for"

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def finished(self) -> Finished:
        assert isinstance(self.events[-1], Finished) and len(self.of(Finished)) == 1
        return self.events[-1]

    def items(self) -> list[tuple]:
        """(kind, text, complete, channel) of each item, from its deltas, checked against its ItemDone."""
        out, open_, text = [], None, []
        for e in self.events:
            if isinstance(e, ItemStarted):
                assert open_ is None
                open_, text = e, []
            elif isinstance(e, ItemDelta):
                assert open_ is not None
                text.append(e.text)
            elif isinstance(e, ItemDone):
                assert open_ is not None and e.kind == open_.kind and e.name == open_.name and e.channel == open_.channel
                assert e.text == "".join(text)
                out.append((e.kind, e.text, e.complete, e.channel))
                open_ = None
        assert open_ is None
        return out


def test_a_reply_is_its_reasoning_then_its_answer_then_finished_with_the_usage():
    prompt = toks("<|start|>user<|message|>hi<|end|><|start|>assistant")
    r = Run([(REPLY, "stop")], prompt=prompt, reused=3)
    assert r.items() == [(REASONING, "think hard", True, ANALYSIS), (MESSAGE, "Hello world", True, FINAL)]
    assert [e.text for e in r.of(ItemDelta)] == ["think", " hard", "Hello", " world"]  # token by token
    # prompt, cached, completion (every token the round took), reasoning (analysis content), unparsed
    assert r.finished == Finished(Usage(len(prompt), 3, len(toks(REPLY)), 2, 0), "stop")
    ask = r.asks[0]
    assert (ask.prompt, ask.boundaries, ask.max_tokens) == (prompt, (len(prompt),), None)
    assert r.extras == [()]  # a request that demands nothing: no constraint


def test_max_tokens_is_the_rounds_budget_and_a_cut_reply_is_incomplete():
    cut = toks(REPLY)[:12]  # inside the answer: "Hello" is its last token
    r = Run([(cut, "length")], max_tokens=12)
    assert r.asks[0].max_tokens == 12
    assert r.items() == [(REASONING, "think hard", True, ANALYSIS), (MESSAGE, "Hello", False, FINAL)]
    assert r.finished.stop_reason == "length" and r.finished.usage.completion_tokens == 12


@pytest.mark.parametrize("max_tokens", [0, -3])
def test_no_budget_left_finishes_with_length_before_any_decode(max_tokens):
    r = Run([], max_tokens=max_tokens)
    assert r.asks == [] and r.events == [Finished(Usage(), "length")]


def test_a_budget_of_one_still_decodes():
    r = Run([(toks(REPLY)[:1], "length")], max_tokens=1)
    assert r.asks[0].max_tokens == 1 and r.finished.stop_reason == "length"


def test_a_round_the_consumer_stopped_without_a_reason_ends_as_stop():
    r = Run([(REPLY, None)])
    assert r.finished == Finished(Usage(r.finished.usage.prompt_tokens, 0, len(toks(REPLY)), 2, 0), "stop")
    assert r.items()[-1] == (MESSAGE, "Hello world", True, FINAL)


@pytest.mark.parametrize("reason", ["cancelled", "context", "length"])
def test_the_engines_reason_is_the_finish_reason(reason):
    r = Run([(toks(REPLY)[:8], reason)])
    assert r.finished.stop_reason == reason and r.finished.error is None


def test_a_failed_round_closes_its_item_incomplete_and_finishes_with_the_error():
    r = Run([(toks(REPLY)[:12], None, "RuntimeError: boom")])
    assert r.items()[-1] == (MESSAGE, "Hello", False, FINAL)
    assert r.finished.stop_reason == "error" and r.finished.error == "RuntimeError: boom"
    r = Run([(toks(REPLY)[:12], "length", "RuntimeError: boom")])  # an error wins over the engine's reason
    assert r.finished.stop_reason == "error" and r.finished.error == "RuntimeError: boom"


def test_a_stop_string_cuts_the_answer_only_and_is_reported():
    reply = "<|channel|>analysis<|message|>say END now<|end|><|start|>assistant<|channel|>final<|message|>one END two<|return|>"
    r = Run([(reply, "stop")], stops=("END",))
    assert r.items() == [(REASONING, "say END now", True, ANALYSIS), (MESSAGE, "one ", False, FINAL)]
    assert r.finished.stop_reason == "stop" and r.finished.stop_sequence == "END"
    assert ENC.decode(r.fed[0][-1:]) == " END"  # the round stopped at the token that completed the stop
    assert r.asks[0].should_stop()  # and the engine is told to stop at once
    assert r.finished.usage.completion_tokens == len(r.fed[0]) < len(toks(reply))


def test_a_held_back_stop_prefix_is_released_when_the_answer_ends():
    reply = "<|channel|>final<|message|>one EN<|return|>"
    r = Run([(reply, "stop")], stops=("END",))
    assert r.items() == [(MESSAGE, "one EN", True, FINAL)]
    assert r.finished.stop_sequence is None
    assert r.asks[0].should_stop() is False


def test_a_stop_string_in_a_calls_arguments_is_not_a_stop():
    call = '<|channel|>commentary to=functions.f<|constrain|>json<|message|>{"a": "END"}<|call|>'
    r = Run([(call, "tool_call")], stops=("END",))
    assert r.items() == [(FUNCTION_CALL, '{"a": "END"}', True, COMMENTARY)]
    assert r.of(ItemStarted)[0].name == "f" and r.of(ItemStarted)[0].recipient == "functions.f"
    assert r.finished.stop_reason == "tool_call" and r.finished.stop_sequence is None


def test_a_function_call_ends_the_reply_for_the_client_even_with_built_in_tools_on():
    call = '<|channel|>commentary to=functions.f<|constrain|>json<|message|>{}<|call|>'
    tools = ScriptedTools()
    r = Run([(call, "tool_call")], tools=tools)
    assert tools.calls == [] and r.finished.stop_reason == "tool_call"


def test_a_built_in_call_is_run_fed_back_and_the_reply_goes_on_with_usage_summed():
    tools = ScriptedTools("RESULT")
    turn = Turn(history=(Message.user("hi"),))
    first = turn.render(ENC)[0]
    r = Run([(SEARCH, "tool_call"), (REPLY, "stop")], turn=turn, tools=tools, reused=2)
    assert tools.calls == [("browser.search", '{"query": "q"}')]
    kinds = [(k, t) for k, t, _, _ in r.items()]
    assert kinds == [(REASONING, "look"), (BROWSER_CALL, '{"query": "q"}'), (REASONING, "think hard"), (MESSAGE, "Hello world")]
    (done,) = r.of(ToolDone)
    assert done.call.recipient == "browser.search" and done.call.text == '{"query": "q"}'
    assert done.reply == Message.tool_result("browser.search", "RESULT", channel=COMMENTARY)
    assert done.result.content == "RESULT"
    # the ToolDone comes after the call's item and before the next round's
    i = r.events.index(done)
    assert isinstance(r.events[i - 1], ItemDone) and r.events[i - 1].kind == BROWSER_CALL
    assert isinstance(r.events[i + 1], ItemStarted) and r.events[i + 1].kind == REASONING
    # the second round's prompt is the turn with the reply so far and the tool's answer
    history = (Message.user("hi"), *_messages(SEARCH), done.reply)
    second = Turn(history=history).render(ENC)
    assert r.asks[1].prompt == second[0] and r.asks[1].boundaries == second[1]
    n1, n2 = len(toks(SEARCH)), len(toks(REPLY))
    assert r.finished == Finished(Usage(len(first) + len(second[0]), 4, n1 + n2, 1 + 2, 0), "stop")


def _messages(text: str) -> list[Message]:
    """The messages a reply's tokens parse into (as the program keeps them for the next round)."""
    from mlx_oss.harmony import Role, StreamParser

    p = StreamParser(Role.ASSISTANT, encoding=ENC)
    out = []
    for t in toks(text):
        ev = p.process(t)
        if ev.message is not None:
            out.append(ev.message)
    return out


def test_the_token_budget_is_shared_by_the_rounds():
    tools = ScriptedTools("RESULT")
    n1 = len(toks(SEARCH))
    r = Run([(SEARCH, "tool_call"), (toks(REPLY)[:5], "length")], tools=tools, max_tokens=n1 + 5)
    assert [a.max_tokens for a in r.asks] == [n1 + 5, 5]
    assert r.finished.stop_reason == "length" and r.finished.usage.completion_tokens == n1 + 5


def test_a_budget_spent_by_the_tool_round_finishes_with_length_before_the_next():
    tools = ScriptedTools("RESULT")
    n1 = len(toks(SEARCH))
    r = Run([(SEARCH, "tool_call")], tools=tools, max_tokens=n1)
    assert len(r.asks) == 1 and len(r.of(ToolDone)) == 1
    assert r.finished.stop_reason == "length" and r.finished.usage.completion_tokens == n1


def test_the_reasoning_budget_left_is_handed_to_each_rounds_fresh_constraint():
    tools = ScriptedTools("RESULT")
    turn = Turn(history=(Message.user("hi"),), reasoning_budget=5)
    r = Run([(SEARCH, "tool_call"), (REPLY, "stop")], turn=turn, tools=tools)
    (c1,), (c2,) = r.extras
    assert c1 is not c2  # a constraint is stateful: never carried into the next round
    assert (c1.budget, c2.budget) == (5, 4)  # "look" was one analysis token of the first round


def test_a_turn_not_compiled_is_compiled_for_each_round_with_the_grammars():
    from mlx_oss.grammar import Grammars
    from mlx_oss.server.tools import StrictSchema

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    turn = Turn((Message.user("q"),), answer_schema=StrictSchema("final", schema, "text.format.schema"))
    r = Run([('<|channel|>final<|message|>{"n": 1}<|return|>', "stop")], turn=turn, grammars=Grammars(ENC))
    ((c,),) = r.extras
    assert list(c.content) == ["final"] and r.finished.stop_reason == "stop"


@pytest.mark.parametrize("max_calls", [0, 1, 2])
def test_calls_past_the_limit_are_answered_with_the_limit_then_one_round_more_ends_the_reply(max_calls):
    tools = ScriptedTools(*["R"] * max_calls)
    r = Run([(SEARCH, "tool_call")] * (max_calls + 2), tools=tools, max_calls=max_calls)
    assert len(tools.calls) == max_calls  # only these ran
    done = r.of(ToolDone)
    assert len(done) == max_calls + 1
    assert [d.result.content for d in done[:max_calls]] == ["R"] * max_calls
    text = (f"Error: the limit of {max_calls} built-in tool calls for this response is reached, so this call was not "
            "run. Answer now with what you have.")  # fmt: skip
    assert done[-1].result == ToolResult("browser.search", text, "", True, tool="browser")
    assert done[-1].reply.text == text
    assert r.finished.stop_reason == "tool_limit"
    assert r.finished.usage.completion_tokens == (max_calls + 2) * len(toks(SEARCH))


def test_a_built_in_call_is_run_only_when_the_round_ended_on_its_call_token():
    ended = '<|channel|>commentary to=browser.search<|constrain|>json<|message|>{}<|end|>'
    tools = ScriptedTools("R")
    r = Run([(ended, "length")], tools=tools)
    assert tools.calls == [] and r.finished.stop_reason == "length"
    r = Run([("<|channel|>commentary<|message|>x<|call|>", "tool_call")], tools=tools)  # a call to no one
    assert tools.calls == [] and r.finished.stop_reason == "tool_call"
    r = Run([("<|call|>", "tool_call")], tools=tools)  # no message at all
    assert tools.calls == [] and r.finished.stop_reason == "tool_call"


def test_built_in_calls_need_both_the_tools_and_the_turn():
    tools = ScriptedTools("R")
    r = Run([(SEARCH, "tool_call")], tools=tools, no_turn=True)  # cannot render a next round
    assert tools.calls == [] and r.finished.stop_reason == "tool_call" and r.items()[1][0] == BROWSER_CALL
    r = Run([(SEARCH, "tool_call")], turn=Turn(history=(Message.user("hi"),)))  # the client's to run
    assert r.finished.stop_reason == "tool_call" and r.items()[1][0] == FUNCTION_CALL


def test_a_python_call_is_its_own_kind():
    call = "<|channel|>analysis to=python<|message|>print(1)<|call|>"
    r = Run([(call, "tool_call"), (REPLY, "stop")], tools=ScriptedTools("1"))
    assert r.items()[0] == (PYTHON_CALL, "print(1)", True, ANALYSIS)
    assert r.of(ToolDone)[0].reply.channel == ANALYSIS  # answered on the call's channel
    assert r.of(ItemStarted)[0].name == "python"


def test_without_built_in_tools_a_browser_call_is_a_function_call_for_the_client():
    r = Run([(SEARCH, "tool_call")])
    assert r.items()[1][0] == FUNCTION_CALL and r.finished.stop_reason == "tool_call"


def test_a_cancel_during_the_tool_finishes_cancelled_after_its_result():
    r = Run([(SEARCH, "tool_call")], tools=ScriptedTools("R"), cancel_after_tool=True, reused=1)
    assert len(r.of(ToolDone)) == 1
    assert r.finished == Finished(Usage(len(r.asks[0].prompt), 1, len(toks(SEARCH)), 1, 0), "cancelled")
    assert r.asks[0].should_stop()  # the cancel reaches the round's stop check too


def test_the_tool_is_handed_the_requests_cancel_check():
    cancelled = threading.Event()
    tools = ScriptedTools("R", "R", cancel=None)
    Run([(SEARCH, "tool_call"), (REPLY, "stop")], tools=tools, cancelled=cancelled)
    tools.cancel = cancelled
    Run([(SEARCH, "tool_call")], tools=tools, cancelled=cancelled)
    assert tools.stopped == [False, True]  # a long fetch or python cell can end early


def test_a_tool_round_that_overflows_the_context_finishes_with_context():
    turn = Turn(history=(Message.user("hi"),))
    tools = ScriptedTools("x " * 300)
    first = len(turn.render(ENC)[0])
    r = Run([(SEARCH, "tool_call")], turn=turn, tools=tools, max_context=first + 100, reused=2)
    assert len(r.asks) == 1 and r.finished == Finished(Usage(first, 2, len(toks(SEARCH)), 1, 0), "context")
    # a prompt of exactly the context is no room either
    second = len(Turn(history=(Message.user("hi"), *_messages(SEARCH),
                               Message.tool_result("browser.search", "ok"))).render(ENC)[0])  # fmt: skip
    for room, rounds in ((second, 1), (second + 1, 2)):
        r = Run([(SEARCH, "tool_call"), (REPLY, "stop")][:rounds], turn=turn, tools=ScriptedTools("ok"), max_context=room)
        assert r.finished.stop_reason == ("context" if rounds == 1 else "stop"), room


def test_with_truncation_a_turn_that_no_longer_fits_at_all_finishes_with_context():
    turn = Turn(history=(Message.user("hi"),), truncate=True)
    first = len(turn.render(ENC)[0])
    r = Run([(SEARCH, "tool_call")], turn=turn, tools=ScriptedTools("x " * 300), max_context=first + 100)
    assert r.finished.stop_reason == "context"


def test_with_truncation_the_next_round_drops_the_oldest_turns_to_fit():
    old = (Message.user("long " * 200), Message.assistant("ok"))
    turn = Turn(history=(*old, Message.user("hi")), truncate=True)
    first = len(turn.render(ENC)[0])
    r = Run([(SEARCH, "tool_call"), (REPLY, "stop")], turn=turn, tools=ScriptedTools("x " * 50), max_context=first + 40)
    assert r.finished.stop_reason == "stop" and len(r.asks[1].prompt) < first  # the old turn went
    assert ENC.decode(r.asks[1].prompt).count("long") == 0 and "x x x" in ENC.decode(r.asks[1].prompt)


def test_a_tool_that_raises_becomes_an_error_result_and_the_reply_goes_on():
    tools = ScriptedTools(fail=ValueError("bad thing\nsecond line"))
    r = Run([(SEARCH, "tool_call"), (REPLY, "stop")], tools=tools)
    (done,) = r.of(ToolDone)
    assert done.result.error and done.result.tool == "browser"
    assert done.result.content == "Error: the browser tool failed: ValueError: bad thing"
    assert r.finished.stop_reason == "stop"


def test_run_tool_names_the_recipient_and_hands_on_the_stop_check():
    seen = []

    class Tools(BuiltinTools):
        def run(self, call, should_stop=lambda: False):
            seen.append((call.recipient, call.name, call.raw, call.tool, should_stop()))
            return ToolResult(call.name, "ok")

    calls = []

    class Recording(BuiltinTools):
        def run(self, call, should_stop=lambda: False):
            calls.append(call)
            return ToolResult(call.name, "ok")

    res = run_tool(Tools(), "python", "print(2)", lambda: True)
    assert seen == [("python", "python", "print(2)", "python", True)] and res.content == "ok"
    run_tool(Recording(), "browser.find", '{"pattern": "x"}', lambda: False)
    raw = '{"pattern": "x"}'
    assert calls == [ToolCall("browser.find", raw, raw, None, "", "browser.find", tool="browser")]
    res = run_tool(ScriptedTools(fail=KeyError()), "browser.open", "{}", lambda: False)
    assert res == ToolResult("browser.open", "Error: the browser tool failed: KeyError: ", "", True, tool="browser")


def test_citations_are_resolved_in_the_answer_only():
    reply = ("<|channel|>analysis<|message|>see 【0†L1】<|end|>"
             "<|start|>assistant<|channel|>final<|message|>It is 【0†L1】.<|return|>")  # fmt: skip
    r = Run([(reply, "stop")], tools=ScriptedTools())
    reasoning, answer = r.of(ItemDone)
    assert reasoning.citations == ()
    assert [c.marker for c in answer.citations] == ["【0†L1】"] and answer.citations[0].start == 6


def test_text_outside_harmony_is_shown_as_an_unparsed_answer_and_counted():
    r = Run([("plain words<|return|>", "stop")])
    assert r.items() == [(MESSAGE, "plain words", True, UNPARSED)]  # the stop token ended it: whole
    assert r.finished.usage.unparsed_tokens == 2


def test_unparsed_text_after_a_message_is_its_own_item_without_markup():
    reply = "<|channel|>final<|message|>ok<|end|>stray<|message|>x<|return|>"
    r = Run([(reply, "stop")])
    assert r.items() == [(MESSAGE, "ok", True, FINAL), (MESSAGE, "strayx", True, UNPARSED)]
    assert r.finished.usage.unparsed_tokens == 5  # "str", "ay", "<|message|>", "x" and the stray <|return|>


@pytest.mark.parametrize("reply", ["plain words and more", "<|channel|>final<|message|>ok<|end|>stray words"])
def test_unparsed_text_cut_by_the_token_budget_is_incomplete(reply):
    r = Run([(reply, "length")])
    assert r.items()[-1][1:] == (reply.rsplit(">", 1)[-1].replace("<|end|", ""), False, UNPARSED)


def test_a_header_that_ends_without_a_message_shows_its_words_then_the_reply_goes_on():
    reply = "<|channel|>final to=x<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>"
    r = Run([(reply, "stop")])
    assert r.items() == [(MESSAGE, "to=x", True, UNPARSED), (MESSAGE, "ok", True, FINAL)]
    assert r.finished.usage.unparsed_tokens == 4  # the header's tokens before its <|end|>
    twice = "<|channel|>final to=x<|end|><|start|>assistant<|channel|>final to=y<|end|>"
    r = Run([(twice, "stop")])
    assert r.items() == [(MESSAGE, "to=xto=y", True, UNPARSED)] and r.finished.usage.unparsed_tokens == 4 + 5


@pytest.mark.parametrize("reply, shown", [
    # an earlier message ended; the cut header is an assistant's with no channel: its words are shown
    ("<|channel|>final<|message|>ok<|end|>stray<|start|>assistant<|channel|>final<|message|>b<|end|>"
     "<|start|>assistant more words", ["ok", "stray", "b", "assistant more words"]),
    # the same while text outside harmony is still open: added to it (markup removed)
    ("<|channel|>final<|message|>ok<|end|>stray<|start|>assistant more words", ["ok", "strayassistant more words"]),
    # a header that is being written when the budget ends: nothing of it is text
    ("<|channel|>final<|message|>ok<|end|><|start|>assistant<|channel|>fin", ["ok"]),
])  # fmt: skip
def test_a_reply_cut_inside_what_is_not_a_header_still_shows_its_words(reply, shown):
    r = Run([(reply, "length")])
    assert [text for _, text, _, _ in r.items()] == shown


def test_markup_inside_content_is_removed_and_counted():
    reply = "<|channel|>final<|message|>a<|channel|>b<|return|>"
    r = Run([(reply, "stop")])
    assert r.items() == [(MESSAGE, "ab", True, FINAL)]
    assert r.finished.usage.unparsed_tokens == 1


def test_logprobs_come_with_the_answer_tokens_only():
    r = Run([(REPLY, "stop")], sampling=SamplingConfig(temperature=0, logprobs=2), sample=True)
    entries = [lp for d in r.of(ItemDelta) for lp in d.logprobs]
    assert [e["token"] for e in entries] == ["Hello", " world"]
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] > -1e-3 for e in entries)
    for d in r.of(ItemDelta):  # each delta carries the entries of exactly the tokens whose text it releases
        assert "".join(e["token"] for e in d.logprobs) == (d.text if d.logprobs else "")


def test_logprobs_of_text_held_by_a_stop_string_wait_for_it_and_are_dropped_at_the_stop():
    reply = "<|channel|>final<|message|>one E two END three<|return|>"
    r = Run([(reply, "stop")], stops=("END",), sampling=SamplingConfig(temperature=0, logprobs=0), sample=True)
    deltas = [(d.text, [e["token"] for e in d.logprobs]) for d in r.of(ItemDelta)]
    # " E" could begin " END": its "E" and its entry wait; " two" releases both with its own; " END" never shows
    assert deltas == [("one", ["one"]), (" ", []), ("E two", [" E", " two"]), (" ", [])]


def test_text_outside_harmony_before_the_answer_does_not_shift_its_entries():
    reply = ("<|channel|>final<|message|>ok<|end|>stray words<|start|>assistant<|channel|>final<|message|>"
             "one E two END<|return|>")  # fmt: skip
    r = Run([(reply, "stop")], stops=("END",), sampling=SamplingConfig(temperature=0, logprobs=0), sample=True)
    deltas = [(d.text, [e["token"] for e in d.logprobs]) for d in r.of(ItemDelta)]
    assert deltas == [("ok", ["ok"]), ("str", []), ("ay", []), (" words", []),
                      ("one", ["one"]), (" ", []), ("E two", [" E", " two"]), (" ", [])]  # fmt: skip


def test_a_character_split_across_tokens_gets_every_entry_by_the_answers_end():
    reply = "<|channel|>final<|message|>a🤖<|return|>"
    r = Run([(reply, "stop")], sampling=SamplingConfig(temperature=0, logprobs=0), sample=True)
    answer = [t for t in toks(reply)[3:-1]]
    entries = [lp for d in r.of(ItemDelta) for lp in d.logprobs]
    assert len(answer) > 2 and len(entries) == len(answer)  # the last ones with the final flush
    assert b"".join(bytes(e["bytes"]) for e in entries) == "a🤖".encode()


@pytest.mark.parametrize("stops", [("e t",), ("ENDX",), ("END", "o t"), ("wo", "X"), ("one t",), ("E tw",), ("ENDX n",)])
def test_each_entry_comes_with_the_delta_that_completes_its_text(stops):
    """Over stop strings that hold back parts of one or several tokens: after each delta, the entries sent are
    exactly the tokens whose whole text has been shown (never one early, never one left behind)."""
    reply = "<|channel|>final<|message|>one E two ENDX now<|return|>"
    r = Run([(reply, "stop")], stops=stops, sampling=SamplingConfig(temperature=0, logprobs=0), sample=True)
    answer = [ENC.decode([t]) for t in toks(reply)[3:-1]]
    shown, sent = 0, 0
    for d in r.of(ItemDelta):
        shown += len(d.text)
        sent += len(d.logprobs)
        whole = max(i for i in range(len(answer) + 1) if len("".join(answer[:i])) <= shown)
        assert [e["token"] for e in d.logprobs] == answer[sent - len(d.logprobs) : sent]
        assert sent == whole, (stops, d)


def test_a_token_that_releases_one_held_tail_and_holds_another_keeps_the_count_of_each():
    """Stop "ab": "a" is held; "xa" releases it and holds its own "a"; "ta" the same; "c" releases the rest."""
    words = ["a", "xa", "ta", "c"]
    body = toks("<|channel|>final<|message|>") + [toks(w)[0] for w in words] + toks("<|return|>")
    r = Run([(body, "stop")], stops=("ab",), sampling=SamplingConfig(temperature=0, logprobs=0), sample=True)
    deltas = [(d.text, [e["token"] for e in d.logprobs]) for d in r.of(ItemDelta)]
    assert deltas == [("ax", ["a"]), ("at", ["xa"]), ("ac", ["ta", "c"])]


def test_without_logprobs_requested_no_entries():
    r = Run([(REPLY, "stop")], sample=True)
    assert all(d.logprobs == () for d in r.of(ItemDelta))


def test_an_error_is_its_type_and_the_first_line_of_its_message():
    assert _error_text(RuntimeError("broke\nsecond line")) == "RuntimeError: broke"
    assert _error_text(RuntimeError("  \n  ")) == "RuntimeError"
    assert _error_text(KeyError()) == "KeyError" and _error_text(ValueError("")) == "ValueError"
