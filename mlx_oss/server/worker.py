"""One generation at a time on one thread, fed by a bounded queue.

MLX streams belong to the thread that made them and the engine holds one KV cache, so every
generation runs on the single worker thread, in arrival order. A job hands its events to the
asyncio side through `loop.call_soon_threadsafe`; cancelling a job (client gone, server stopping)
sets its event, which the engine checks between decode steps. A full queue is refused at once
(`QueueFull`, answered 429 with Retry-After) instead of making clients wait without bound.
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

    def __init__(self, max_queue: int = 16) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.max_queue = max_queue
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
        return self._running is not None

    def cancel_all(self) -> None:
        """Cancel the running job and every waiting one (server shutdown)."""
        with self._lock:
            jobs = list(self._waiting) + ([self._running] if self._running else [])
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
            jobs = ([self._running] if self._running else []) + list(self._waiting)
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
            self._serve()
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
                if job.cleanup is not None:
                    try:
                        job.cleanup()
                    except Exception:  # a cleanup that fails must not stop the worker
                        pass
                with self._lock:
                    self._running = None
                job.emit(END)
