"""The two drivers of a request's `generation_program` (mlx_oss/server/generation.py) on the tiny random-weight
model, without HTTP: `run_generation` (one request at a time: the engine and the pool's `prepare`) and
`BatchRunner` (several at once through a `BatchGenerator`, the pool's `take`/`release`). Replies are forced
with the test-only `ScriptedTokens`; built-in calls are answered by scripted tools. The same programs must
emit the same events whichever driver runs them; cancels, failures and refused prompts end their own request
only; the states go back to the pool. The server tests cover the same over HTTP, at seconds a test."""

from __future__ import annotations

import threading
import time

import mlx.core as mx
import pytest

import mlx_oss
from mlx_oss.engine import Engine
from mlx_oss.harmony import Message
from mlx_oss.sampling import SamplingConfig, ScriptedTokens
from mlx_oss.server.cache_pool import PromptCachePool
from mlx_oss.server.conversation import Turn
from mlx_oss.server.generation import (
    BatchRunner,
    Finished,
    ItemDone,
    ToolDone,
    Usage,
    _Decode,
    generation_program,
    run_generation,
)
from test_generation import REPLY, SEARCH, ScriptedTools, toks

CONTEXT = 1024


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


class Request:
    """One request: its turn, its scripted reply (all rounds), its settings; `events` once it ran."""

    def __init__(self, tok, user: str, reply: str, *, max_tokens: int | None = None, stops: tuple[str, ...] = (),
                 tools: ScriptedTools | None = None, fail_at: int | None = None, cancel_at: int | None = None,
                 instructions: str | None = None, grammars=None, **turn) -> None:  # fmt: skip
        self.turn = Turn(history=(Message.user(user),), instructions=instructions, **turn)
        self.grammars, self.cancel_at = grammars, cancel_at
        self.tok, self.reply, self.max_tokens, self.stops, self.tools = tok, reply, max_tokens, stops, tools
        self.fail_at = fail_at
        self.cancelled = threading.Event()
        self.events: list[object] = []

    def sampling(self) -> SamplingConfig:
        script = ScriptedTokens(toks(self.reply))
        if self.cancel_at is not None:
            calls = [0]

            def cancelling(context, logits):  # the client goes at the `cancel_at`-th step
                calls[0] += 1
                if calls[0] == self.cancel_at:
                    self.cancelled.set()
                return logits

            return SamplingConfig(temperature=0, logits_processors=(script, cancelling))
        if self.fail_at is None:
            return SamplingConfig(temperature=0, logits_processors=(script,))
        steps = [0]

        def failing(context, logits):  # a processor that fails at its `fail_at`-th step
            steps[0] += 1
            if steps[0] == self.fail_at:
                raise RuntimeError("processor broke\nsecond line")
            return logits

        return SamplingConfig(temperature=0, logits_processors=(script, failing))

    def program(self, max_context: int = CONTEXT):
        prompt, boundaries = self.turn.render(self.tok)
        return generation_program(self.tok, prompt, boundaries, self.sampling(), self.max_tokens, self.stops,
                                  self.cancelled, self.events.append, self.turn, self.tools, 8, self.grammars, max_context)  # fmt: skip

    def alone(self, engine: Engine, pool: PromptCachePool) -> None:
        prompt, boundaries = self.turn.render(self.tok)
        run_generation(engine, pool, self.tok, prompt, boundaries, self.sampling(), self.max_tokens, self.stops,
                       self.cancelled, self.events.append, self.turn, self.tools, 8, self.grammars)  # fmt: skip

    @property
    def finished(self) -> Finished:
        assert isinstance(self.events[-1], Finished)
        return self.events[-1]


def run_batch(runner: BatchRunner, requests: dict[str, Request], on_step=None) -> dict[str, BaseException | None]:
    for key, r in requests.items():
        runner.start(key, r.program(runner.max_context))
    ended: dict[str, BaseException | None] = {}
    steps = 0
    while runner.busy:
        ended.update(runner.step())
        steps += 1
        if on_step is not None:
            on_step(steps)
        assert steps < 2000
    return ended


class HeldTools(ScriptedTools):
    """Scripted tools whose calls wait for `release` (a built-in call still running)."""

    def __init__(self, release: threading.Event, *answers: str) -> None:
        super().__init__(*answers)
        self.release = release

    def run(self, call, should_stop=lambda: False):
        self.release.wait(30)
        return super().run(call, should_stop)


def _requests(tok) -> dict[str, Request]:
    return {
        "plain": Request(tok, "plain question", REPLY),
        "cut": Request(tok, "a question cut by its budget", REPLY, max_tokens=9),
        "stopped": Request(tok, "a question with a stop string", REPLY.replace("Hello world", "Hello END world"),
                           stops=("END",)),  # fmt: skip
        "tool": Request(tok, "a question that searches", SEARCH + REPLY, tools=ScriptedTools("found it")),
    }


def test_the_batch_emits_what_each_request_emits_alone(model_tok):
    model, tok = model_tok
    alone = _requests(tok)
    for r in alone.values():  # each from an empty pool: nothing cached before its first round
        r.alone(Engine(model, max_context=CONTEXT), PromptCachePool(1 << 30))
    together = _requests(tok)
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=4)
    try:
        assert run_batch(runner, together) == {k: None for k in together}
    finally:
        runner.close()
    for key, r in together.items():
        assert r.events == alone[key].events, key
    reasons = {k: r.finished.stop_reason for k, r in together.items()}
    assert reasons == {"plain": "stop", "cut": "length", "stopped": "stop", "tool": "stop"}
    assert together["stopped"].finished.stop_sequence == "END"
    assert together["tool"].tools.calls == [("browser.search", '{"query": "q"}')]
    (done,) = [e for e in together["tool"].events if isinstance(e, ToolDone)]
    assert done.result.content == "found it"
    assert together["tool"].finished.usage.cached_tokens > 0  # the second round resumed the first's state


def test_a_request_cancelled_in_the_batch_ends_alone_and_the_others_go_on(model_tok):
    model, tok = model_tok
    reqs = {"stays": Request(tok, "the one that stays", REPLY), "leaves": Request(tok, "the one that leaves", REPLY)}
    pool = PromptCachePool(1 << 30)
    runner = BatchRunner(model, pool, max_context=CONTEXT, tool_threads=2)

    def on_step(n):
        if n == 4:
            reqs["leaves"].cancelled.set()

    try:
        assert run_batch(runner, reqs, on_step) == {"stays": None, "leaves": None}
    finally:
        runner.close()
    assert reqs["stays"].finished.stop_reason == "stop"
    left = reqs["leaves"].finished
    assert left.stop_reason == "cancelled" and left.usage.completion_tokens < len(toks(REPLY))
    # both states went back to the pool: the one that stayed, whole, resumes a continuation
    assert len(pool) == 2


def test_the_states_of_a_batch_go_back_to_the_pool_and_a_continuation_resumes_them(model_tok):
    model, tok = model_tok
    pool = PromptCachePool(1 << 30)
    first = Request(tok, "remember this", REPLY)
    counting = _Counting(model)
    runner = BatchRunner(counting, pool, max_context=CONTEXT, tool_threads=1)
    try:
        run_batch(runner, {"first": first})
        assert len(pool) == 1
        history = (Message.user("remember this"), Message.assistant("Hello world"), Message.user("and then?"))
        second = Request(tok, "", REPLY)
        second.turn = Turn(history=history)
        counting.fed = 0
        run_batch(runner, {"second": second})
    finally:
        runner.close()
    prompt = second.turn.render(tok)[0]
    usage = second.finished.usage
    assert 0 < usage.cached_tokens < len(prompt) and usage.prompt_tokens == len(prompt)
    # the pooled state was resumed, not just counted: only the rest of the prompt went through the model
    assert counting.fed <= len(prompt) - usage.cached_tokens + usage.completion_tokens + 1


class _Counting:
    """The model, counting the tokens its forward passes are given."""

    def __init__(self, model) -> None:
        self.model, self.fed = model, 0

    def __call__(self, x, *args, **kw):
        self.fed += x.size
        return self.model(x, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_a_failing_round_ends_its_request_with_the_error_in_both_drivers(model_tok):
    model, tok = model_tok
    engine = Engine(model, max_context=CONTEXT)
    alone = Request(tok, "this one fails", REPLY, fail_at=5)
    alone.alone(engine, PromptCachePool(1 << 30))
    assert alone.finished.stop_reason == "error" and alone.finished.error == "RuntimeError: processor broke"
    assert engine.tokens == []  # the cache's state is unknown after a failure: the engine starts clean
    items = [e for e in alone.events if isinstance(e, ItemDone)]
    assert items and not items[-1].complete
    pool = PromptCachePool(1 << 30)
    batched = Request(tok, "this one fails", REPLY, fail_at=5)  # (in a batch a failed step fails all: below)
    runner = BatchRunner(model, pool, max_context=CONTEXT, tool_threads=2)
    try:
        assert run_batch(runner, {"fails": batched}) == {"fails": None}
    finally:
        runner.close()
    assert batched.events == alone.events  # the tokens it had fed counted the same way too
    assert len(pool) == 0  # the failed one's state is dropped, never pooled


def test_a_prompt_past_the_context_is_refused_before_any_decode_in_both_drivers(model_tok):
    model, tok = model_tok
    long = Request(tok, "word " * 300, REPLY)
    with pytest.raises(ValueError, match="context"):
        long.alone(Engine(model, max_context=128), PromptCachePool(1 << 30))
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=128, tool_threads=1)
    try:
        ended = run_batch(runner, {"long": Request(tok, "word " * 300, REPLY)})
    finally:
        runner.close()
    assert isinstance(ended["long"], ValueError) and "context" in str(ended["long"])


def test_a_tool_that_fails_inside_the_runner_ends_only_its_request(model_tok):
    """`run_tool` never raises; a bug in the runner's tool thread must still end only that request."""
    model, tok = model_tok
    boom = RuntimeError("tool thread bug")
    reqs = {"tool": Request(tok, "searches", SEARCH + REPLY, tools=ScriptedTools("x")), "plain": Request(tok, "plain", REPLY)}
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=2)
    real = runner._executor.submit

    def submit(fn):
        def broken():
            raise boom
        return real(broken)

    runner._executor.submit = submit
    try:
        ended = run_batch(runner, reqs)
    finally:
        runner.close()
    assert ended == {"tool": boom, "plain": None} and reqs["plain"].finished.stop_reason == "stop"


def test_a_failed_batch_step_ends_every_live_round_and_a_fresh_batch_goes_on(model_tok):
    model, tok = model_tok
    reqs = {"a": Request(tok, "first of two", REPLY), "b": Request(tok, "second of two", REPLY)}
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=2)
    broken = runner.batch

    def step():
        raise RuntimeError("the batch broke")

    def on_step(n):
        if n == 3:
            broken.step = step

    try:
        assert run_batch(runner, reqs, on_step) == {"a": None, "b": None}
        assert runner.batch is not broken  # a fresh one
        after = Request(tok, "after the failure", REPLY)
        run_batch(runner, {"after": after})
    finally:
        runner.close()
    for r in reqs.values():
        assert r.finished.stop_reason == "error" and r.finished.error == "RuntimeError: the batch broke"
    assert after.finished.stop_reason == "stop"
    mx.clear_cache()


def test_the_batch_runner_ends_a_program_that_fails_and_one_whose_prompt_the_batch_refuses(model_tok):
    """`BatchRunner` on its own: a generation program that raises, and one that asks to decode a prompt the
    batch refuses (an id outside the vocabulary; the server's own programs check the context first), each
    end with their error as (key, error), and the runner is idle after (the others' errors are not theirs)."""
    from mlx_oss.sampling import Sampler, SamplingConfig
    from mlx_oss.server.cache_pool import PromptCachePool
    from mlx_oss.server.generation import BatchRunner, _Decode

    model, tok = model_tok
    runner = BatchRunner(model, PromptCachePool(1 << 20), max_context=256, tool_threads=2)
    boom = RuntimeError("program bug")

    def failing():
        raise boom
        yield  # a generator

    def bad_prompt():
        yield _Decode([model.args.vocab_size + 5], (), Sampler(SamplingConfig(temperature=0)), 1, None, lambda: False)

    runner.start("failing", failing())
    runner.start("bad-prompt", bad_prompt())
    ended = dict(runner.step())
    assert set(ended) == {"failing", "bad-prompt"}
    assert ended["failing"] is boom
    assert isinstance(ended["bad-prompt"], ValueError) and "vocabulary" in str(ended["bad-prompt"])
    assert not runner.busy
    runner.close()


def test_the_servers_batch_prefills_a_joining_prompt_in_bounded_steps(model_tok):
    """The batch `serve --max-batch` makes (and makes again after a failure) holds a joining prompt's prefill
    to BATCH_PREFILL_STEP tokens a step and BATCH_PREFILL_BALANCE decode passes' time (generation.py says why)."""
    from mlx_oss.server.cache_pool import PromptCachePool
    from mlx_oss.server.generation import BATCH_PREFILL_BALANCE, BATCH_PREFILL_STEP, BatchRunner

    model, _ = model_tok
    runner = BatchRunner(model, PromptCachePool(0), max_context=512, tool_threads=1)
    try:
        for batch in (runner.batch, runner._new_batch()):
            assert (batch.prefill_step, batch.prefill_balance) == (BATCH_PREFILL_STEP, BATCH_PREFILL_BALANCE) == (128, 4.0)
            assert batch.max_context == 512
    finally:
        runner.close()


def _feed_fails_at(prog, at: int):
    """`prog` with its rounds' output failing at the `at`-th token it is fed (a parser bug, say)."""
    answer = None
    while True:
        try:
            ask = prog.send(answer)
        except StopIteration:
            return
        if isinstance(ask, _Decode):
            real, seen = ask.out.feed, [0]

            def feed(tok, real=real, seen=seen):
                seen[0] += 1
                stop = real(tok)
                if seen[0] == at:
                    raise RuntimeError("parser broke")
                return stop

            ask.out.feed = feed
        answer = yield ask


def test_in_a_batch_a_token_that_cannot_be_read_ends_its_request_alone_and_drops_its_state(model_tok):
    model, tok = model_tok
    pool = PromptCachePool(1 << 30)
    runner = BatchRunner(model, pool, max_context=CONTEXT, tool_threads=2)
    broken, fine = Request(tok, "the broken one", REPLY), Request(tok, "the fine one", REPLY)
    try:
        runner.start("broken", _feed_fails_at(broken.program(), 4))
        runner.start("fine", fine.program())
        ended = {}
        while runner.busy:
            ended.update(runner.step())
        assert len(runner) == 0
    finally:
        runner.close()
    assert ended == {"broken": None, "fine": None}
    assert broken.finished.stop_reason == "error" and broken.finished.error == "RuntimeError: parser broke"
    assert broken.finished.usage.completion_tokens == 4 and fine.finished.stop_reason == "stop"
    assert len(pool) == 1  # the fine one's state only


def test_in_a_batch_a_failed_first_sampling_ends_its_request_alone(model_tok):
    model, tok = model_tok
    pool = PromptCachePool(1 << 30)
    runner = BatchRunner(model, pool, max_context=CONTEXT, tool_threads=2)
    reqs = {"fails": Request(tok, "fails at once", REPLY, fail_at=1), "fine": Request(tok, "goes on", REPLY)}
    try:
        assert run_batch(runner, reqs) == {"fails": None, "fine": None}
    finally:
        runner.close()
    assert reqs["fails"].events == [Finished(Usage(len(reqs["fails"].turn.render(tok)[0]), 0, 0, 0, 0), "error",
                                             "RuntimeError: processor broke")]  # fmt: skip
    assert reqs["fine"].finished.stop_reason == "stop" and len(pool) == 1


def test_len_counts_the_programs_decoding_and_those_running_a_tool(model_tok):
    model, tok = model_tok
    release = threading.Event()
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=2)
    tool = Request(tok, "searches slowly", SEARCH + REPLY, tools=HeldTools(release, "x"))
    plain = Request(tok, "plain", "<|channel|>final<|message|>" + "word " * 80 + "<|return|>")  # outlasts the call
    try:
        runner.start("tool", tool.program())
        runner.start("plain", plain.program())
        assert len(runner) == 2
        while not runner._tools:
            runner.step()
        assert len(runner) == 2 and runner.busy  # one decoding, one in its tool
        release.set()
        while runner.busy:
            runner.step()
        assert len(runner) == 0
    finally:
        release.set()
        runner.close()
    assert tool.finished.stop_reason == plain.finished.stop_reason == "stop"


def test_a_cancel_stops_the_engine_in_both_drivers(model_tok):
    model, tok = model_tok
    alone = Request(tok, "leaves early", REPLY, cancel_at=4)
    alone.alone(Engine(model, max_context=CONTEXT), PromptCachePool(1 << 30))
    assert alone.finished.stop_reason == "cancelled" and alone.finished.usage.completion_tokens == 3  # (the 4th never read)
    batched = Request(tok, "leaves early", REPLY, cancel_at=4)
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=1)
    try:
        run_batch(runner, {"b": batched})
    finally:
        runner.close()
    assert batched.finished.stop_reason == "cancelled" and batched.finished.usage.completion_tokens < len(toks(REPLY))


@pytest.mark.parametrize("batched", [False, True])
def test_a_new_conversation_with_the_same_instructions_resumes_from_their_end(model_tok, batched):
    """The turn's boundaries reach the engine: a state is kept at the end of the developer message."""
    model, tok = model_tok
    first = Request(tok, "first conversation", REPLY, instructions="Answer in French.")
    second = Request(tok, "a different one", REPLY, instructions="Answer in French.")
    developer_end = second.turn.render(tok)[1][1]
    pool = PromptCachePool(1 << 30)
    if batched:
        runner = BatchRunner(model, pool, max_context=CONTEXT, tool_threads=1)
        try:
            run_batch(runner, {"first": first})
            run_batch(runner, {"second": second})
        finally:
            runner.close()
    else:
        engine = Engine(model, max_context=CONTEXT)
        first.alone(engine, pool)
        second.alone(engine, pool)
    assert second.finished.usage.cached_tokens == developer_end


@pytest.mark.parametrize("batched", [False, True])
def test_a_turn_not_compiled_is_compiled_with_the_grammars_given(model_tok, batched):
    from mlx_oss.grammar import Grammars
    from mlx_oss.server.tools import StrictSchema

    model, tok = model_tok
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = '<|channel|>final<|message|>{"n":5}<|return|>'  # (the grammar's JSON has no optional spaces)
    r = Request(tok, "a number", reply, grammars=Grammars(tok), answer_schema=StrictSchema("final", schema, "f"))
    if batched:
        runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=1)
        try:
            assert run_batch(runner, {"r": r}) == {"r": None}
        finally:
            runner.close()
    else:
        r.alone(Engine(model, max_context=CONTEXT), PromptCachePool(1 << 30))
    assert r.finished.stop_reason == "stop" and [e.text for e in r.events if isinstance(e, ItemDone)] == ['{"n":5}']


def test_close_does_not_wait_for_a_tool_still_running(model_tok):
    model, tok = model_tok
    release = threading.Event()
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=1)
    r = Request(tok, "searches forever", SEARCH + REPLY, tools=HeldTools(release, "x"))
    runner.start("r", r.program())
    while not runner._tools:
        runner.step()
    t0 = time.monotonic()
    runner.close()  # a server stopping: the tool's thread is left to end on its own
    assert time.monotonic() - t0 < 10
    release.set()


def test_every_program_runs_its_tool_at_once_on_the_runners_named_threads(model_tok):
    """`tool_threads` (the server's --max-batch): as many built-in calls at once, each on an `mlx-oss-tool`
    thread; a call that waited for a thread would leave the barrier short of its parties."""
    model, tok = model_tok
    n = 8
    barrier, names = threading.Barrier(n, timeout=20), []

    class Meeting(ScriptedTools):
        def run(self, call, should_stop=lambda: False):
            names.append(threading.current_thread().name)
            barrier.wait()  # raises BrokenBarrierError unless all n calls run together
            return super().run(call, should_stop)

    reqs = {f"r{i}": Request(tok, f"search number {i}", SEARCH + REPLY, tools=Meeting("met")) for i in range(n)}
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=n)
    try:
        assert run_batch(runner, reqs) == {k: None for k in reqs}
    finally:
        runner.close()
    for r in reqs.values():
        (done,) = [e for e in r.events if isinstance(e, ToolDone)]
        assert done.result.content == "met"
    assert len(names) == n and all(name.startswith("mlx-oss-tool_") for name in names)


def test_a_step_with_only_a_tool_running_waits_briefly_for_it(model_tok):
    """Nothing to decode while a built-in call runs: `step` waits for it a moment (50 ms), so the worker
    neither spins nor sleeps past a result (or a new request)."""
    model, tok = model_tok
    release = threading.Event()
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=1)
    r = Request(tok, "searches", SEARCH + REPLY, tools=HeldTools(release, "x"))
    try:
        runner.start("r", r.program())
        while not runner._tools or len(runner.batch):
            runner.step()
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            assert runner.step() == []
            times.append(time.monotonic() - t0)
        assert 0.02 < min(times) and max(times) < 0.5, times
        release.set()
        while runner.busy:
            runner.step()
    finally:
        release.set()
        runner.close()
    assert r.finished.stop_reason == "stop"


def test_a_sequence_stopped_by_a_stop_string_leaves_the_batch_at_once(model_tok):
    """The client's stop string ends the round; the batch must not go on decoding the rest of it."""
    model, tok = model_tok
    tail = " and on" * 40
    r = Request(tok, "stops early", f"<|channel|>final<|message|>one END{tail}<|return|>", stops=("END",))
    runner = BatchRunner(model, PromptCachePool(1 << 30), max_context=CONTEXT, tool_threads=1)
    steps = []
    try:
        run_batch(runner, {"r": r}, steps.append)
    finally:
        runner.close()
    assert r.finished.stop_reason == "stop" and r.finished.stop_sequence == "END"
    assert len(steps) < 15  # the ~8 tokens to the stop and a step or two to leave, not the 80 after it
