"""The distributed watchdog on its own (no MLX, no second process for most): a closed peer socket is
reported, an error end waits for a report already under way, and the last line reaches the real stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

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
