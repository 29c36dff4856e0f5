"""The distributed watchdog on its own (no MLX, no second process for most): a closed peer socket is
reported, an error end waits for a report already under way, and the last line reaches the real stderr."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from mlx_oss.distributed import watchdog as wd


def _dog(fail=None) -> tuple[wd.Watchdog, socket.socket]:
    """Rank 0 of two, its peer connection one end of a socketpair (-> the dog, the peer's end)."""
    ours, theirs = socket.socketpair()
    dog = wd.Watchdog(0, 2, ("127.0.0.1", 0), timeout=30, fail=fail)
    dog._peers[1] = ours
    return dog, theirs


def test_a_peer_whose_socket_closes_is_reported_by_rank():
    seen: list[str] = []
    got = threading.Event()
    dog, theirs = _dog(fail=lambda m: (seen.append(m), got.set()))
    threading.Thread(target=dog._listen, args=(1, dog._peers[1]), daemon=True).start()
    theirs.sendall(wd.BEAT)
    theirs.close()
    assert got.wait(10)
    assert seen == ["lost rank 1 (its process exited or the link dropped); stopping"]


def test_an_error_end_waits_for_the_report_under_way(monkeypatch):
    """The race behind a silent exit 1: the main thread's error end must not cut the watchdog's
    report short (closing set between its check and its line), it waits until the process ends."""
    lines: list[str] = []
    exiting = threading.Event()
    release = threading.Event()

    def fake_exit(code):  # the process "ends" only when the test says so
        lines.append(f"exit {code}")
        exiting.set()
        release.wait(10)

    monkeypatch.setattr(wd, "_last_line", lines.append)
    monkeypatch.setattr(wd.os, "_exit", fake_exit)
    dog, theirs = _dog()
    reporter = threading.Thread(target=dog._exit, args=("lost rank 1 (its process exited or the link dropped); stopping",))
    reporter.start()
    assert exiting.wait(10)
    aborting = threading.Thread(target=dog.abort, kwargs={"grace": 5.0})
    aborting.start()
    aborting.join(0.5)
    assert aborting.is_alive() and not dog._closing.is_set()  # held until the report has ended the process
    release.set()
    reporter.join(10)
    aborting.join(10)
    assert not aborting.is_alive() and dog._closing.is_set()
    assert lines == ["mlx-oss: error: rank 0: lost rank 1 (its process exited or the link dropped); stopping", "exit 1"]
    theirs.close()


def test_after_an_error_end_a_late_loss_says_nothing(monkeypatch):
    calls: list = []
    monkeypatch.setattr(wd, "_last_line", calls.append)
    monkeypatch.setattr(wd.os, "_exit", calls.append)
    dog, theirs = _dog()
    dog.abort(grace=0.01)  # nothing was lost: the grace runs out and the error end goes on
    assert dog._closing.is_set() and dog._peers[1].fileno() == -1
    dog._exit("lost rank 1")
    assert calls == []  # this rank is ending with its own error already
    theirs.close()


@pytest.mark.parametrize("grace", [0.0, 30.0])
def test_a_report_during_the_grace_ends_it_at_once(monkeypatch, grace):
    """abort(grace) returns as soon as a report has begun (and ended), not after the whole grace."""
    monkeypatch.setattr(wd, "_last_line", lambda text: None)
    monkeypatch.setattr(wd.os, "_exit", lambda code: None)
    dog, theirs = _dog()
    timer = threading.Timer(0.2, dog._exit, args=("lost rank 1",))
    timer.start()
    done = threading.Event()
    threading.Thread(target=lambda: (dog.abort(grace=grace), done.set()), daemon=True).start()
    assert done.wait(20)
    timer.join()
    theirs.close()


def test_the_last_line_goes_to_the_real_stderr_and_later_writes_do_not():
    code = (
        "import os, sys\n"
        "from mlx_oss.distributed.watchdog import _last_line\n"
        "os.write(2, b'[ring] Socket 3 was')\n"  # a library's line, cut off mid-way
        "_last_line('mlx-oss: error: rank 0: lost rank 1')\n"
        "os.write(2, b' closed by the peer\\n')\n"  # the rest of it, after the report
        "print('more', file=sys.stderr, flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stderr == "[ring] Socket 3 was\nmlx-oss: error: rank 0: lost rank 1\n"


# ----------------------------------------------------------------------------- real connections
#
# Timeouts are checked with loose bounds only: a report must come within 3x its limit (a 10x error
# fails, a loaded machine does not) and never before the limit has passed since the last sign of life
# (being late can only make that later). T is the peer timeout these tests use.

T = 2.0


class Reports:
    """A watchdog's `fail`: records each message with the time it came."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str]] = []
        self.got = threading.Event()

    def __call__(self, msg: str) -> None:
        self.items.append((time.monotonic(), msg))
        self.got.set()

    @property
    def messages(self) -> list[str]:
        return [m for _, m in self.items]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, deadline_s: float = 30.0) -> socket.socket:
    """A raw client of rank 0's control port (it may not listen yet)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def _beats(conn: socket.socket, n: int, within: float) -> bytes:
    """Read from `conn` until `n` heartbeats came (or `within` seconds passed); -> the bytes read."""
    got = b""
    end = time.monotonic() + within
    while got.count(wd.BEAT) < n and time.monotonic() < end:
        conn.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = conn.recv(64)
        except socket.timeout:
            break
        if not data:
            break
        got += data
    return got


def _rank0(port: int, size: int = 2, **kw) -> tuple[wd.Watchdog, Reports, threading.Thread]:
    """Rank 0 under test, started in a thread (start() returns once every peer connected)."""
    rep = Reports()
    kw = {"timeout": T, "connect_timeout": 30, "interval": 0.1, **kw}
    dog = wd.Watchdog(0, size, ("127.0.0.1", port), fail=rep, **kw)
    t = threading.Thread(target=dog.start, daemon=True)
    t.start()
    return dog, rep, t


def test_rank0_reports_a_peer_that_goes_silent_with_its_socket_open():
    """The hang MLX never reports: the peer's connection stays open but nothing comes any more."""
    port = _free_port()
    dog, rep, starting = _rank0(port)
    peer = _connect(port)
    peer.sendall(b"1       ")
    starting.join(30)
    assert not starting.is_alive() and sorted(dog._peers) == [1]
    healthy_until = time.monotonic() + 1.5 * T  # beating more often than T: never reported
    while time.monotonic() < healthy_until:
        peer.sendall(wd.BEAT)
        time.sleep(0.2)
    assert rep.items == []
    silent = time.monotonic()
    assert rep.got.wait(3 * T), "a silent peer was not reported within 3x the peer timeout"
    at, msg = rep.items[0]
    assert msg == "rank 1 stopped responding (no heartbeat for 2 s); stopping"
    assert 0.9 * T <= at - silent <= 3 * T
    assert _beats(peer, 1, 3 * T).count(wd.BEAT) >= 1  # rank 0 beats to it meanwhile
    assert rep.messages == [msg]  # reported once
    dog.close()
    peer.close()


def test_rank1_reports_a_rank0_that_accepts_and_never_answers():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    rep = Reports()
    started = time.monotonic()
    dog = wd.Watchdog(1, 2, ("127.0.0.1", port), timeout=T, connect_timeout=30, interval=0.1, fail=rep).start()
    conn, _ = srv.accept()
    conn.settimeout(10)
    assert conn.recv(8) == b"1       "  # the handshake: its rank, padded to 8 bytes
    got = _beats(conn, 3, 3 * T)
    assert got == wd.BEAT * len(got) and len(got) >= 3  # it beats, nothing else
    assert rep.got.wait(3 * T), "a silent rank 0 was not reported within 3x the peer timeout"
    at, msg = rep.items[0]
    assert msg == "rank 0 stopped responding (no heartbeat for 2 s); stopping"
    assert 0.9 * T <= at - started
    dog.close()
    conn.close()
    srv.close()


PEER = (
    "import sys, time\n"
    "from mlx_oss.distributed.watchdog import Watchdog\n"
    "Watchdog(1, 2, ('127.0.0.1', int(sys.argv[1])), timeout=600, connect_timeout=60, interval=0.1).start()\n"
    "print('up', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_stopped_peer_process_is_reported_within_3x_the_timeout():
    """A real rank 1 in its own process, frozen with SIGSTOP: its sockets stay open, its heartbeat stops."""
    port = _free_port()
    peer = subprocess.Popen([sys.executable, "-c", PEER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        dog, rep, starting = _rank0(port, connect_timeout=60)
        starting.join(60)
        assert peer.stdout.readline() == "up\n"
        time.sleep(1.5 * T)  # its heartbeat keeps it alive
        assert rep.items == []
        os.kill(peer.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        assert rep.got.wait(3 * T), "a stopped peer was not reported within 3x the peer timeout"
        at, msg = rep.items[0]
        assert msg == "rank 1 stopped responding (no heartbeat for 2 s); stopping"
        assert 0.5 * T <= at - stopped <= 3 * T
        dog.close()
    finally:
        os.kill(peer.pid, signal.SIGCONT)
        peer.kill()
        peer.wait(30)
        peer.stdout.close()


def test_a_peer_that_said_goodbye_must_be_followed_within_the_timeout():
    """BYE is a normal end: the listener keeps quiet while this rank finishes too, but a rank still
    waiting `timeout` after its peer ended is stuck and is reported."""
    seen = Reports()
    dog, theirs = _dog(fail=seen)
    dog.timeout = T
    listener = threading.Thread(target=dog._listen, args=(1, dog._peers[1]), daemon=True)
    listener.start()
    theirs.sendall(wd.BEAT + wd.BYE)
    bye, cpu = time.monotonic(), time.process_time()
    theirs.close()
    assert seen.got.wait(3 * T)
    at, msg = seen.items[0]
    assert msg == "rank 1 ended the session 2 s ago but this rank is still waiting"
    assert 0.9 * T <= at - bye <= 3 * T and seen.messages == [msg]
    assert time.process_time() - cpu < 0.5 * T  # it waited, it did not spin on the closed socket
    listener.join(3 * T)
    assert not listener.is_alive()


def test_a_goodbye_followed_by_our_own_end_reports_nothing():
    seen = Reports()
    dog, theirs = _dog(fail=seen)
    dog.timeout = T
    listener = threading.Thread(target=dog._listen, args=(1, dog._peers[1]), daemon=True)
    listener.start()
    theirs.sendall(wd.BYE)
    theirs.close()
    time.sleep(0.5)
    dog.close()  # this rank ends too, well within the timeout
    listener.join(3 * T)
    assert not listener.is_alive() and seen.items == []


def test_close_says_goodbye_and_abort_does_not():
    for end, expect in (("close", wd.BYE), ("abort", b"")):
        dog, theirs = _dog(fail=Reports())
        getattr(dog, end)()
        theirs.settimeout(10)
        assert theirs.recv(64) == expect
        assert theirs.recv(64) == b""  # and the connection is closed
        assert dog._closing.is_set()
        getattr(dog, end)()  # a second end is harmless
        theirs.close()


def test_after_a_normal_end_a_closing_peer_is_not_reported():
    seen = Reports()
    dog, theirs = _dog(fail=seen)
    listener = threading.Thread(target=dog._listen, args=(1, dog._peers[1]), daemon=True)
    listener.start()
    theirs.sendall(wd.BEAT)
    time.sleep(0.3)  # listening
    dog.close()
    theirs.close()
    listener.join(10)
    assert not listener.is_alive() and seen.items == []


def test_rank0_accepts_only_each_expected_rank_once():
    """Handshakes that name no rank of the group, rank 0 itself or a rank already connected are
    closed; the group forms with the real ranks."""
    port = _free_port()
    dog, rep, starting = _rank0(port, size=3)
    rejected = []
    silent = _connect(port)
    silent.shutdown(socket.SHUT_WR)  # says nothing at all, and first
    rejected.append(silent)
    time.sleep(0.2)
    one = _connect(port)
    one.sendall(b"1       " + wd.BEAT)  # its first heartbeat right behind its rank: read as a beat, not as its rank
    for hello in (b"1       ", b"0       ", b"3       ", b"-1      ", b"abc     "):
        s = _connect(port)
        s.sendall(hello)
        rejected.append(s)
    two = _connect(port)
    two.sendall(b"2")  # no padding needed
    starting.join(30)
    assert not starting.is_alive() and sorted(dog._peers) == [1, 2] and rep.items == []
    for s in rejected:
        s.settimeout(10)
        assert s.recv(8) == b"", "a bad handshake was not closed"
    for s in (one, two):
        assert _beats(s, 2, 3 * T).count(wd.BEAT) >= 2
    dog.close()
    for s in (one, two, *rejected):
        s.close()


def test_a_rank_that_never_connects_is_named_within_3x_the_connect_timeout():
    port = _free_port()
    began = time.monotonic()
    dog, rep, starting = _rank0(port, size=3, connect_timeout=1)
    one = _connect(port)
    one.sendall(b"1       ")
    assert rep.got.wait(3), "a missing rank was not reported within 3x the connect timeout"
    at, msg = rep.items[0]
    assert msg == (f"rank(s) 2 did not connect to 127.0.0.1:{port} within 1 s "
                   "(not started, or that address is not reachable from them)")  # fmt: skip
    assert 0.9 <= at - began <= 3
    starting.join(10)
    dog.close()
    one.close()


def test_a_connection_that_never_says_its_rank_does_not_hold_rank0_past_the_deadline():
    port = _free_port()
    began = time.monotonic()
    dog, rep, starting = _rank0(port, connect_timeout=1)
    mute = _connect(port)  # connects, then says nothing (its socket open)
    assert rep.got.wait(3), "a mute connection held rank 0 past 3x the connect timeout"
    at, msg = rep.items[0]
    assert msg.startswith(f"rank(s) 1 did not connect to 127.0.0.1:{port} within 1 s")
    assert at - began <= 3
    starting.join(10)
    mute.settimeout(10)
    assert mute.recv(8) == b""  # dropped
    mute.close()


def test_every_missing_rank_is_named():
    port = _free_port()
    dog, rep, starting = _rank0(port, size=4, connect_timeout=1)
    assert rep.got.wait(3)
    assert rep.messages[0].startswith(f"rank(s) 1, 2, 3 did not connect to 127.0.0.1:{port} within 1 s")
    starting.join(10)


def test_rank0_that_cannot_listen_says_where():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    dog, rep, starting = _rank0(port, connect_timeout=1)
    starting.join(10)
    assert rep.messages == [f"cannot listen on 127.0.0.1:{port} for the other ranks (Address already in use)"]
    busy.close()


def test_a_rank_that_cannot_reach_rank0_says_so_within_3x_the_connect_timeout():
    port = _free_port()  # nothing listens there
    rep = Reports()
    began = time.monotonic()
    wd.Watchdog(1, 2, ("127.0.0.1", port), connect_timeout=1, fail=rep).start()
    at, msg = rep.items[0]  # start() returns after the report
    assert msg == f"cannot reach rank 0 at 127.0.0.1:{port} within 1 s (Connection refused)"
    assert 0.9 <= at - began <= 3


def test_a_single_rank_watches_nothing():
    port = _free_port()
    dog = wd.Watchdog(0, 1, ("127.0.0.1", port), connect_timeout=1, fail=Reports())
    assert dog.start() is dog and dog._peers == {}
    with socket.socket() as s:  # it did not even listen
        s.bind(("127.0.0.1", port))


def test_guard_reports_a_step_that_does_not_finish_and_only_then():
    rep = Reports()
    dog = wd.Watchdog(0, 2, ("127.0.0.1", 0), connect_timeout=1, fail=rep)
    with dog.guard("quick step", seconds=0.5):
        pass
    began = time.monotonic()
    with dog.guard("mx.distributed.init"):  # default: the connect timeout
        assert rep.got.wait(3), "a guard did not fire within 3x its limit"
    at, msg = rep.items[0]
    assert msg == "mx.distributed.init did not finish within 1 s"
    assert 0.9 <= at - began <= 3
    time.sleep(0.6)  # well past the quick step's deadline: it was cancelled
    assert rep.messages == [msg]
    rep.got.clear()
    with dog.guard("slow step", seconds=2):
        assert rep.got.wait(6)
    assert rep.messages == [msg, "slow step did not finish within 2 s"]


def test_timeouts_default_to_the_documented_values_and_the_environment(monkeypatch):
    """docs/DISTRIBUTED.md: heartbeat every 0.5 s, MLX_OSS_PEER_TIMEOUT (15 s), MLX_OSS_CONNECT_TIMEOUT (60 s)."""
    monkeypatch.delenv("MLX_OSS_PEER_TIMEOUT", raising=False)
    monkeypatch.delenv("MLX_OSS_CONNECT_TIMEOUT", raising=False)
    dog = wd.Watchdog(0, 2, ("127.0.0.1", 0))
    assert (dog.timeout, dog.connect_timeout, dog.interval) == (15.0, 60.0, 0.5)
    monkeypatch.setenv("MLX_OSS_PEER_TIMEOUT", "2.5")
    monkeypatch.setenv("MLX_OSS_CONNECT_TIMEOUT", "7")
    dog = wd.Watchdog(0, 2, ("127.0.0.1", 0))
    assert (dog.timeout, dog.connect_timeout) == (2.5, 7.0)
    assert wd.Watchdog(0, 2, ("127.0.0.1", 0), timeout=3, connect_timeout=4).timeout == 3  # an argument wins
    assert wd.Watchdog(0, 2, ("127.0.0.1", 0), timeout=3, connect_timeout=4).connect_timeout == 4
    monkeypatch.setenv("MLX_OSS_PEER_TIMEOUT", "soon")
    monkeypatch.setenv("MLX_OSS_CONNECT_TIMEOUT", "")
    dog = wd.Watchdog(0, 2, ("127.0.0.1", 0))
    assert (dog.timeout, dog.connect_timeout) == (15.0, 60.0)  # unreadable or empty: the default


def test_last_words_come_before_the_line_and_a_failing_one_does_not_stop_them(monkeypatch):
    order: list[str] = []
    monkeypatch.setattr(wd, "_last_line", lambda text: order.append(f"line: {text}"))
    monkeypatch.setattr(wd.os, "_exit", lambda code: order.append(f"exit {code}"))
    dog, theirs = _dog()

    def broken(msg):
        order.append(f"broken: {msg}")
        raise RuntimeError("the front end is gone")

    dog.on_failure(broken)
    dog.on_failure(lambda msg: order.append(f"server: {msg}"))
    dog._exit("lost rank 1")
    assert order == ["broken: lost rank 1", "server: lost rank 1", "line: mlx-oss: error: rank 0: lost rank 1", "exit 1"]
    assert dog._failing.is_set()
    theirs.close()


def test_a_rank0_that_never_accepts_is_reported_within_3x_the_connect_timeout():
    """Rank 0's host takes no more connections (its accept queue is full: a hung rank 0): each
    attempt to reach it gives up, so the report comes in time instead of after the kernel's minutes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)  # fills the queue; never accepted
    rep = Reports()
    began = time.monotonic()
    threading.Thread(target=wd.Watchdog(1, 2, ("127.0.0.1", port), connect_timeout=2, fail=rep).start, daemon=True).start()
    assert rep.got.wait(6), "an unreachable rank 0 was not reported within 3x the connect timeout"
    at, msg = rep.items[0]
    assert msg.startswith(f"cannot reach rank 0 at 127.0.0.1:{port} within 2 s (") and at - began <= 6  # (timed out) on Linux
    filler.close()
    srv.close()


def test_rank0_listens_on_an_ipv6_address():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    rep = Reports()
    dog = wd.Watchdog(0, 2, ("::1", port), timeout=T, connect_timeout=30, interval=0.1, fail=rep)
    starting = threading.Thread(target=dog.start, daemon=True)
    starting.start()
    end = time.monotonic() + 30
    while True:
        try:
            peer = socket.create_connection(("::1", port), timeout=5)
            break
        except OSError:
            assert time.monotonic() < end and not rep.items, rep.messages
            time.sleep(0.05)
    peer.sendall(b"1       ")
    starting.join(30)
    assert sorted(dog._peers) == [1] and rep.items == []
    assert _beats(peer, 1, 3 * T).count(wd.BEAT) >= 1
    dog.close()
    peer.close()


class WaitRecorder:
    """Stands in for the 'a report is under way' event: records how long abort() waited on it."""

    def __init__(self) -> None:
        self.waits: list = []

    def wait(self, timeout=None) -> bool:
        self.waits.append(timeout)
        return False


def test_an_error_end_waits_only_for_the_grace_it_is_given():
    for grace, waits in ((None, []), (0.0, []), (0.5, [0.5]), (2.0, [2.0])):
        dog, theirs = _dog(fail=Reports())
        dog._failing = WaitRecorder()
        dog.abort() if grace is None else dog.abort(grace=grace)
        assert dog._failing.waits == waits, grace  # no grace: the connections close at once
        assert dog._closing.is_set()
        theirs.close()


def test_the_last_line_in_this_process():
    """_last_line as the watchdog calls it (in-process): the line reaches what fd 2 was, on a fresh line,
    and what is written to fd 2 afterwards does not."""
    saved = os.dup(2)
    r, w = os.pipe()
    opened: list[int] = []
    real_dup = os.dup
    try:
        os.dup2(w, 2)
        os.close(w)
        os.write(2, b"[ring] Socket 3 was")
        wd.os.dup = lambda fd: opened.append(real_dup(fd)) or opened[-1]
        wd._last_line("mlx-oss: error: rank 0: lost rank 1")
        wd.os.dup = real_dup
        os.write(2, b" closed by the peer\n")
    finally:
        wd.os.dup = real_dup
        os.dup2(saved, 2)
        os.close(saved)
        for fd in opened:
            os.close(fd)
    os.set_blocking(r, False)
    try:
        got = os.read(r, 4096)
    finally:
        os.close(r)
    assert got == b"[ring] Socket 3 was\nmlx-oss: error: rank 0: lost rank 1\n"


def test_a_connection_reset_is_a_lost_peer():
    """A peer whose link drops hard (a reset, not a close) is lost at once, not silent for the timeout."""
    port = _free_port()
    dog, rep, starting = _rank0(port, timeout=30)
    peer = _connect(port)
    peer.sendall(b"1       ")
    starting.join(30)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # linger 0: the connection is reset
    assert rep.got.wait(10), "a reset connection was not reported"
    assert rep.messages == ["lost rank 1 (its process exited or the link dropped); stopping"]
    dog.close()


EXITING = (
    "import sys\n"
    "from mlx_oss.distributed.watchdog import Watchdog\n"
    "Watchdog(1, 2, ('127.0.0.1', int(sys.argv[1])), timeout=600, connect_timeout=60, interval=0.1).start()\n"
    "print('up', flush=True)\n"
    "sys.exit(3)\n"  # ends without close(): e.g. an error the front end did not catch
)


def test_the_watchdogs_threads_never_keep_a_process_alive():
    port = _free_port()
    peer = subprocess.Popen([sys.executable, "-c", EXITING, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        dog, rep, starting = _rank0(port, connect_timeout=60, timeout=600)
        starting.join(60)
        assert peer.stdout.readline() == "up\n"
        assert peer.wait(30) == 3  # not held by the heartbeat or the listener thread
        assert rep.got.wait(10) and rep.messages == ["lost rank 1 (its process exited or the link dropped); stopping"]
        dog.close()
    finally:
        peer.kill()
        peer.wait(30)
        peer.stdout.close()


def test_the_last_line_when_no_file_descriptor_is_left(monkeypatch):
    """Out of file descriptors (fd 2 cannot be duplicated): the line is written to fd 2 as it is."""
    saved = os.dup(2)
    r, w = os.pipe()

    def no_fd(fd):
        raise OSError(24, "Too many open files")

    try:
        os.dup2(w, 2)
        os.close(w)
        monkeypatch.setattr(wd.os, "dup", no_fd)
        wd._last_line("mlx-oss: error: rank 1: lost rank 0")
        monkeypatch.undo()
    finally:
        monkeypatch.undo()
        os.dup2(saved, 2)
        os.close(saved)
    with os.fdopen(r, "rb") as f:  # every write end is closed: read to the end
        assert f.read() == b"\nmlx-oss: error: rank 1: lost rank 0\n"
