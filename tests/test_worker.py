"""The generation worker (`mlx_oss/server/worker.py`) and the backend's ends (`backend.py`), without HTTP:
one thread running jobs in order, each job's events ending with END (after the exception a job raised),
cleanups that always run, the bounded queue (a cancelled waiting job keeps no place), cancel_all, stop
(with the last function run on the worker thread, and the answer when a job is stuck) and fail_all.
An asyncio loop in a thread stands in for the server's."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import mlx_oss
from mlx_oss.server.backend import Backend
from mlx_oss.server.generation import Finished
from mlx_oss.server.worker import END, GenerationWorker, QueueFull

WORKER_THREAD = "mlx-oss-generation"


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.close()


def events(job, loop, timeout: float = 10.0) -> list:
    """Every item of the job's event queue through END."""
    out = []
    while True:
        item = asyncio.run_coroutine_threadsafe(job.events.get(), loop).result(timeout)
        out.append(item)
        if item is END:
            return out


@pytest.fixture
def worker():
    w = GenerationWorker(max_queue=2)
    w.start()
    yield w
    w.stop(timeout=5)


def blocker():
    """A job that waits for `release`; `entered` is set once it runs."""
    entered, release = threading.Event(), threading.Event()

    def fn(emit, cancelled):
        entered.set()
        release.wait(10)
        emit("held")

    return fn, entered, release


@pytest.mark.parametrize("bad", [0, -1])
def test_a_queue_of_no_places_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match=rf"^max_queue must be at least 1, got {bad}$"):
        GenerationWorker(bad)
    assert GenerationWorker(1).max_queue == 1


def test_jobs_run_in_order_on_the_worker_thread_and_end_with_end(worker, loop):
    ran: list[tuple[int, str]] = []

    def job(i):
        def fn(emit, cancelled):
            ran.append((i, threading.current_thread().name))
            emit(f"event {i}")

        return fn

    jobs = [worker.submit(job(i), loop) for i in range(2)]
    assert [events(j, loop) for j in jobs] == [["event 0", END], ["event 1", END]]
    assert ran == [(0, WORKER_THREAD), (1, WORKER_THREAD)]
    assert not worker.busy and worker.waiting == 0


def test_an_exception_is_the_jobs_last_event_and_the_worker_goes_on(worker, loop):
    cleaned: list[str] = []

    def bad(emit, cancelled):
        raise RuntimeError("boom")

    def bad_cleanup():
        cleaned.append("bad")
        raise OSError("cleanup failed")

    first = worker.submit(bad, loop, bad_cleanup)
    got = events(first, loop)
    assert len(got) == 2 and isinstance(got[0], RuntimeError) and str(got[0]) == "boom" and got[1] is END
    second = worker.submit(lambda emit, c: emit("fine"), loop, lambda: cleaned.append("ok"))
    assert events(second, loop) == ["fine", END] and cleaned == ["bad", "ok"]


def test_the_queue_holds_max_queue_waiting_and_a_cancelled_one_frees_its_place(worker, loop):
    fn, entered, release = blocker()
    running = worker.submit(fn, loop)
    assert entered.wait(10) and worker.busy
    waiting = [worker.submit(lambda emit, c: emit("ran"), loop) for _ in range(2)]
    assert worker.waiting == 2
    with pytest.raises(QueueFull, match="^2 requests are already waiting$"):
        worker.submit(lambda emit, c: None, loop)
    waiting[0].cancel()  # its client left
    assert worker.waiting == 1
    cleaned = threading.Event()
    third = worker.submit(lambda emit, c: emit("ran"), loop, cleaned.set)
    release.set()
    assert events(running, loop) == ["held", END]
    assert events(waiting[0], loop) == [END]  # cancelled before it ran: never run, still ended
    assert events(waiting[1], loop) == ["ran", END] and events(third, loop) == ["ran", END] and cleaned.is_set()


def test_cancel_all_cancels_the_running_and_every_waiting_job(worker, loop):
    fn, entered, release = blocker()
    running = worker.submit(fn, loop)
    assert entered.wait(10)
    waiting = worker.submit(lambda emit, c: emit("ran"), loop)
    worker.cancel_all()
    assert running.cancelled.is_set() and waiting.cancelled.is_set()
    release.set()
    assert events(waiting, loop) == [END]


def test_stop_runs_the_last_function_on_the_worker_thread_then_ends_it(loop):
    w = GenerationWorker()
    assert w.stop() is True  # never started
    w.start()
    seen: list[str] = []
    assert w.stop(timeout=10, last=lambda: seen.append(threading.current_thread().name)) is True
    assert seen == [WORKER_THREAD]
    assert w.stop() is True and seen == [WORKER_THREAD]  # a second stop: nothing left to end


def test_stop_says_so_when_a_job_does_not_end(loop):
    w = GenerationWorker()
    w.start()
    fn, entered, release = blocker()
    job = w.submit(fn, loop)
    assert entered.wait(10)
    t0 = time.monotonic()
    assert w.stop(timeout=0.3) is False  # stuck in a step that ignores cancellation
    assert time.monotonic() - t0 < 3 * 0.3 + 1 and job.cancelled.is_set()
    release.set()


def test_fail_all_ends_each_job_with_the_error_then_end(worker, loop):
    assert worker.fail_all("nothing to fail", timeout=5) is None  # no job: returns at once
    fn, entered, release = blocker()
    running = worker.submit(fn, loop)
    assert entered.wait(10)
    waiting = worker.submit(lambda emit, c: emit("never"), loop)
    got: dict[str, list] = {}
    readers = [threading.Thread(target=lambda n=n, j=j: got.update({n: events(j, loop)}), daemon=True)
               for n, j in (("running", running), ("waiting", waiting))]  # fmt: skip
    for r in readers:
        r.start()
    t0 = time.monotonic()
    worker.fail_all("lost rank 1", timeout=5)
    took = time.monotonic() - t0
    for r in readers:
        r.join(10)
    assert got == {"running": ["lost rank 1", END], "waiting": ["lost rank 1", END]}
    assert running.cancelled.is_set() and waiting.cancelled.is_set()
    # the events were taken at once: 0.2 s for them to land, 0.5 s for the last bytes, not its bound (a
    # second more in either sleep, or waiting the whole bound, is caught)
    assert 0.2 <= took < 1.4
    release.set()


def test_fail_all_waits_no_longer_than_its_bound_for_events_nobody_takes(worker, loop):
    fn, entered, release = blocker()
    worker.submit(fn, loop)
    assert entered.wait(10)
    t0 = time.monotonic()
    worker.fail_all("lost", timeout=1.0)
    assert 1.0 <= time.monotonic() - t0 < 1.4  # the bound, not the bound plus the half second for the last bytes
    release.set()


def test_fail_all_waits_three_seconds_by_default(worker, loop):
    """The default bound (the watchdog calls it without one): long enough for a slow client to take its
    error, short enough that the process ends soon after a lost rank."""
    fn, entered, release = blocker()
    worker.submit(fn, loop)
    assert entered.wait(10)
    t0 = time.monotonic()
    worker.fail_all("lost")
    assert 3.0 <= time.monotonic() - t0 < 3.6
    release.set()


def test_an_event_after_the_loop_closed_is_dropped(loop):
    w = GenerationWorker()
    dead = asyncio.new_event_loop()
    dead.close()
    job = w.submit(lambda emit, c: None, dead)
    job.emit("late")  # no exception: the request is gone


def test_backend_shutdown_runs_end_group_once_on_the_worker_thread(tiny_chat_converted):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    seen: list[str] = []
    backend = Backend(model, tok, end_group=lambda: seen.append(threading.current_thread().name))
    assert backend.shutdown() is True and seen == [WORKER_THREAD]
    assert backend.shutdown() is True and seen == [WORKER_THREAD]


def test_backend_fail_all_sends_a_server_error_with_the_message(tiny_chat_converted, loop):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    backend = Backend(model, tok, end_group=lambda: None)
    try:
        fn, entered, release = blocker()
        job = backend.worker.submit(fn, loop)
        assert entered.wait(10)
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(events(job, loop)), daemon=True)
        reader.start()
        backend.fail_all("The server is stopping: lost rank 1")
        reader.join(10)
        (finished, end) = got
        assert isinstance(finished, Finished) and end is END
        assert (finished.stop_reason, finished.error) == ("error", "The server is stopping: lost rank 1")
        release.set()
    finally:
        backend.shutdown()


def test_fail_all_returns_soon_after_a_slow_reader_takes_its_events(worker, loop):
    """A request that takes its events half a second late: fail_all notices within its 50 ms poll and
    returns half a second (the last bytes) after that, long before its bound."""
    fn, entered, release = blocker()
    job = worker.submit(fn, loop)
    assert entered.wait(10)
    got: list = []
    reader = threading.Thread(target=lambda: (time.sleep(0.5), got.extend(events(job, loop))), daemon=True)
    reader.start()
    t0 = time.monotonic()
    worker.fail_all("lost", timeout=3.0)
    took = time.monotonic() - t0
    reader.join(10)
    assert got == ["lost", END]
    assert 1.0 <= took < 1.45
    release.set()


# ----------------------------------------------------------------------------- the batched worker (max_batch > 1)


class FakeRunner:
    """Stands in for `BatchRunner`: a started job's program runs `steps` steps, then ends (with the error
    its program was, if it is an exception)."""

    most = 0  # the most jobs any FakeRunner held at once

    def __init__(self, steps: int = 3) -> None:
        self.left: dict = {}
        self.steps = steps

    @property
    def busy(self) -> bool:
        return bool(self.left)

    def start(self, key, prog) -> None:
        self.left[key] = (self.steps, prog)
        FakeRunner.most = max(FakeRunner.most, len(self.left))

    def step(self) -> list:
        if self.left:
            time.sleep(0.005)
        out = []
        for k, (n, prog) in list(self.left.items()):
            if n <= 1:
                del self.left[k]
                out.append((k, prog if isinstance(prog, Exception) else None))
            else:
                self.left[k] = (n - 1, prog)
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def batched():
    w = GenerationWorker(max_queue=4, max_batch=2, runner=FakeRunner)
    w.start()
    yield w
    w.stop(timeout=5)


def test_a_batched_worker_runs_the_last_function_on_its_thread_then_ends(loop):
    w = GenerationWorker(max_batch=2, runner=FakeRunner)
    w.start()
    job = w.submit(lambda emit, cancelled: "program", loop)
    assert events(job, loop) == [END]
    ran: list[str] = []
    assert w.stop(timeout=5, last=lambda: ran.append(threading.current_thread().name)) is True
    assert ran == [WORKER_THREAD]


def test_a_batched_worker_sleeps_while_idle(batched, loop):
    """Nothing to run: the worker waits on its queue, it does not poll (a spinning thread would take a core)."""
    job = batched.submit(lambda emit, cancelled: "program", loop)
    assert events(job, loop) == [END]
    thread = next(t for t in threading.enumerate() if t.name == WORKER_THREAD)
    clock = time.pthread_getcpuclockid(thread.ident)
    c0 = time.clock_gettime(clock)
    time.sleep(0.5)
    assert time.clock_gettime(clock) - c0 < 0.05


def test_a_batched_worker_runs_at_most_max_batch_jobs_at_once(batched, loop):
    FakeRunner.most = 0
    jobs = [batched.submit(lambda emit, cancelled: "program", loop) for _ in range(4)]
    assert all(events(j, loop) == [END] for j in jobs)
    assert FakeRunner.most == 2


def test_a_batched_job_cancelled_before_it_starts_ends_and_the_worker_goes_on(batched, loop):
    fn, entered, release = blocker()
    holding = [batched.submit(lambda emit, cancelled: (entered.set(), release.wait(10), "program")[2], loop)]
    assert entered.wait(10)
    gone = batched.submit(lambda emit, cancelled: "never started", loop)
    gone.cancel()
    release.set()
    later = batched.submit(lambda emit, cancelled: "program", loop)
    assert events(gone, loop) == [END]
    assert events(holding[0], loop) == [END] and events(later, loop) == [END]


def test_a_batched_job_whose_program_cannot_start_gets_the_error_then_end(batched, loop):
    boom = RuntimeError("no program")

    def fails(emit, cancelled):
        raise boom

    bad = batched.submit(fails, loop)
    assert events(bad, loop) == [boom, END]
    ok = batched.submit(lambda emit, cancelled: "program", loop)
    assert events(ok, loop) == [END]  # the worker went on


class BrokenRunner(FakeRunner):
    """A runner whose step raises once its jobs hold `program: "break"`; counts the runners made and closed."""

    made = closed = 0

    def __init__(self) -> None:
        super().__init__(steps=3)
        BrokenRunner.made += 1

    def step(self) -> list:
        if any(prog == "break" for _, prog in self.left.values()):
            raise RuntimeError("the runner broke")
        return super().step()

    def close(self) -> None:
        BrokenRunner.closed += 1


def test_a_runner_that_fails_ends_its_jobs_with_the_error_and_a_fresh_one_goes_on(loop):
    """A bug in the runner's step leaves its state unknown: every job it held gets the error, then END; it
    is closed and a new runner serves the next jobs."""
    BrokenRunner.made = BrokenRunner.closed = 0
    w = GenerationWorker(max_queue=4, max_batch=2, runner=BrokenRunner)
    w.start()
    try:
        fn, entered, release = blocker()
        held = w.submit(lambda emit, cancelled: (entered.set(), release.wait(10), "program")[2], loop)
        assert entered.wait(10)
        breaking = w.submit(lambda emit, cancelled: "break", loop)
        release.set()
        a, b = events(held, loop), events(breaking, loop)
        assert isinstance(a[0], RuntimeError) and str(a[0]) == "the runner broke"
        assert a == b == [a[0], END]
        assert (BrokenRunner.made, BrokenRunner.closed) == (2, 1)
        assert events(w.submit(lambda emit, cancelled: "program", loop), loop) == [END]
    finally:
        w.stop(timeout=5)
    assert BrokenRunner.closed == 2


@pytest.mark.parametrize("bad", [0, -3])
def test_a_batch_of_no_places_or_without_a_runner_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match=rf"^max_batch must be at least 1, got {bad}$"):
        GenerationWorker(max_batch=bad)
    with pytest.raises(ValueError, match=r"^max_batch > 1 needs a runner$"):
        GenerationWorker(max_batch=2)
    assert GenerationWorker(max_batch=1).max_batch == 1
