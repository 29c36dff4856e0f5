"""One generation at a time on one thread, fed by a bounded queue.

MLX streams belong to the thread that made them and the engine holds one KV cache, so every
generation runs on the single worker thread, in arrival order. A job hands its events to the
asyncio side through `loop.call_soon_threadsafe`; cancelling a job (client gone, server stopping)
sets its event, which the engine checks between decode steps. A full queue is refused at once
(`QueueFull`, answered 429 with Retry-After) instead of making clients wait without bound.

With `max_batch` > 1 (`mlx-oss serve --max-batch N`) the same thread runs up to N jobs at once: a job's
`fn(emit, cancelled)` then returns its generation program, which a runner made on this thread
(`runner()`, a `generation.BatchRunner`) advances one batched step at a time; a job joins as soon as a
place is free, and `max_queue` counts the jobs waiting beyond the N running.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Callable

__all__ = ["END", "GenerationWorker", "Job", "QueueFull"]

END = object()  # the last item of every job's event queue

JobFn = Callable[[Callable[[Any], None], threading.Event], None]


class _Last:
    """The item that ends the worker's queue; `fn` runs on the worker thread first."""

    def __init__(self, fn: Callable[[], None] | None) -> None:
        self.fn = fn


class QueueFull(Exception):
    """The queue already holds `max_queue` waiting requests."""


class Job:
    """A queued generation: `fn(emit, cancelled)` runs on the worker; `events` receives what it emits,
    then `END` (or the exception it raised, then `END`)."""

    def __init__(self, fn: JobFn, loop: asyncio.AbstractEventLoop, cleanup: Callable[[], None] | None = None) -> None:
        self.fn = fn
        self.loop = loop
        self.cleanup = cleanup  # run on the worker after the job, even one cancelled before it started
        self.cancelled = threading.Event()
        self.started = threading.Event()
        self.events: asyncio.Queue = asyncio.Queue()

    def emit(self, item: Any) -> None:
        """Thread-safe: queue an item for the asyncio side (dropped if the loop is closed)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:
            pass

    def cancel(self) -> None:
        self.cancelled.set()


class GenerationWorker:
    """The thread that runs jobs one after another."""

    def __init__(self, max_queue: int = 16, max_batch: int = 1, runner: Callable[[], Any] | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_batch > 1 and runner is None:
            raise ValueError("max_batch > 1 needs a runner")
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._runner = runner
        self._batch: list[Job] = []  # the jobs running together (max_batch > 1)
        self._queue: queue.Queue[Job | _Last] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._running: Job | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mlx-oss-generation", daemon=True)
            self._thread.start()

    def submit(self, fn: JobFn, loop: asyncio.AbstractEventLoop, cleanup: Callable[[], None] | None = None) -> Job:
        """Queue a job; raises QueueFull when `max_queue` jobs are already waiting."""
        job = Job(fn, loop, cleanup)
        with self._lock:
            waiting = self._live()
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} requests are already waiting")
            self._waiting.append(job)
        self._queue.put(job)
        return job

    def _live(self) -> int:
        """Waiting jobs not cancelled (a client that left keeps no place in the queue; its job stays
        only until the worker runs its cleanup). Call with the lock held."""
        return sum(not j.cancelled.is_set() for j in self._waiting)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._live()

    @property
    def busy(self) -> bool:
        return self._running is not None or bool(self._batch)

    @property
    def running(self) -> int:
        """Jobs running now (at most `max_batch`)."""
        with self._lock:
            return len(self._batch) + (self._running is not None)

    def cancel_all(self) -> None:
        """Cancel the running job and every waiting one (server shutdown)."""
        with self._lock:
            jobs = list(self._waiting) + ([self._running] if self._running else []) + list(self._batch)
        for j in jobs:
            j.cancel()

    def stop(self, timeout: float = 30.0, last: Callable[[], None] | None = None) -> bool:
        """Cancel everything and end the thread, running `last()` on it first (e.g. telling the
        other ranks of a group to stop, from the thread that ran their engines). -> False if the
        thread did not end within `timeout` (a generation stuck in a step)."""
        self.cancel_all()
        if self._thread is None:
            return True
        self._queue.put(_Last(last))
        self._thread.join(timeout)
        ended = not self._thread.is_alive()
        self._thread = None
        return ended

    def fail_all(self, error: Any, timeout: float = 3.0) -> None:
        """From any thread, when the generations can no longer finish (a rank of the group was lost):
        the running and waiting jobs end now with `error` then END; waits up to `timeout` for their
        requests to take the events (the caller is about to end the process)."""
        with self._lock:
            jobs = ([self._running] if self._running else []) + list(self._batch) + list(self._waiting)
        for j in jobs:
            j.cancel()
            j.emit(error)
            j.emit(END)
        if not jobs:
            return
        deadline = time.monotonic() + timeout
        time.sleep(0.2)  # the events land on the loop's side
        while any(j.events.qsize() for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))  # the last bytes onto the sockets

    def _loop(self) -> None:
        try:
            self._serve() if self.max_batch == 1 else self._serve_batch()
        finally:
            # MLX (0.32+) aborts the process at exit unless a thread that ran it frees its streams.
            import mlx.core as mx

            if hasattr(mx, "clear_streams"):
                mx.clear_streams()

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if isinstance(job, _Last):
                if job.fn is not None:
                    job.fn()
                return
            with self._lock:
                self._waiting.remove(job)
                self._running = job
            job.started.set()
            try:
                if not job.cancelled.is_set():
                    job.fn(job.emit, job.cancelled)
            except BaseException as e:  # reported to the request; the worker goes on
                job.emit(e)
            finally:
                _cleanup(job)
                with self._lock:
                    self._running = None
                job.emit(END)

    def _end(self, job: Job) -> None:
        _cleanup(job)
        with self._lock:
            if job in self._batch:
                self._batch.remove(job)
        job.emit(END)

    def _serve_batch(self) -> None:
        runner = self._runner()  # made here: MLX streams belong to this thread
        last: _Last | None = None
        try:
            while True:
                while last is None and len(self._batch) < self.max_batch:
                    try:  # wait for work only when nothing runs
                        item = self._queue.get(block=not runner.busy)
                    except queue.Empty:
                        break
                    if isinstance(item, _Last):
                        last = item
                        break
                    with self._lock:
                        self._waiting.remove(item)
                        self._batch.append(item)
                    item.started.set()
                    if item.cancelled.is_set():
                        self._end(item)
                        continue
                    try:
                        runner.start(item, item.fn(item.emit, item.cancelled))
                    except BaseException as e:  # reported to the request; the worker goes on
                        item.emit(e)
                        self._end(item)
                if last is not None and not runner.busy:
                    if last.fn is not None:
                        last.fn()
                    return
                try:
                    ended = runner.step()
                except BaseException as e:  # a bug in the runner: its jobs end with it, a fresh runner goes on
                    ended = [(job, e) for job in list(self._batch)]
                    runner.close()
                    runner = self._runner()
                for job, error in ended:
                    if error is not None:
                        job.emit(error)
                    self._end(job)
        finally:
            runner.close()


def _cleanup(job: Job) -> None:
    """The job's cleanup, if any; one that fails must not stop the worker."""
    if job.cleanup is not None:
        try:
            job.cleanup()
        except Exception:
            pass
