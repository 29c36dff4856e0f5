"""Liveness of the other ranks, so a dead or unreachable peer ends a run in seconds instead of a hang.

MLX's ring backend reports a peer whose sockets closed, but a peer that hangs, sleeps or loses its
link leaves every rank blocked forever inside a collective, and `mx.distributed.init` waits forever
for a peer that never starts. So each rank also keeps one small TCP connection to rank 0 (the star:
rank 0 listens at `hosts.control_address`) carrying nothing but a heartbeat byte every `interval`
seconds. Model data never goes through it: tensors move only through `mx.distributed`.

A peer whose connection closes without saying goodbye, or whose heartbeat stops for `timeout`
seconds, makes this process print one line on stderr and exit with status 1 (`os._exit`: the main
thread may be blocked inside MLX, where no exception can reach it).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Callable

BEAT, BYE = b".", b"x"
EXIT_LOST_PEER = 1


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class Watchdog:
    def __init__(
        self,
        rank: int,
        size: int,
        address: tuple[str, int],
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        interval: float = 0.5,
        fail: Callable[[str], None] | None = None,
    ) -> None:
        self.rank, self.size, self.address = rank, size, address
        self.timeout = timeout or _env_float("MLX_OSS_PEER_TIMEOUT", 15.0)
        self.connect_timeout = connect_timeout or _env_float("MLX_OSS_CONNECT_TIMEOUT", 60.0)
        self.interval = interval
        self._fail = fail or self._exit
        self._last_words: list[Callable[[str], None]] = []
        self._peers: dict[int, socket.socket] = {}
        self._closing = threading.Event()
        self._failing = threading.Event()  # a peer was lost: the one-line error and the exit are under way
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- start

    def start(self) -> "Watchdog":
        """Connect to every peer (rank 0: accept them) or fail within `connect_timeout`."""
        if self.size < 2:
            return self
        deadline = time.monotonic() + self.connect_timeout
        if self.rank == 0:
            self._accept(deadline)
        else:
            self._connect(deadline)
        for r, s in self._peers.items():
            threading.Thread(target=self._listen, args=(r, s), daemon=True, name=f"watchdog-recv-{r}").start()
        threading.Thread(target=self._beat, daemon=True, name="watchdog-beat").start()
        return self

    def _accept(self, deadline: float) -> None:
        ip, port = self.address
        srv = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind((ip, port))
        except OSError as e:
            self._fail(f"cannot listen on {ip}:{port} for the other ranks ({e.strerror or e})")
            return
        srv.listen(self.size)
        try:
            while len(self._peers) < self.size - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(1, self.size)) - set(self._peers))
                    self._fail(
                        f"rank(s) {', '.join(map(str, missing))} did not connect to {ip}:{port} within "
                        f"{self.connect_timeout:.0f} s (not started, or that address is not reachable from them)"
                    )
                    return
                srv.settimeout(left)
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                conn.settimeout(self.connect_timeout)
                try:
                    r = int(conn.recv(8).decode().strip() or -1)
                except (OSError, ValueError):
                    conn.close()
                    continue
                if not 0 < r < self.size or r in self._peers:
                    conn.close()
                    continue
                self._peers[r] = conn
        finally:
            srv.close()

    def _connect(self, deadline: float) -> None:
        ip, port = self.address
        last = None
        while time.monotonic() < deadline:
            try:
                s = socket.create_connection((ip, port), timeout=2.0)
                s.sendall(f"{self.rank:<8d}".encode())
                self._peers[0] = s
                return
            except OSError as e:
                last = e
                time.sleep(0.2)
        self._fail(f"cannot reach rank 0 at {ip}:{port} within {self.connect_timeout:.0f} s ({getattr(last, 'strerror', None) or last})")

    # ---------------------------------------------------------------- running

    def _beat(self) -> None:
        while not self._closing.wait(self.interval):
            for r, s in list(self._peers.items()):
                try:
                    s.sendall(BEAT)
                except OSError:
                    pass  # the receiving side reports it

    def _listen(self, r: int, s: socket.socket) -> None:
        s.settimeout(self.timeout)
        bye_at = None
        while True:
            try:
                data = s.recv(64)
            except socket.timeout:
                data = None
            except OSError:
                data = b""
            if self._closing.is_set():
                return
            if bye_at is not None:
                # The peer finished normally; this rank should finish too, right after it.
                if time.monotonic() - bye_at > self.timeout:
                    self._fail(f"rank {r} ended the session {self.timeout:.0f} s ago but this rank is still waiting")
                    return
                if not data:
                    time.sleep(0.2)
                continue
            if data is None:
                self._fail(f"rank {r} stopped responding (no heartbeat for {self.timeout:.0f} s); stopping")
                return
            if not data:
                self._fail(f"lost rank {r} (its process exited or the link dropped); stopping")
                return
            if BYE in data:
                bye_at = time.monotonic()

    def close(self) -> None:
        """A normal end: tell the peers, stop watching."""
        if self._closing.is_set():
            return
        self._closing.set()
        for s in self._peers.values():
            try:
                s.sendall(BYE)
                s.close()
            except OSError:
                pass

    def abort(self, grace: float = 0.0) -> None:
        """An error end: close the connections without a goodbye, so the peers stop now.

        A lost peer often reaches this process twice at once: MLX raises in the main thread (`[ring]
        connection to a peer was lost`) while the watchdog sees the socket close. `grace` seconds let
        the watchdog name the lost rank first; and once it has begun its report, this waits for it
        (it ends the process) instead of silencing it half-way."""
        if grace > 0:
            self._failing.wait(grace)
        with self._lock:
            self._closing.set()
        for s in self._peers.values():
            try:
                s.close()
            except OSError:
                pass

    def on_failure(self, fn: Callable[[str], None]) -> None:
        """Run `fn(message)` (on the watchdog's thread, before the one-line error and the exit) when
        a peer is lost: a front end's last words, e.g. the server failing its in-flight requests or
        the TUI giving the terminal back. `fn` must bound its own wait; errors in it are ignored."""
        self._last_words.append(fn)

    def _exit(self, msg: str) -> None:
        self._failing.set()
        with self._lock:
            if self._closing.is_set():
                return
            for fn in self._last_words:
                try:
                    fn(msg)
                except Exception:  # noqa: BLE001 - exiting anyway
                    pass
            _last_line(f"mlx-oss: error: rank {self.rank}: {msg}")
            os._exit(EXIT_LOST_PEER)

    def guard(self, what: str, seconds: float | None = None) -> "Guard":
        """A deadline for one blocking step (e.g. `mx.distributed.init`, which never times out)."""
        return Guard(self, what, seconds or self.connect_timeout)


def _last_line(text: str) -> None:
    """`text` as the last line on stderr: MLX's ring threads may be writing `[ring] Socket N was closed
    by the peer` there right now (mid-line, byte by byte), so fd 2 goes to /dev/null first and the line
    starts on a fresh line of the real stderr."""
    data = f"\n{text}\n".encode()
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        real = os.dup(2)
    except OSError:
        os.write(2, data)
        return
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    except OSError:
        pass
    os.write(real, data)


class Guard:
    def __init__(self, dog: Watchdog, what: str, seconds: float) -> None:
        self._timer = threading.Timer(seconds, lambda: dog._fail(f"{what} did not finish within {seconds:.0f} s"))
        self._timer.daemon = True

    def __enter__(self) -> "Guard":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
