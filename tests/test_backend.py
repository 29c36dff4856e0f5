"""The server's model side (`mlx_oss/server/backend.py`) on the tiny model, without HTTP: the context check
before anything is queued, the sampling defaults with the test hook's processors, `serve --max-tokens` as
the default a request's own limit overrides, the outcome counts `/health` shows, the 429 of a full queue,
the lazily made grammars, a request that fails in a two-Mac group (answered by `fail_all`, or raised when
no peer was lost), and the same events one at a time and batched. The server tests cover the same through
the three APIs."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import pytest

import mlx_oss
from mlx_oss.engine import Engine
from mlx_oss.harmony import Message
from mlx_oss.sampling import SamplingConfig, ScriptedTokens
from mlx_oss.server import backend as backend_module
from mlx_oss.server.backend import Backend
from mlx_oss.server.conversation import Turn
from mlx_oss.server.errors import APIError
from mlx_oss.server.generation import Finished, ItemDone
from mlx_oss.server.tools import StrictSchema
from mlx_oss.server.worker import END
from test_generation import REPLY, toks
from test_worker import blocker, events, loop  # noqa: F401 - the loop fixture


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


def hook(body: dict) -> list:
    """The test-only sampling hook: the body names the reply to force."""
    return [ScriptedTokens(toks(body["reply"]))]


def make(model_tok, **kw) -> Backend:
    model, tok = model_tok
    return Backend(model, tok, max_context=kw.pop("max_context", 512), processors=kw.pop("processors", hook), **kw)


def run(backend: Backend, loop, reply: str = REPLY, *, max_tokens: int | None = None, done=None) -> list:
    turn = Turn((Message.user("hi"),), sampling=backend.sampling({"reply": reply}), max_tokens=max_tokens)
    prompt, boundaries = backend.prompt(turn)

    async def submit():  # on the event loop, as the routes do
        return backend.submit(turn, prompt, boundaries, done=done)

    return events(asyncio.run_coroutine_threadsafe(submit(), loop).result(10), loop, timeout=60)


def test_a_prompt_that_leaves_no_room_is_refused_before_anything_runs(model_tok):
    backend = make(model_tok, max_context=64)
    try:
        fits = Turn((Message.user("hi"),))
        n = len(fits.render(backend.tokenizer)[0])
        assert backend.prompt(fits)[0] == fits.render(backend.tokenizer)[0] and n < 64
        words = Turn((Message.user("hi" + " hi" * (64 - n)),))  # one token more than the room left
        size = len(words.render(backend.tokenizer)[0])
        assert size >= 64
        with pytest.raises(APIError) as e:
            backend.prompt(words)
        assert (e.value.status, e.value.param, e.value.code) == (400, "messages", "context_length_exceeded")
        assert e.value.message == (f"This model's maximum context length is 64 tokens; the prompt is {size} tokens "
                                   "(at least one must be left to generate).")  # fmt: skip
        at = Turn((Message.user("hi" + " hi" * (63 - n)),))  # exactly one token of room
        assert len(backend.prompt(at)[0]) == 63
    finally:
        backend.shutdown()


def test_sampling_is_the_servers_defaults_with_the_hooks_processors(model_tok):
    defaults = SamplingConfig(temperature=0.3, top_p=0.8, seed=5)
    plain = make(model_tok, processors=None, sampling=defaults)
    hooked = make(model_tok, sampling=defaults)
    try:
        assert plain.sampling({"reply": "x"}) is defaults
        got = hooked.sampling({"reply": "x"})
        assert (got.temperature, got.top_p, got.seed) == (0.3, 0.8, 5)
        (script,) = got.logits_processors
        assert isinstance(script, ScriptedTokens) and script.tokens == toks("x")
    finally:
        plain.shutdown()
        hooked.shutdown()


def test_a_reply_runs_on_the_worker_and_its_outcome_is_counted(model_tok, loop):
    backend = make(model_tok)
    ended = threading.Event()
    try:
        got = run(backend, loop, done=ended.set)
        assert got[-1] is END and isinstance(got[-2], Finished) and got[-2].stop_reason == "stop"
        assert [e.text for e in got if isinstance(e, ItemDone)] == ["think hard", "Hello world"]
        assert ended.is_set()
        run(backend, loop, max_tokens=3)
        run(backend, loop)
        assert backend.outcomes == {"stop": 2, "length": 1}
    finally:
        backend.shutdown()


@pytest.mark.parametrize("server, request_, want", [(None, None, None), (5, None, 5), (5, 3, 3), (None, 4, 4), (3, 9, 9)])
def test_serve_max_tokens_is_the_default_a_requests_own_limit_overrides(model_tok, loop, server, request_, want):
    backend = make(model_tok, max_tokens=server)
    try:
        finished = run(backend, loop, max_tokens=request_)[-2]
        n = len(toks(REPLY))
        assert finished.usage.completion_tokens == (n if want is None else min(want, n))
        assert finished.stop_reason == ("stop" if want is None or want >= n else "length")
    finally:
        backend.shutdown()


def test_batched_the_backend_emits_what_it_emits_one_at_a_time(model_tok, loop):
    one, batched = make(model_tok), make(model_tok, max_batch=2)
    try:
        assert batched.max_batch == 2 and one.max_batch == 1
        a, b = run(one, loop), run(batched, loop)
        assert a == b and a[-2].stop_reason == "stop"
        assert run(batched, loop, max_tokens=4)[-2].stop_reason == "length"
        assert batched.outcomes == {"stop": 1, "length": 1}
    finally:
        one.shutdown()
        batched.shutdown()


def test_a_full_queue_is_a_429_to_retry_shortly(model_tok, loop):
    backend = make(model_tok, max_queue=1)
    fn, entered, release = blocker()
    try:
        backend.worker.submit(fn, loop)  # running
        assert entered.wait(10)
        backend.worker.submit(lambda emit, c: None, loop)  # waiting: the queue's one place

        async def submit():
            turn = Turn((Message.user("hi"),))
            return backend.submit(turn, *backend.prompt(turn))

        with pytest.raises(APIError) as e:
            asyncio.run_coroutine_threadsafe(submit(), loop).result(10)
        err = e.value
        assert (err.status, err.type, err.code, err.headers) == (429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "1"})
        assert err.message.startswith("The server is busy (") and err.message.endswith("); retry shortly.")
    finally:
        release.set()
        backend.shutdown()


def test_the_grammars_are_made_once_on_first_use_and_a_turn_without_schemas_is_not_compiled(model_tok):
    backend = make(model_tok)
    try:
        plain = Turn((Message.user("hi"),))
        assert backend.compile(plain) is plain and backend._grammars is None  # nothing built for it
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
        strict = Turn((Message.user("hi"),), answer_schema=StrictSchema("final", schema, "text.format.schema"))
        compiled = backend.compile(strict)
        assert [t for t, _ in compiled.grammars] == ["final"]
        first = backend.grammars
        assert backend.grammars is first and first.encoding is backend.tokenizer
    finally:
        backend.shutdown()


class _Collective(Engine):
    """An engine whose every generation fails as a lost peer's collective would."""

    def check_prompt(self, prompt):
        raise RuntimeError("[ring] peer 1 closed the connection")


def test_in_a_group_a_failure_from_a_lost_peer_is_left_to_fail_all(model_tok, loop, monkeypatch):
    monkeypatch.setattr(backend_module, "PEER_GRACE_S", 0.3)
    backend = make(model_tok, engine_class=_Collective, end_group=lambda: None)
    try:
        backend._lost.set()  # the watchdog noticed: fail_all answers this request with the reason
        assert run(backend, loop) == [END]
    finally:
        backend.shutdown()
    alone = make(model_tok, engine_class=_Collective, end_group=lambda: None)
    try:
        (error, end) = run(alone, loop)  # no peer lost within the grace: the failure is the request's
        assert isinstance(error, RuntimeError) and "peer 1 closed" in str(error) and end is END
    finally:
        alone.shutdown()
    monkeypatch.setattr(backend_module, "PEER_GRACE_S", 30.0)
    single = make(model_tok, engine_class=_Collective)  # not in a group: raised at once, no grace waited
    try:
        t0 = time.monotonic()
        (error, end) = run(single, loop)
        assert isinstance(error, RuntimeError) and end is END and time.monotonic() - t0 < 10
    finally:
        single.shutdown()


@pytest.mark.parametrize("max_batch", [1, 2])
def test_a_turns_stop_strings_schemas_tools_and_call_limit_reach_its_generation(model_tok, loop, max_batch):
    """What `submit` hands the generation, one at a time and batched: the stop strings, the Grammars for a strict
    answer, the built-in tools with the call limit, and (batched) the context for the rounds after a call."""
    from mlx_oss.server.generation import ToolDone
    from test_generation import SEARCH, ScriptedTools

    backend = make(model_tok, max_batch=max_batch, max_context=512)
    try:
        def go(turn, reply, tools=None, max_calls=8):
            turn = replace(turn, sampling=backend.sampling({"reply": reply}))
            prompt, boundaries = backend.prompt(backend.compile(turn))

            async def submit():
                return backend.submit(backend.compile(turn), prompt, boundaries, tools, max_calls)

            return events(asyncio.run_coroutine_threadsafe(submit(), loop).result(10), loop, timeout=60)

        plain = Turn((Message.user("hi"),))
        stopped = go(replace(plain, stop=("wor",)), REPLY)[-2]
        assert (stopped.stop_reason, stopped.stop_sequence) == ("stop", "wor")
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        strict = replace(plain, answer_schema=StrictSchema("final", schema, "text.format.schema"))
        got = go(strict, '<|channel|>final<|message|>{"n":5}<|return|>')
        assert [e.text for e in got if isinstance(e, ItemDone)] == ['{"n":5}']
        tools = ScriptedTools("found")
        got = go(plain, SEARCH + REPLY, tools)
        assert tools.calls and [e.result.content for e in got if isinstance(e, ToolDone)] == ["found"]
        assert got[-2].stop_reason == "stop"
        limited = go(plain, SEARCH + SEARCH, ScriptedTools(), max_calls=0)
        assert [e.result.error for e in limited if isinstance(e, ToolDone)] == [True]
        assert limited[-2].stop_reason == "tool_limit"
    finally:
        backend.shutdown()


def test_a_truncated_turn_is_rendered_to_fit_the_context(model_tok):
    backend = make(model_tok, max_context=160)
    try:
        turn = Turn((Message.user("old " * 200), Message.assistant("ok"), Message.user("hi")), truncate=True)
        tokens, _ = backend.prompt(turn)
        assert len(tokens) < 160 and "old" not in backend.tokenizer.decode(tokens)
    finally:
        backend.shutdown()


def test_events_yields_a_jobs_events_and_raises_what_the_worker_raised(model_tok, loop):
    backend = make(model_tok)
    try:
        async def collect(fn):
            job = backend.worker.submit(fn, asyncio.get_running_loop())
            return [ev async for ev in Backend.events(job)]

        def emits(emit, cancelled):
            emit("one")
            emit("two")

        assert asyncio.run_coroutine_threadsafe(collect(emits), loop).result(10) == ["one", "two"]

        def fails(emit, cancelled):
            emit("before")
            raise RuntimeError("worker side")

        with pytest.raises(RuntimeError, match="worker side"):
            asyncio.run_coroutine_threadsafe(collect(fails), loop).result(10)
    finally:
        backend.shutdown()


def test_the_defaults_and_a_batch_in_a_group_refused(model_tok):
    from mlx_oss.distributed.engine import LeaderEngine

    backend = make(model_tok, processors=None)
    try:
        assert backend.worker.max_queue == 16 and backend.max_batch == 1
        assert backend.sampling({}) == SamplingConfig()  # no server settings: the library's defaults
    finally:
        backend.shutdown()
    with pytest.raises(ValueError) as e:
        make(model_tok, max_batch=2, engine_class=LeaderEngine)
    assert str(e.value) == "batched generation (max_batch > 1) is not supported in a group (--hosts) yet"
