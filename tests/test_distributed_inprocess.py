"""The two-Mac group in one process: ranks as threads joined by an in-memory `mx.distributed` (a
barrier per collective), so every line of mlx_oss/distributed/ runs where pytest (and mutmut) see it.

The slow tests of test_distributed.py start real ranks over TCP; these check the same promises in
milliseconds: a 2-rank LeaderEngine + follower gives one Engine's logits and tokens, its states are
mirrored, the ranks stop together, and the helpers around a group (hostfiles, session broadcasts,
launch, cli) refuse bad input in one line. Not driven here: a real `mx.distributed.init` and ssh.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import threading
from argparse import Namespace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.config import ModelArgs
from mlx_oss.distributed import cli as dcli
from mlx_oss.distributed import engine as deng
from mlx_oss.distributed import launch
from mlx_oss.distributed import session as dsession
from mlx_oss.distributed.engine import (
    ATTACH, DETACH, EXIT, FORK, GENERATE, HEADER, PREFILL, RESET, Command, DistributedChat, DivergedError,
    Follower, LeaderEngine, MirroredState, end_followers, follow,
)  # fmt: skip
from mlx_oss.distributed.hosts import (
    DEFAULT_PORT, Host, HostfileError, control_address, read_hostfile, ring_addresses, ring_from_env,
)  # fmt: skip
from mlx_oss.distributed.layers import Comm
from mlx_oss.distributed.load import CheckpointError, load_sharded, manifest_digest
from mlx_oss.distributed.mirror import Mirror
from mlx_oss.distributed.plan import ShardError, ShardPlan
from mlx_oss.distributed.session import (
    PeerMismatch, Session, broadcast_ints, broadcast_ints_sum, broadcast_text, check_same_checkpoint, in_group,
    is_follower,
)  # fmt: skip
from mlx_oss.engine import Engine, EngineState
from mlx_oss.sampling import Sampler, SamplingConfig

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402  (the turns the slow 2-process test runs)

GREEDY = Sampler(SamplingConfig(temperature=0))
TOKENS = dist_worker.TOKENS


# ---------------------------------------------------------------------------------- the in-memory group


class _Exchange:
    """One collective at a time among `n` threads: each posts its value, all read all of them. A rank
    that returned (or failed) can join no more collectives: whoever waits for it fails at once."""

    def __init__(self, n: int, timeout: float = 20.0) -> None:
        self.n, self.timeout = n, timeout
        self.cond = threading.Condition()
        self.posted: dict = {}
        self.results: dict = {}
        self.round = 0
        self.gone: set = set()
        self.calls = 0

    def __call__(self, rank: int, value: np.ndarray, combine):
        with self.cond:
            r = self.round
            self.posted[rank] = value
            if len(self.posted) == self.n:
                self.results[r] = [self.posted[i] for i in range(self.n)]
                self.results.pop(r - 1, None)  # every rank has read it: none can be a round behind
                self.posted, self.round, self.calls = {}, r + 1, self.calls + 1
                self.cond.notify_all()
            else:
                self.cond.wait_for(lambda: self.round > r or self.gone, timeout=self.timeout)
                if self.round == r:
                    raise threading.BrokenBarrierError(f"rank {rank} waits for ranks {sorted(self.gone)} that left")
            slots = self.results[r]
        return combine(slots)

    def leave(self, rank: int) -> None:
        with self.cond:
            self.gone.add(rank)
            self.cond.notify_all()


class _Silent:
    """A transport for code that must not communicate: any collective fails the test."""

    calls = 0

    def __call__(self, rank, value, combine):
        raise AssertionError("a collective was sent")


class FakeGroup:
    def __init__(self, rank: int, size: int, exchange=None) -> None:
        self._rank, self._size, self.exchange = rank, size, exchange or _Silent()

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def _host(x: mx.array) -> tuple[str, np.ndarray]:
    """(MLX dtype, values) of one rank's part; bfloat16 travels as float32 (numpy has no bfloat16)."""
    return str(x.dtype), np.array(x.astype(mx.float32) if x.dtype == mx.bfloat16 else x)


def _device(dtype: str, v: np.ndarray) -> mx.array:
    return mx.array(v).astype(mx.bfloat16) if dtype == str(mx.bfloat16) else mx.array(v)


def _agree(parts):
    if len({(d, v.shape) for d, v in parts}) != 1:
        raise AssertionError(f"ranks disagree on a collective: {[(d, v.shape) for d, v in parts]}")
    return parts[0][0]


def _sum(parts):
    out = parts[0][1]
    for _, v in parts[1:]:
        out = out + v
    return _agree(parts), out


_real_all_sum, _real_all_gather = mx.distributed.all_sum, mx.distributed.all_gather


def _all_sum(x, *args, group=None, **kw):
    if not isinstance(group, FakeGroup):
        return _real_all_sum(x, *args, group=group, **kw)
    return _device(*group.exchange(group.rank(), _host(x), _sum))


def _all_gather(x, *args, group=None, **kw):
    if not isinstance(group, FakeGroup):
        return _real_all_gather(x, *args, group=group, **kw)
    return _device(*group.exchange(group.rank(), _host(x), lambda ps: (_agree(ps), np.concatenate([v for _, v in ps]))))


@pytest.fixture(autouse=True)
def _fake_collectives(monkeypatch):
    monkeypatch.setattr(mx.distributed, "all_sum", _all_sum)
    monkeypatch.setattr(mx.distributed, "all_gather", _all_gather)


def _comms(n: int) -> list[Comm]:
    ex = _Exchange(n)
    return [Comm(FakeGroup(r, n, ex)) for r in range(n)]


def _ranks(comms: list[Comm], *fns, **kw):
    """fns[r]() on its own thread as rank r of `comms`; -> their results, or the first real error (not
    the one of a rank left waiting in a collective for a rank that had failed)."""
    exchanges = {id(c.group.exchange): c.group.exchange for c in comms if isinstance(c.group.exchange, _Exchange)}
    results: list = [None] * len(fns)
    errors: list = [None] * len(fns)

    def main(r):
        try:
            results[r] = fns[r]()
        except BaseException as e:  # noqa: BLE001
            errors[r] = e
        finally:
            for ex in exchanges.values():
                ex.leave(r)
            mx.clear_streams()

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(kw.get("timeout", 60.0))
        assert not t.is_alive(), "a rank is stuck"
    real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if real:
        raise real[0]
    if any(errors):
        raise next(e for e in errors if e is not None)
    return results


# ---------------------------------------------------------------------------------- 2-rank models


@pytest.fixture(scope="module")
def reference(tiny_converted):
    from mlx_oss.loader import load

    model, _ = load(tiny_converted, "float32")
    return model


@pytest.fixture(scope="module")
def _loaded(tiny_converted):
    comms = [Comm(FakeGroup(r, 2)) for r in range(2)]
    return [load_sharded(tiny_converted, c, "float32") for c in comms]


@pytest.fixture
def pair(_loaded):
    """Rank 0's and rank 1's models over a fresh in-memory group (new mirror, new barrier)."""
    ex = _Exchange(2)
    for m in _loaded:
        m.comm.group.exchange = ex
        m.comm.mirror = Mirror()
    return _loaded


@pytest.fixture
def followers(monkeypatch):
    """The `Follower` every `follow()` makes, to look at the engines and states it holds."""
    seen: list[Follower] = []

    class Spy(Follower):
        def __init__(self, *a) -> None:
            super().__init__(*a)
            seen.append(self)

    monkeypatch.setattr(deng, "Follower", Spy)
    return seen


def _follow(model):
    return lambda: follow(model, model.comm)


def test_two_ranks_give_one_process_logits_bit_identical_on_both(pair, reference):
    """The sharded forward (vocab-split embedding, head/expert slices, gathered logits) equals the
    whole model, and every rank gets the same numbers (the replicated router depends on it)."""
    tokens = mx.array([TOKENS], dtype=mx.int32)  # ids in both halves of the vocabulary
    got = _ranks([m.comm for m in pair], *[(lambda m=m: np.array(m(tokens))) for m in pair])
    ref = np.array(reference(tokens))
    assert got[0].shape == ref.shape
    assert np.array_equal(got[0], got[1])
    assert np.abs(got[0] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_leader_and_follower_turns_equal_one_engine(pair, reference, followers):
    """Two greedy turns (the second reusing the first), a reply dropped after 2 tokens, a new prompt:
    the same tokens and reuse as one Engine, and the follower's engine holds what rank 0's holds."""
    lead, fol = pair

    def rank0():
        eng = LeaderEngine(lead)
        out = dist_worker.turns(eng)
        held = eng.tokens
        end_followers(lead.comm)
        return out, held, eng.id

    (out, held, eid), _ = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    assert out == dist_worker.turns(Engine(reference))
    assert out[1]["reused"] > 0
    assert followers[0].engines[eid].tokens == held


def test_detach_attach_fork_are_mirrored(pair, reference, followers):
    """A detached state resumed later and a fork of it on a second engine: the same reuse and tokens
    as one Engine doing the same, and the follower holds each state under rank 0's id."""
    lead, fol = pair
    a, b = TOKENS[:12], TOKENS[5:15]

    def script(new_engine, attach_ok=True):
        log = []
        eng = new_engine()
        log.append(list(eng.generate(a, GREEDY, max_tokens=3, stop_tokens=())))
        s = eng.detach()
        log.append(eng.tokens)
        log.append(list(eng.generate(b, GREEDY, max_tokens=3, stop_tokens=())))
        f = s.fork()
        eng.attach(s)
        g = eng.generate(a + log[0] + [9], GREEDY, max_tokens=3, stop_tokens=())
        log.append((list(g), g.reused_tokens))
        eng2 = new_engine()
        eng2.attach(f)
        g = eng2.generate(a + log[0] + [11], GREEDY, max_tokens=3, stop_tokens=())
        log.append((list(g), g.reused_tokens, eng2.tokens))
        return log, eng, eng2, s, f

    def rank0():
        log, eng, eng2, s, f = script(lambda: LeaderEngine(lead))
        assert isinstance(s, MirroredState) and isinstance(f, MirroredState) and s.id != f.id
        mid = eng.detach()  # held by the follower until rank 0 lets it go
        ids = (eng.id, eng2.id, mid.id, eng2.tokens)
        end_followers(lead.comm)
        return log, ids, mid

    (log, (e1, e2, mid_id, t2), mid), _ = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    ref_log = script(lambda: Engine(reference))[0]
    assert log == ref_log
    assert log[3][1] > 0 and log[4][1] > 0  # both resumed states reused their prefix
    f = followers[0]
    assert f.engines[e2].tokens == t2 and f.engines[e1].tokens == [] and set(f.states) == {mid_id}
    assert f.states[mid_id].tokens == mid.tokens


def test_prefill_and_stops_are_mirrored(pair, reference, followers):
    """A prefill warms every rank the same way; rank 0's stop (during decode, and during a prefill)
    stops the follower at the same token."""
    lead, fol = pair

    def rank0():
        eng = LeaderEngine(lead, prefill_chunk=4)
        seen = []
        logits, keep = eng.prefill(TOKENS[:9], boundaries=[5], progress=lambda *a: seen.append(a))
        warm = (np.array(logits), keep, eng.tokens, [s.position for s in eng.snapshots], seen)
        g = eng.generate(TOKENS[:12], GREEDY, max_tokens=20, stop_tokens=(), should_stop=lambda: len(g.generated) >= 3)
        toks = (list(g), g.reused_tokens, g.stop_reason, eng.tokens)
        n = iter(range(100))
        stopped = eng.prefill(TOKENS[:2] + [300] * 12, should_stop=lambda: next(n) >= 1)
        after = (stopped[0] is None, eng.tokens)
        res = (warm, toks, after, eng.id, eng.tokens)
        end_followers(lead.comm)
        return res

    (warm, toks, after, eid, held), _ = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    ref = Engine(reference, prefill_chunk=4)
    seen = []
    logits, keep = ref.prefill(TOKENS[:9], boundaries=[5], progress=lambda *a: seen.append(a))
    assert warm[1:] == (keep, ref.tokens, [s.position for s in ref.snapshots], seen) == (0, TOKENS[:9], [5, 9], seen)
    assert seen == [(4, 9), (5, 9), (9, 9)]
    assert np.abs(warm[0] - np.array(logits)).max() <= 1e-5 * np.abs(np.array(logits)).max()
    assert toks[0] == list(ref.generate(TOKENS[:12], GREEDY, max_tokens=3, stop_tokens=()))
    assert toks[1] == 9 and toks[2] == "cancelled"
    n = iter(range(100))
    assert ref.prefill(TOKENS[:2] + [300] * 12, should_stop=lambda: next(n) >= 1)[0] is None
    assert after[0] and after[1] == ref.tokens == TOKENS[:2] + [300] * 2  # one chunk (to position 4), then stopped
    assert followers[0].engines[eid].tokens == held == after[1]
    assert followers[0].engines[eid].prefill_chunk == 4


def test_a_reset_and_a_dropped_engine_reach_the_follower(pair, followers):
    """`reset` empties the follower's engine too; an engine rank 0 let go of is dropped there with the
    next command (here: EXIT), and `follow` returns on EXIT."""
    lead, fol = pair

    def rank0():
        keep, gone = LeaderEngine(lead), LeaderEngine(lead)
        list(keep.generate(TOKENS[:6], GREEDY, max_tokens=2, stop_tokens=()))
        list(gone.generate(TOKENS[:7], GREEDY, max_tokens=2, stop_tokens=()))
        keep.reset()
        ids = keep.id, gone.id
        del gone
        gc.collect()
        end_followers(lead.comm)
        return ids

    (kid, gid), ret = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    assert ret is None and list(followers[0].engines) == [kid] and followers[0].engines[kid].tokens == []


def test_ending_the_run_finishes_a_generation_its_consumer_let_go(pair, followers):
    """EXIT while a reply is half read: the reply is stepped to its end on every rank first, so the
    follower is never left inside a collective."""
    lead, fol = pair

    def rank0():
        eng = LeaderEngine(lead)
        it = iter(eng.generate(TOKENS[:6], GREEDY, max_tokens=30, stop_tokens=()))
        first = next(it)
        end_followers(lead.comm)
        return first, eng.tokens, lead.comm.mirror.active

    (first, held, active), _ = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    assert active is None and len(held) < 6 + 30
    (eng,) = followers[0].engines.values()
    assert eng.tokens == held


def test_leader_refusals_send_nothing():
    """A bad prompt, max_tokens or a state from elsewhere is refused on rank 0 before any command
    goes out (the followers would wait for a generation that never runs)."""
    model = type("M", (), {})()
    comm = Comm(FakeGroup(0, 2))  # any collective fails the test
    model.comm, model.args = comm, type("A", (), {"max_position_embeddings": 64, "vocab_size": 100})()
    model.make_cache = lambda: []
    eng = LeaderEngine(model)
    with pytest.raises(ValueError, match="empty prompt"):
        eng.generate([], GREEDY)
    with pytest.raises(ValueError, match="empty prompt"):
        eng.prefill([])
    with pytest.raises(ValueError, match="^max_tokens must be at least 1, got 0$"):
        eng.generate([1, 2], GREEDY, max_tokens=0)
    with pytest.raises(TypeError, match="^a LeaderEngine attaches only states detached"):
        eng.attach(EngineState((), (), ()))
    other = MirroredState((), (), (), 7, Comm(FakeGroup(0, 2)))
    with pytest.raises(TypeError, match="^a LeaderEngine attaches only states detached"):
        eng.attach(other)
    assert DistributedChat.engine_class is LeaderEngine


def test_commands_header_payload_and_order(monkeypatch):
    """A command is a fixed 16-int header then one payload in the order drops, prompt, stops, cuts;
    a command on no engine first finishes the running generation and carries the drops."""
    sent = []
    monkeypatch.setattr(deng, "broadcast_ints", lambda comm, values, n: sent.append((list(values), n)))
    c = Command(GENERATE, engine=3, n_drop=1, n_prompt=2, n_stop=1, n_cut=1, max_tokens=5, kv_bits=8, kv_group_size=32)
    assert HEADER == Command.size() == 16 and c.payload == 5
    assert c.ints() == [GENERATE, 3, 0, 0, 1, 2, 5, 1, 1, 0, 0, 0, 0, 0, 8, 32]
    assert Command(*c.ints()) == c
    assert Command(EXIT).ints() == [EXIT, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # -1: no max_tokens
    comm = Comm(FakeGroup(0, 2))
    deng.send(comm, c, [9], [1, 2], [7], [4])
    assert sent == [(c.ints(), HEADER), ([9, 1, 2, 7, 4], 5)]
    sent.clear()
    deng.send(comm, Command(RESET), [])
    assert sent == [(Command(RESET).ints(), HEADER)]  # no empty payload
    sent.clear()
    closed = []

    def gen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    it = gen()
    next(it)
    comm.mirror.active = it
    comm.mirror.drop(4)
    comm.mirror.drop(6)
    deng._command(comm, FORK, state=2, other=8)
    assert closed == [True] and comm.mirror.active is None
    assert sent == [(Command(FORK, state=2, other=8, n_drop=2).ints(), HEADER), ([4, 6], 2)]
    assert (EXIT, RESET, GENERATE, PREFILL, DETACH, ATTACH, FORK) == tuple(range(1, 8))


def test_a_follower_whose_engine_diverged_stops_with_one_line(pair):
    """held/reuse in every header: a follower that disagrees raises instead of hanging in a collective;
    unknown ops are refused; drops go first, EXIT last."""
    fol = pair[1]
    f = Follower(fol, fol.comm)
    with pytest.raises(DivergedError, match=r"^rank 1: engine 5 holds 0 tokens and would reuse 0; rank 0's holds 3 "
                                            r"and reuses 0: the ranks' caches diverged \(a bug\); stopping$"):  # fmt: skip
        f.run(Command(RESET, engine=5, held=3, max_context=64), [])
    f = Follower(fol, fol.comm)
    with pytest.raises(DivergedError, match="would reuse 0; rank 0's holds 0 and reuses 2:"):
        f.run(Command(PREFILL, engine=5, n_prompt=3, reuse=2, max_context=64, prefill_chunk=8, max_snapshots=2), [1, 2, 3])
    eng = f.engines[5]
    assert (eng.max_context, eng.prefill_chunk, eng.max_snapshots, eng.tokens) == (64, 8, 2, [])
    with pytest.raises(RuntimeError, match="^rank 1: unknown command 99 from rank 0$"):
        f.run(Command(99, engine=5, max_context=64), [])
    f.states[7] = "state"
    f.engines[8] = "engine"
    assert f.run(Command(RESET, engine=5, n_drop=2, max_context=64, prefill_chunk=8), [7, 8]) is True
    assert f.states == {} and list(f.engines) == [5]
    f.states[3] = "state"
    assert f.run(Command(EXIT, n_drop=2), [3, 5]) is False
    assert f.states == {} and f.engines == {}


def test_follower_runs_detach_attach_fork_by_id(pair):
    """The follower's DETACH/FORK/ATTACH keep states under rank 0's ids and hand them back."""
    fol = pair[1]
    f = Follower(fol, fol.comm)
    base = dict(engine=2, max_context=64, prefill_chunk=8, max_snapshots=4)
    f.run(Command(DETACH, state=10, **base), [])
    f.run(Command(FORK, state=10, other=11), [])
    assert set(f.states) == {10, 11} and f.states[11] is not f.states[10]
    f.run(Command(ATTACH, state=11, **base), [])
    assert set(f.states) == {10}
    with pytest.raises(KeyError):
        f.run(Command(ATTACH, state=11, **base), [])



def _stops_cuts_and_reuse(new_engine, stop=None):
    """Commands with every payload part: a dropped engine, prompts, stop tokens, boundaries; prefills
    that reuse; a generation without max_tokens that ends on `stop`. -> each step's result, and the
    tokens and snapshot positions `eng` holds (None: the first greedy tokens, to pick `stop` from)."""
    log = []
    eng, other = new_engine(), new_engine()
    g = other.generate(TOKENS[:4], GREEDY, max_tokens=1, stop_tokens=())  # 1 is allowed
    log.append((list(g), g.stop_reason))
    del other, g  # its id rides with the next command, before that command's prompt and cuts
    gc.collect()
    logits, keep = eng.prefill(TOKENS[:6], boundaries=[3])
    log.append((keep, eng.tokens))
    logits, keep = eng.prefill(TOKENS[:8])  # reuses the 6 held tokens
    log.append(keep)
    prompt = TOKENS[:8] + [40, 41, 42, 43, 44, 45, 46, 10]  # ends in an id that is also a position inside
    if stop is None:
        return list(eng.generate(prompt, GREEDY, max_tokens=6, stop_tokens=(), boundaries=[12]))
    g = eng.generate(prompt, GREEDY, stop_tokens=[stop], boundaries=[12])
    log.append((list(g), g.reused_tokens, g.stop_reason))
    return log, eng, prompt


def test_stops_cuts_drops_and_reuse_reach_the_follower(pair, reference, monkeypatch):
    """The follower reads each part of a payload (drops, prompt, stops, cuts) from its place: it
    stops on rank 0's stop token (no max_tokens), takes the same snapshots, reuses what rank 0
    reuses; the headers say -1 for no max_tokens and 0 for fields a command does not use."""
    lead, fol = pair
    first = _stops_cuts_and_reuse(lambda: Engine(reference))
    stop = next(t for i, t in enumerate(first) if i >= 2 and t not in first[:i])
    ref_log, ref_eng, prompt = _stops_cuts_and_reuse(lambda: Engine(reference), stop)
    assert ref_log[0][1] == "length" and ref_log[2] == 6 and ref_log[3][1:] == (8, "stop") and len(ref_log[3][0]) > 2
    seen, mine = [], []

    class Recorder(Follower):
        def __init__(self, *a) -> None:
            super().__init__(*a)
            mine.append(self)

        def run(self, c, body):
            seen.append((c, list(body)))
            return super().run(c, body)

    monkeypatch.setattr(deng, "Follower", Recorder)

    def rank0():
        log, eng, _ = _stops_cuts_and_reuse(lambda: LeaderEngine(lead), stop)
        res = log, eng.tokens, [s.position for s in eng.snapshots], eng.id, eng
        end_followers(lead.comm)
        return res

    (log, held, snaps, eid, eng), _ = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    assert log == ref_log and held == ref_eng.tokens
    assert snaps == [s.position for s in ref_eng.snapshots] == [3, 6, 8, 12, 16]
    f = mine[0].engines[eid]
    assert (f.tokens, [s.position for s in f.snapshots]) == (held, snaps)
    other = eid + 1
    settings = dict(max_context=eng.max_context, prefill_chunk=eng.prefill_chunk, max_snapshots=eng.max_snapshots,
                    kv_bits=0, kv_group_size=64)  # fmt: skip
    assert seen[1:] == [
        (Command(PREFILL, eid, n_drop=1, n_prompt=6, n_cut=1, **settings), [other] + TOKENS[:6] + [3]),
        (Command(PREFILL, eid, n_prompt=8, held=6, reuse=6, **settings), TOKENS[:8]),
        (Command(GENERATE, eid, n_prompt=16, n_stop=1, n_cut=1, held=8, reuse=8, **settings), prompt + [stop, 12]),
        (Command(EXIT), []),
    ]
    assert seen[0] == (Command(GENERATE, other, n_prompt=4, max_tokens=1, **settings), TOKENS[:4])


def test_states_rank_0_lets_go_of_are_dropped_on_the_follower(pair, followers):
    """A detached state and a fork of it that rank 0 no longer holds are dropped on the follower with
    the next command; the one rank 0 keeps stays."""
    lead, fol = pair

    def rank0():
        eng = LeaderEngine(lead)
        list(eng.generate(TOKENS[:6], GREEDY, max_tokens=2, stop_tokens=()))
        keep = eng.detach()
        gone = keep.fork()
        ids = keep.id, gone.id
        del gone
        gc.collect()
        assert lead.comm.mirror._dropped == [ids[1]]
        end_followers(lead.comm)
        return ids, keep

    ((kid, gid), keep), _ = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    assert kid != gid and list(followers[0].states) == [kid]
    assert followers[0].states[kid].tokens == keep.tokens


def test_logits_processors_see_the_context_on_rank_0(pair, reference):
    """A sampler with a logits processor that reads the token context (here: the next token is the
    context's length) gives the tokens one Engine gives; the follower follows without running it."""
    lead, fol = pair

    def sampler(calls):
        def count(tokens, logits):
            calls.append(np.array(tokens).tolist())
            return mx.where(mx.arange(logits.shape[-1]) == tokens.size, 1e4, logits)

        return Sampler(SamplingConfig(temperature=0, logits_processors=(count,)))

    prompt = TOKENS[:12]
    ref_calls, calls = [], []
    ref = list(Engine(reference).generate(prompt, sampler(ref_calls), max_tokens=6, stop_tokens=()))
    assert ref == list(range(12, 18)) and ref_calls == [prompt + ref[:i] for i in range(6)]

    def rank0():
        out = list(LeaderEngine(lead).generate(prompt, sampler(calls), max_tokens=6, stop_tokens=()))
        end_followers(lead.comm)
        return out

    got, _ = _ranks([lead.comm, fol.comm], rank0, _follow(fol))
    assert got == ref and calls == ref_calls


def test_a_follower_checks_a_new_engine_s_context_limit(pair):
    """The settings in a header make the follower's engine as rank 0's constructor would: a
    context limit the model cannot hold is refused."""
    fol = pair[1]
    limit = fol.args.max_position_embeddings
    with pytest.raises(ValueError, match=rf"^max_context must be between 2 and the model's {limit} tokens, got 1$"):
        Follower(fol, fol.comm).run(Command(RESET, engine=4, max_context=1, prefill_chunk=8), [])


# ---------------------------------------------------------------------------------- session broadcasts


def test_broadcasts_give_rank_0s_values_everywhere():
    """ints and text from rank 0 (the others pass None), the sum of one int per rank; a group of one
    sends nothing."""
    c = _comms(3)
    got = _ranks(c, *[
        (lambda r=r: (broadcast_ints(c[r], [5, -3, 70000] if r == 0 else None, 3), broadcast_ints_sum(c[r], r + 1),
                      broadcast_text(c[r], "grüße, 模型" if r == 0 else "not mine"), broadcast_text(c[r], None)))
        for r in range(3)
    ])  # fmt: skip
    assert got == [([5, -3, 70000], 6, "grüße, 模型", "")] * 3
    c = _comms(2)
    assert _ranks(c, lambda: broadcast_ints_sum(c[0], 0), lambda: broadcast_ints_sum(c[1], 1)) == [1, 1]
    solo = Comm(FakeGroup(0, 1))
    assert broadcast_ints(solo, [4, 5], 2) == [4, 5] and broadcast_ints_sum(solo, 3) == 3
    assert broadcast_text(solo, "x") == "x" and broadcast_text(solo, "") == ""
    check_same_checkpoint(solo, hashlib.sha256(b"a").hexdigest())


def test_empty_text_costs_one_collective():
    """The length (0) is all that goes out for an empty text."""
    c = _comms(2)
    assert _ranks(c, lambda: broadcast_text(c[0], ""), lambda: broadcast_text(c[1], None)) == ["", ""]
    assert c[0].group.exchange.calls == 1


def test_checkpoint_check_names_the_rank_that_differs():
    """Same manifest digest: nothing. A digest that differs only in the last compared hex digits is
    still caught, with one line on every rank."""
    d0 = hashlib.sha256(b"one").hexdigest()
    d1 = d0[:59] + ("0" if d0[59] != "0" else "1") + d0[60:]
    c = _comms(2)
    assert _ranks(c, lambda: check_same_checkpoint(c[0], d0), lambda: check_same_checkpoint(c[1], d0)) == [None, None]
    c = _comms(2)
    with pytest.raises(PeerMismatch, match=r"^1 other rank\(s\)' checkpoint differs"):
        _ranks(c, lambda: check_same_checkpoint(c[0], d0), lambda: pytest.raises(PeerMismatch, check_same_checkpoint, c[1], d1))
    c = _comms(3)
    errors = []

    def check(r, d):
        try:
            check_same_checkpoint(c[r], d)
        except PeerMismatch as e:
            errors.append((r, str(e)))

    _ranks(c, lambda: check(0, d0), lambda: check(1, d1), lambda: check(2, d1))
    tail = f"checkpoint differs from rank 0's (manifest.json sha256 {{}} vs {d0[:12]}); give every host the same converted folder"
    assert sorted(errors) == [
        (0, "2 other rank(s)' " + tail.format(d0[:12])),
        (1, "this rank's " + tail.format(d1[:12])),
        (2, "this rank's " + tail.format(d1[:12])),
    ]


def test_in_group_and_is_follower_read_the_launch_environment(monkeypatch):
    assert in_group({"MLX_RANK": "0", "MLX_HOSTFILE": "r.json"}) and not is_follower({"MLX_RANK": "0", "MLX_HOSTFILE": "r"})
    assert in_group({"MLX_RANK": "1", "MLX_JACCL_COORDINATOR": "a:1"}) and is_follower({"MLX_RANK": "1", "MLX_HOSTFILE": "r"})
    assert not in_group({"MLX_RANK": "1"}) and not in_group({"MLX_HOSTFILE": "r"}) and not is_follower({"MLX_RANK": "1"})
    monkeypatch.setenv("MLX_RANK", "2")
    monkeypatch.setenv("MLX_HOSTFILE", "r.json")
    assert in_group() and is_follower()
    monkeypatch.delenv("MLX_RANK")
    assert not in_group() and not is_follower()


class _Dog:
    def __init__(self, rank, size, address) -> None:
        self.args, self.log = (rank, size, address), []

    def start(self):
        self.log.append("start")
        return self

    def guard(self, what):
        from contextlib import contextmanager

        @contextmanager
        def g():
            self.log.append(what)
            yield

        return g()

    def close(self):
        self.log.append("close")

    def abort(self, grace):
        self.log.append(("abort", grace))


def test_join_starts_the_watchdog_then_mlx_and_checks_the_rank(monkeypatch, tmp_path):
    """Ring: size from MLX_HOSTFILE and the watchdog one port above the ring; JACCL: size from the
    device list and the coordinator's port + 1; MLX giving another rank is refused in one line."""
    monkeypatch.setattr(dsession, "Watchdog", _Dog)
    inits = []

    def init(backend, strict):
        inits.append((backend, strict))
        return FakeGroup(*inits_rank)

    monkeypatch.setattr(mx.distributed, "init", init)
    ring = tmp_path / "ring.json"
    ring.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.2:5001"]]))
    inits_rank = (1, 2)
    s = dsession.join({"MLX_RANK": "1", "MLX_HOSTFILE": str(ring)})
    assert s.watchdog.args == (1, 2, ("10.0.0.1", 5002)) and inits == [("ring", True)]
    assert s.watchdog.log == ["start", "joining the ring group (mx.distributed.init)"]
    assert (s.rank, s.size, s.leader, s.ready) == (1, 2, False, False)
    s.close()
    assert s.watchdog.log[-1] == "close"
    devices = tmp_path / "dev.json"
    devices.write_text(json.dumps([["a"], ["b"], ["c"]]))
    inits_rank = (0, 3)
    s = dsession.join({"MLX_RANK": "0", "MLX_JACCL_COORDINATOR": "10.0.0.9:7000", "MLX_IBV_DEVICES": str(devices),
                       "MLX_HOSTFILE": str(ring)})  # fmt: skip
    assert s.watchdog.args == (0, 3, ("10.0.0.9", 7001)) and inits[-1] == ("jaccl", True) and s.leader
    s = dsession.join({"MLX_RANK": "0", "MLX_JACCL_COORDINATOR": "fe80::1:7000", "MLX_IBV_DEVICES": str(devices)})
    assert s.watchdog.args == (0, 3, ("fe80::1", 7001))  # the port is after the last colon
    assert s.watchdog.log[1] == "joining the jaccl group (mx.distributed.init)"
    inits_rank = (0, 2)
    with pytest.raises(HostfileError, match=r"^mx.distributed.init gave rank 0 of 2, expected 1 of 2$"):
        dsession.join({"MLX_RANK": "1", "MLX_HOSTFILE": str(ring)})
    inits_rank = (1, 3)
    with pytest.raises(HostfileError, match=r"gave rank 1 of 3, expected 1 of 2$"):
        dsession.join({"MLX_RANK": "1", "MLX_HOSTFILE": str(ring)})
    with pytest.raises(HostfileError, match="^MLX_HOSTFILE is not set$"):
        dsession.join({"MLX_RANK": "1"})
    monkeypatch.setenv("MLX_RANK", "1")
    monkeypatch.setenv("MLX_HOSTFILE", str(ring))
    inits_rank = (1, 2)
    assert dsession.join().rank == 1  # the process environment by default


# ---------------------------------------------------------------------------------- hostfiles


def _hostfile(tmp_path, data) -> Path:
    f = tmp_path / "hosts.json"
    f.write_text(data if isinstance(data, str) else json.dumps(data))
    return f


def test_hostfile_forms_and_defaults(tmp_path, monkeypatch):
    """A bare list or {"hosts": ...}; ring unless named; the ssh name stands for the IP when it is one;
    the first of several ips; `~` expanded."""
    hosts, backend = read_hostfile(_hostfile(tmp_path, [{"ssh": "10.0.0.7"}, {"ssh": "::1", "ips": []}]))
    assert backend == "ring" and hosts == [Host("10.0.0.7", "10.0.0.7"), Host("::1", "::1")]
    assert [h.local for h in hosts] == [False, True] and Host("localhost", "127.0.0.1").local
    f = _hostfile(tmp_path, {"backend": None, "hosts": [{"ssh": "m", "ips": ["10.1.1.1", "10.2.2.2"]}]})
    assert read_hostfile(f) == ([Host("m", "10.1.1.1")], "ring")
    for b in ("jaccl", "jaccl-ring", "any"):
        assert read_hostfile(_hostfile(tmp_path, {"backend": b, "hosts": [{"ssh": "127.0.0.1"}]}))[1] == b
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_hostfile("~/hosts.json")[0] == [Host("127.0.0.1", "127.0.0.1")]


@pytest.mark.parametrize(
    "data, msg",
    [
        ("", r"not JSON \("),
        ([], r"expected a list of hosts \(or \{\"hosts\": \[...\]\}\), one per rank$"),
        ({"hosts": {"ssh": "a"}}, "expected a list of hosts"),
        ({"backend": "ring"}, "expected a list of hosts"),
        ([{"ssh": "127.0.0.1"}, "mac2"], r"hosts\[1\] needs an \"ssh\" host name$"),
        ([{"ssh": ""}], r"hosts\[0\] needs an \"ssh\" host name$"),
        ([{"ssh": 3}], r"hosts\[0\] needs an \"ssh\" host name$"),
        ([{"ips": ["10.0.0.1"]}], r"hosts\[0\] needs an \"ssh\" host name$"),
        ([{"ssh": "127.0.0.1"}, {"ssh": "m", "ips": ["m.local"]}],
         r"hosts\[1\] needs \"ips\": the ring backend connects to IP addresses, not 'm.local'$"),
        ({"backend": "mpi", "hosts": [{"ssh": "127.0.0.1"}]}, r"backend 'mpi' is not supported \(ring, jaccl, jaccl-ring\)$"),
    ],
)  # fmt: skip
def test_bad_hostfiles_are_refused_in_one_line(tmp_path, data, msg):
    f = _hostfile(tmp_path, data)
    with pytest.raises(HostfileError, match=f"^{str(f)}: {msg}"):
        read_hostfile(f)


def test_missing_hostfile_names_the_file_and_why(tmp_path):
    with pytest.raises(HostfileError, match=r"nope.json: cannot read hostfile \(No such file or directory\)$"):
        read_hostfile(tmp_path / "nope.json")


def test_ring_and_control_addresses():
    """Rank r listens on base + r; the watchdog on rank 0's IP one above the highest ring port, IPv6
    brackets removed."""
    hosts = [Host("a", "10.0.0.1"), Host("b", "10.0.0.2"), Host("c", "10.0.0.3")]
    assert ring_addresses(hosts) == [[f"10.0.0.{r + 1}:{DEFAULT_PORT + r}"] for r in range(3)] and DEFAULT_PORT == 32323
    assert control_address([["[::1]:7000"], ["[::1]:7001"]]) == ("::1", 7002)
    assert control_address([["10.0.0.1:7005", "10.0.0.9:7001"], ["10.0.0.2:7009", "10.0.0.3:7002"]]) == ("10.0.0.1", 7010)


def test_ring_from_env(tmp_path, monkeypatch):
    assert ring_from_env({}) is None and ring_from_env({"MLX_HOSTFILE": ""}) is None
    f = tmp_path / "ring.json"
    f.write_text(json.dumps([["127.0.0.1:1"], ["127.0.0.1:2"]]))
    assert ring_from_env({"MLX_HOSTFILE": str(f)}) == [["127.0.0.1:1"], ["127.0.0.1:2"]]
    monkeypatch.setenv("MLX_HOSTFILE", str(f))
    assert ring_from_env() == [["127.0.0.1:1"], ["127.0.0.1:2"]]
    with pytest.raises(HostfileError, match=rf"^MLX_HOSTFILE={tmp_path}/no.json: cannot read the ring list \("):
        ring_from_env({"MLX_HOSTFILE": str(tmp_path / "no.json")})
    for bad, msg in (("[", "cannot read the ring list"), ('{"a": 1}', "expected one list"), ("[[]]", "expected one list"),
                     ('["127.0.0.1:1"]', "expected one list")):  # fmt: skip
        f.write_text(bad)
        with pytest.raises(HostfileError, match=rf"^MLX_HOSTFILE={f}: {msg}"):
            ring_from_env({"MLX_HOSTFILE": str(f)})
    f.write_text("[]")
    assert ring_from_env({"MLX_HOSTFILE": str(f)}) == []


# ---------------------------------------------------------------------------------- plan, layers, load


def test_plan_refusals_and_rank_bounds():
    from dataclasses import replace

    from mlx_oss.convert.synthetic import PRESETS

    tiny = PRESETS["tiny"]
    args = ModelArgs.from_dims(tiny)
    odd = ModelArgs.from_dims(replace(tiny, num_key_value_heads=4, num_attention_heads=8))
    object.__setattr__(odd, "num_attention_heads", 6)  # not a valid model (heads are whole GQA groups): the check behind it
    for r in (-1, 2):
        with pytest.raises(ShardError, match=rf"^rank {r} is outside a group of 2$"):
            ShardPlan(args, r, 2)
    with pytest.raises(ShardError, match=r"^num_attention_heads = 6 does not split evenly over 4 ranks$"):
        ShardPlan(odd, 0, 4)
    with pytest.raises(ShardError, match=rf"^vocab_size = {tiny.vocab_size + 1} does not split evenly over 2 ranks$"):
        ShardPlan(ModelArgs.from_dims(replace(tiny, vocab_size=tiny.vocab_size + 1)), 0, 2)
    with pytest.raises(ShardError, match=r"^intermediate_size 48 is not a multiple of 32$"):
        ShardPlan(ModelArgs.from_dims(replace(tiny, intermediate_size=48)), 0, 1)
    g = args.intermediate_size // args.expert_group_size
    p = ShardPlan(args, g - 1, g)  # exactly one group each: allowed
    assert p.intermediate == args.expert_group_size


def test_plan_cuts_lengths_and_shapes():
    """Which rule a tensor name matches (bias before weight, module or bare name), the logical length
    per kind, the local shape, and a slice that splits a packed word refused in one line."""
    from mlx_oss.convert.synthetic import PRESETS

    a = ModelArgs.from_dims(PRESETS["120b"])
    p = ShardPlan(a, 1, 2)
    assert p.cut("layers.0.attn.out.bias") == (0, "bias0") and p.cut("layers.0.attn.out.weight") == (1, "cols")
    assert p.cut("embed.weight") == (0, "vocab") and p.cut("unembed.scales") == (0, "vocab") and p.cut("embed") == (0, "vocab")
    assert p.cut("layers.1.attn.sinks") == (0, "heads") and p.cut("layers.0.mlp.down.bias") == (0, "bias0")
    assert p.cut("layers.0.mlp.router.weight") == (0, None) and p.cut("norm.weight") == (0, None)
    assert p.cut("layers.0.mlp.gate_up.weight") == (1, "gate_up") and p.cut("layers.0.mlp.down.scales") == (2, "inter")
    assert p.ranges("norm.weight") is None and p.ranges("layers.0.attn.out.bias") == (0, [])
    assert ShardPlan(a, 0, 2).ranges("layers.0.attn.out.bias") is None
    assert p.ranges("layers.0.attn.sinks") == (0, [(32, 64)]) and p.ranges("layers.0.attn.out.weight") == (1, [(2048, 4096)])
    assert p.ranges("layers.0.mlp.gate_up.weight") == (1, [(1440, 2880), (2880 + 1440, 5760)])
    assert p.ranges("embed.weight") == (0, [(100544, 201088)]) and p.vocab_start == 100544
    assert ShardPlan(a, 0, 4).intermediate_range(3) == ShardPlan(a, 3, 4).intermediate_range() == (2176, 2880)
    lengths = {n: p.logical_length(n, 0) for n in ("layers.0.attn.qkv.weight", "layers.0.attn.sinks", "layers.0.attn.out.weight",
                                                  "layers.0.mlp.gate_up.weight", "layers.0.mlp.down.weight", "embed.weight")}  # fmt: skip
    assert list(lengths.values()) == [a.qkv_dim, 64, 4096, 5760, 2880, 201088]
    assert p.stored_ranges("norm.weight", (2880,)) is None and p.stored_ranges("layers.0.attn.out.bias", (2880,)) == (0, [])
    assert p.local_shape("layers.0.attn.out.bias", (2880,)) == (2880,) and p.local_shape("norm.weight", (2880,)) == (2880,)
    assert p.local_shape("layers.0.mlp.gate_up.weight", (128, 5760, 360)) == (128, 2880, 360)
    assert p.local_shape("layers.0.attn.qkv.weight", (a.qkv_dim, 2880)) == ((32 + 8) * 64, 2880)
    assert p.stored_ranges("layers.0.attn.out.weight", (2880, 512)) == (1, [(256, 512)])  # 8 values per word
    with pytest.raises(ShardError, match=r"^layers.0.attn.out.weight: a rank's slice \[2048, 4096\) does not align with "
                                         r"its packing \(3 of 4096\)$"):  # fmt: skip
        p.stored_ranges("layers.0.attn.out.weight", (2880, 3))
    local = p.local_args()
    assert (local.num_attention_heads, local.num_key_value_heads, local.intermediate_size, local.vocab_size) == (32, 4, 1440, 201088)


def test_comm_suspended_and_groups_of_one():
    """Suspended: no traffic, each rank's part repeated (the timing run); restored after an error.
    A group of one passes everything through."""
    x = mx.array([[1.0, 2.0]])
    two = Comm(FakeGroup(0, 2))  # any collective fails the test
    with pytest.raises(KeyError):
        with two.suspended():
            assert np.array_equal(np.array(two.all_sum(x)), np.array(x))
            assert np.array(two.gather_last(x)).tolist() == [[1.0, 2.0, 1.0, 2.0]]
            raise KeyError
    with pytest.raises(AssertionError, match="a collective was sent"):
        two.all_sum(x)
    one = Comm(FakeGroup(0, 1))
    assert one.all_sum(x) is x and one.gather_last(x) is x
    with one.suspended():
        assert one.gather_last(x) is x
    c = _comms(2)
    got = _ranks(c, *[(lambda r=r: np.array(c[r].gather_last(mx.array([[r + 1.0, r + 10.0]]) * (r + 1)))) for r in range(2)])
    assert got[0].tolist() == got[1].tolist() == [[1.0, 10.0, 4.0, 22.0]]


def test_suspended_gather_joins_logits_along_the_vocabulary():
    """[B, T, vocab part] logits (what the benchmark's timing run gathers) are joined on the last axis."""
    two = Comm(FakeGroup(0, 2))
    x = mx.arange(6, dtype=mx.float32).reshape(1, 2, 3)
    with two.suspended():
        got = np.array(two.gather_last(x))
    assert got.tolist() == [[[0, 1, 2, 0, 1, 2], [3, 4, 5, 3, 4, 5]]]


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_sharded_model_of_any_depth_has_sharded_blocks_sharing_one_rope(layers):
    from dataclasses import replace

    from mlx_oss.convert.synthetic import PRESETS
    from mlx_oss.distributed.layers import ShardedAttention, ShardedModel, ShardedMoE

    types = ("sliding_attention", "full_attention")[:layers]
    args = ModelArgs.from_dims(replace(PRESETS["tiny"], num_hidden_layers=layers, layer_types=types))
    comm = Comm(FakeGroup(1, 2))
    m = ShardedModel(ShardPlan(args, 1, 2), comm)
    assert len(m.layers) == layers and m.comm is comm and m.plan.rank == 1
    assert all(type(x.attn) is ShardedAttention and type(x.mlp) is ShardedMoE for x in m.layers)
    assert len({id(x.attn._rope) for x in m.layers}) == min(layers, 1)
    assert all(x.attn._comm is comm and x.mlp._comm is comm for x in m.layers)
    assert (m.embed._start, m.embed._rows, m.embed.weight.shape, m.unembed.weight.shape) == (256, 256, (256, 64), (256, 64))


def test_vocab_lookup_rows_outside_the_rank_are_zero():
    """Each rank looks up only its own rows (ids outside give zeros), so the sum has every row once."""
    from mlx_oss.distributed.layers import VocabShardedEmbedding

    c = _comms(2)
    embs = [VocabShardedEmbedding(3, 2, 3 * r, c[r]) for r in range(2)]
    for r, e in enumerate(embs):
        e.weight = mx.arange(6 * r, 6 * r + 6, dtype=mx.float32).reshape(3, 2) + 1
        mx.eval(e.weight)  # made here, read on the rank's thread
    ids = mx.array([[0, 2, 3, 5]])
    got = _ranks(c, *[(lambda e=e: np.array(e(ids))) for e in embs])
    assert got[0].tolist() == got[1].tolist() == [[[1, 2], [5, 6], [7, 8], [11, 12]]]


def test_manifest_digest_and_unloadable_folders(tiny_converted, tmp_path):
    assert manifest_digest(tiny_converted) == hashlib.sha256((tiny_converted / "manifest.json").read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/manifest.json: cannot read \(No such file or directory\); "
                                              r"distributed runs need a converted folder$"):  # fmt: skip
        manifest_digest(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}: not an mlx-oss folder; distributed runs load converted "
                                              r"folders \(mlx-oss convert SRC DST\)$"):  # fmt: skip
        load_sharded(tmp_path, Comm(FakeGroup(0, 2)))


def test_load_reads_through_the_index_and_keeps_dtype(tiny_converted, tmp_path):
    """A folder whose index names its shard files loads the same slice as one found by glob; the
    default dtype of a float32 folder stays float32."""
    import shutil

    from mlx_oss.distributed.load import _tensor_index

    idx = _tensor_index(tiny_converted)
    copy = tmp_path / "m"
    shutil.copytree(tiny_converted, copy)
    (copy / "model.safetensors.index.json").unlink(missing_ok=True)
    files = sorted(copy.glob("*.safetensors"))
    (copy / "stray.safetensors").write_bytes(b"")  # ignored when an index names the files
    names = {n: f.name for n, (f, _) in idx.items()}
    (copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": names}))
    assert {n: (f.name, i.shape) for n, (f, i) in _tensor_index(copy).items()} == {
        n: (f.name, i.shape) for n, (f, i) in idx.items()}
    assert len(files) >= 1 and set(names) == set(idx)
    (copy / "model.safetensors.index.json").unlink()
    (copy / "stray.safetensors").unlink()
    assert {n: (f.name, i.shape) for n, (f, i) in _tensor_index(copy).items()} == {
        n: (f.name, i.shape) for n, (f, i) in idx.items()}  # no index: every *.safetensors file


def test_load_refuses_a_folder_missing_a_tensor_and_honours_the_dtype(tiny_converted, monkeypatch):
    """bfloat16 asked, bfloat16 held (norms stay float32); a tensor missing from the files is an error,
    not a layer of zeros."""
    from mlx_oss.distributed import load as dload

    m = load_sharded(tiny_converted, Comm(FakeGroup(1, 2)), "bfloat16")
    assert m.layers[0].attn.sinks.dtype == mx.bfloat16 and m.norm.weight.dtype == mx.float32
    whole = dload._tensor_index
    monkeypatch.setattr(dload, "_tensor_index", lambda path: {n: v for n, v in whole(path).items() if n != "norm.weight"})
    with pytest.raises(ValueError, match="norm.weight"):
        load_sharded(tiny_converted, Comm(FakeGroup(1, 2)), "float32")


def test_read_slice_maps_the_shard_read_only(tiny_converted, monkeypatch):
    """The column slices come from a read-only map: a rank never opens the model files for writing."""
    from mlx_oss.distributed import load as dload
    from mlx_oss.distributed.load import read_slice

    modes = []
    real = np.memmap

    def memmap(*a, **kw):
        modes.append(kw.get("mode", "r+"))
        return real(*a, **kw)

    monkeypatch.setattr(dload.np, "memmap", memmap)
    plan = ShardPlan(ModelArgs.from_path(tiny_converted), 1, 2)
    (f, info) = dload._tensor_index(tiny_converted)["layers.0.attn.out.weight"]
    assert read_slice(f, info, plan).shape == plan.local_shape(info.name, info.shape)
    assert modes == ["r"]


# ---------------------------------------------------------------------------------- mirror


def test_mirror_ids_drops_and_the_active_generation():
    m = Mirror()
    assert [m.new_id(), m.new_id(), m.new_id()] == [1, 2, 3]
    assert m.take_dropped() == []
    m.drop(2)
    m.drop(1)
    assert m.take_dropped() == [2, 1] and m.take_dropped() == []
    m.finish_active()  # none: nothing to do
    steps = []

    def gen():
        try:
            yield 1
        finally:
            steps.append("closed")

    m.active = gen()
    next(m.active)
    m.finish_active()
    assert steps == ["closed"] and m.active is None


# ---------------------------------------------------------------------------------- launch


def test_strip_hosts():
    assert launch.strip_hosts(["chat", "--hosts", "h.json", "-m", "x"]) == ["chat", "-m", "x"]
    assert launch.strip_hosts(["--hosts=h.json", "serve", "--hostsx", "1"]) == ["serve", "--hostsx", "1"]
    assert launch.strip_hosts(["bench", "--hosts"]) == ["bench"]
    assert launch.strip_hosts(["a", "--hosts", "--hosts=b", "c"]) == ["a", "c"]


class _Proc:
    def __init__(self, cmd, env=None, stdin=None, stdout=None, stderr=None, *, lines=(), code=0, hang=False) -> None:
        self.cmd, self.env, self.killed = cmd, env, False
        self.stderr = iter(list(lines) + [b""])
        self.stderr = type("R", (), {"readline": (lambda s, it=self.stderr: next(it))})()
        self.code, self.hang = code, hang

    def wait(self, timeout=None):
        self.waits = getattr(self, "waits", []) + [timeout]
        if self.hang and not self.killed:
            assert timeout is not None, "waited for a stuck rank without a limit"
            raise subprocess.TimeoutExpired("x", timeout)
        return self.code


@pytest.fixture
def launcher(monkeypatch):
    procs = []

    def popen(cmd, **kw):
        procs.append(_Proc(cmd, **kw))
        procs[-1].kw = kw
        return procs[-1]

    class Thread:  # the stderr forwarders, recorded instead of started
        def __init__(self, target=None, args=(), daemon=None) -> None:
            self.spec = (target, args, daemon)

        def start(self):
            procs[len(threads)].forwarder = self.spec
            threads.append(self)

    threads: list = []
    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    monkeypatch.setattr(launch.threading, "Thread", Thread)
    monkeypatch.setenv("MLX_RANK", "")
    monkeypatch.setenv("MLX_HOSTFILE", "")
    monkeypatch.delenv("MLX_OSS_BASE_PORT", raising=False)
    monkeypatch.setattr(launch, "_children", [])
    monkeypatch.setattr(launch, "_ring_files", [])
    yield procs
    launch._remove_ring_files()


def test_start_ranks_starts_local_and_remote_ranks_and_joins_as_rank_0(tmp_path, launcher, monkeypatch):
    """Local ranks: this Python with MLX_RANK/MLX_HOSTFILE; remote ones: ssh with the ring list written
    there; every rank gets the command line minus --hosts; the ring file goes once joined."""
    hf = _hostfile(tmp_path, [{"ssh": "127.0.0.1"}, {"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "mac3", "ips": ["10.0.0.3"]}])
    monkeypatch.setenv("MLX_OSS_BASE_PORT", "6000")
    monkeypatch.setenv("MLX_OSS_TEST_MARK", "inherited")
    monkeypatch.chdir(tmp_path)
    launch.start_ranks(hf, ["chat", "--hosts", str(hf), "-m", "a b"])
    ring_file = os.environ["MLX_HOSTFILE"]
    assert Path(ring_file).name.startswith("mlx-oss-ring-") and ring_file.endswith(".json")
    ring = [["127.0.0.1:6000"], ["127.0.0.1:6001"], ["10.0.0.3:6002"]]
    assert os.environ["MLX_RANK"] == "0" and json.loads(Path(ring_file).read_text()) == ring
    local, remote = launcher
    args = [sys.executable, "-m", "mlx_oss.cli.main", "chat", "-m", "a b"]
    assert local.cmd == args and local.env["MLX_RANK"] == "1" and local.env["MLX_HOSTFILE"] == ring_file
    assert local.env["MLX_OSS_TEST_MARK"] == "inherited"  # the rest of this environment too
    for p, rank in ((local, 1), (remote, 2)):
        assert p.kw == {"env": p.env, "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
        assert p.forwarder == (launch._forward, (rank, p), True)
    assert remote.cmd[:4] == ["ssh", "-o", "BatchMode=yes", "mac3"] and remote.env is None
    assert "MLX_RANK=2 MLX_HOSTFILE=$f " in remote.cmd[4] and "'a b'" in remote.cmd[4]
    assert remote.cmd[4].startswith(f"cd {tmp_path} 2>/dev/null; f=$(mktemp); ")
    assert f"printf %s '{json.dumps(ring)}' > $f" in remote.cmd[4] and remote.cmd[4].endswith("; s=$?; rm -f $f; exit $s")
    assert launch._children == launcher
    launch.joined()
    assert not Path(ring_file).exists() and launch._joined.is_set()
    launch._ring_files.append(ring_file)  # already gone: not an error
    launch.joined()
    launch.start_ranks(hf, ["x"], base_port=7000)
    assert json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text())[0] == ["127.0.0.1:7000"]
    monkeypatch.delenv("MLX_OSS_BASE_PORT")
    launch.start_ranks(hf, ["x"])
    assert json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text())[1] == [f"127.0.0.1:{DEFAULT_PORT + 1}"]


def test_start_ranks_refuses_other_backends(tmp_path, launcher):
    hf = _hostfile(tmp_path, {"backend": "jaccl", "hosts": [{"ssh": "127.0.0.1"}]})
    with pytest.raises(ValueError, match=rf"^{hf}: backend 'jaccl': start it with mlx.launch --hostfile {hf} -- mlx-oss ...$"):
        launch.start_ranks(hf, ["x"])
    assert launcher == []


def test_forward_prefixes_a_rank_s_lines_and_stops_on_its_early_death(monkeypatch, capsys):
    exits = []
    monkeypatch.setattr(launch.os, "_exit", exits.append)
    monkeypatch.setattr(launch, "_joined", threading.Event())
    monkeypatch.setattr(launch, "_ending", threading.Event())
    launch._forward(2, _Proc([], lines=[b"loading\n", b"bad \xff\n"], code=3))
    err = capsys.readouterr().err
    assert err == ("[rank 2] loading\n[rank 2] bad \ufffd\n"
                   "mlx-oss: error: rank 0: rank 2 exited with status 3; stopping\n") and exits == [1]  # fmt: skip
    launch._forward(1, _Proc([], code=0))
    launch._joined.set()
    launch._forward(1, _Proc([], code=1))  # once joined, the watchdog reports it
    launch._joined.clear()
    launch._ending.set()
    launch._forward(1, _Proc([], code=1))  # a normal end
    assert exits == [1] and capsys.readouterr().err == ""


def test_wait_ranks_kills_a_rank_that_does_not_exit(monkeypatch):
    ok, stuck = _Proc([]), _Proc([], hang=True)
    stuck.kill = lambda: setattr(stuck, "killed", True)
    ok.kill = lambda: pytest.fail("killed a rank that exited")
    monkeypatch.setattr(launch, "_children", [ok, stuck])
    monkeypatch.setattr(launch, "_ending", threading.Event())
    launch.wait_ranks(0.01)
    assert stuck.killed and launch._children == [] and launch._ending.is_set()
    assert ok.waits == [0.01] and stuck.waits == [0.01, None]
    monkeypatch.setattr(launch, "_children", [ok])
    launch.wait_ranks()
    assert ok.waits[-1] == 30.0


# ---------------------------------------------------------------------------------- cli helpers


def test_agree_model_is_rank_0s_name():
    c = _comms(2)
    sessions = [Session(c[r], _Dog(r, 2, None)) for r in range(2)]
    got = _ranks(c, lambda: dcli.agree_model(sessions[0], "openai/gpt-oss-20b"),
                 lambda: dcli.agree_model(sessions[1], "a follower's own guess"))  # fmt: skip
    assert got == ["openai/gpt-oss-20b"] * 2


def test_resolve_once_per_host_locks_in_the_cache_home(tmp_path, monkeypatch):
    import fcntl

    import mlx_oss.store as store

    home = tmp_path / "new" / "home"
    monkeypatch.setenv("MLX_OSS_HOME", str(home))
    calls = []

    def resolve(name, progress, status):
        with open(home / ".resolve.lock") as other:  # held: a second rank on this host waits
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        calls.append((name, progress, status))
        return tmp_path / "folder"

    monkeypatch.setattr(store, "resolve_model", resolve)
    say = print
    assert dcli.resolve_once_per_host("gpt-oss-20b", say) == tmp_path / "folder"
    assert dcli.resolve_once_per_host("other", None) == tmp_path / "folder"  # the home exists now
    assert calls == [("gpt-oss-20b", False, say), ("other", False, None)]


def test_end_tells_the_followers_once_and_only_from_a_ready_leader(monkeypatch):
    sent = []
    monkeypatch.setattr(deng, "end_followers", sent.append)
    dcli.end(None)
    leader = Session(Comm(FakeGroup(0, 2)), _Dog(0, 2, None), ready=True)
    dcli.end(leader)
    dcli.end(leader)
    assert sent == [leader.comm] and not leader.ready
    dcli.end(Session(Comm(FakeGroup(1, 2)), _Dog(1, 2, None), ready=True))
    dcli.end(Session(Comm(FakeGroup(0, 2)), _Dog(0, 2, None), ready=False))
    assert sent == [leader.comm]


@pytest.fixture
def fake_group_cli(monkeypatch):
    calls = []
    monkeypatch.setattr(dcli.launch, "start_ranks", lambda hosts, argv: calls.append(("start", hosts, argv)))
    monkeypatch.setattr(dcli.launch, "joined", lambda: calls.append("joined"))
    monkeypatch.setattr(dcli.launch, "wait_ranks", lambda: calls.append("wait"))
    monkeypatch.setattr(dcli, "end", lambda s: calls.append("end"))
    session = Session(Comm(FakeGroup(0, 2)), _Dog(0, 2, None))
    monkeypatch.setattr(dcli, "join", lambda: session)
    return calls, session


def test_group_without_hosts_outside_a_group_is_one_machine(monkeypatch, fake_group_cli):
    calls, _ = fake_group_cli
    monkeypatch.delenv("MLX_RANK", raising=False)
    with dcli.group(Namespace(hosts=None)) as s:
        assert s is None
    with dcli.group(Namespace()) as s:
        assert s is None
    assert calls == []


def test_group_lifecycle_and_abort(monkeypatch, fake_group_cli):
    """--hosts starts the ranks (argv minus nothing: start_ranks strips it); a normal end says goodbye
    and waits; an error aborts with the grace for a lost peer, ctrl-c without."""
    calls, session = fake_group_cli
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", "ring.json")
    with dcli.group(Namespace(hosts="h.json"), ["chat", "--hosts", "h.json"]) as s:
        assert s is session and calls == [("start", "h.json", ["chat", "--hosts", "h.json"]), "joined"]
    assert calls[2:] == ["end", "wait"] and session.watchdog.log == ["close"]
    monkeypatch.setattr(sys, "argv", ["mlx-oss", "bench", "--hosts=h"])
    calls.clear()
    with pytest.raises(RuntimeError):
        with dcli.group(Namespace(hosts="h")):
            raise RuntimeError("peer lost")
    assert calls == [("start", "h", ["bench", "--hosts=h"]), "joined", "wait"]
    assert session.watchdog.log[-1] == ("abort", dcli.PEER_LOSS_GRACE_S) and dcli.PEER_LOSS_GRACE_S == 2.0
    with pytest.raises(KeyboardInterrupt):
        with dcli.group(Namespace(hosts=None)):
            raise KeyboardInterrupt
    assert session.watchdog.log[-1] == ("abort", 0.0) and calls[-1] == "wait"


def test_load_checks_the_checkpoint_and_follow_rank_0_runs_until_exit(pair, tiny_converted, monkeypatch, followers):
    """Both ranks resolve, check the digest, load their slice (ready), and the follower runs rank 0's
    commands until rank 0 ends the run."""
    resolved = []
    monkeypatch.setattr(dcli, "resolve_once_per_host", lambda name, status: resolved.append((name, status)) or tiny_converted)
    lead, fol = pair
    sessions = [Session(m.comm, _Dog(r, 2, None)) for r, m in enumerate(pair)]

    def rank0():
        model, tok = dcli.load(sessions[0], "tiny", "bfloat16", status=print)
        ready = sessions[0].ready
        eng = LeaderEngine(model)
        toks = list(eng.generate(TOKENS[:5], GREEDY, max_tokens=2, stop_tokens=()))
        dcli.end(sessions[0])
        return model, tok, ready, toks, eng.tokens

    (model, tok, ready, toks, held), code = _ranks([lead.comm, fol.comm], rank0,
                                                   lambda: dcli.follow_rank_0(sessions[1], "tiny", "bfloat16"))  # fmt: skip
    assert code == 0 and ready and not sessions[0].ready and sessions[1].ready
    assert [n for n, _ in resolved] == ["tiny", "tiny"] and sum(st is print for _, st in resolved) == 1
    assert all(callable(st) and st("msg") is None for _, st in resolved)
    assert model.source == tiny_converted and model.plan.rank == 0 and model.layers[0].attn.sinks.dtype == mx.bfloat16
    from mlx_oss.tokenizer import load_tokenizer

    assert tok is load_tokenizer(tiny_converted)  # the folder's own tokenizer
    (eng,) = followers[0].engines.values()
    assert eng.tokens == held and len(toks) == 2


def test_load_falls_back_to_the_bundled_tokenizer(tiny_converted, monkeypatch):
    import mlx_oss.tokenizer as tk

    monkeypatch.setattr(dcli, "resolve_once_per_host", lambda name, status: tiny_converted)
    real = tk.load_tokenizer

    def no_folder_vocab(path=None):
        if path is not None:
            raise ValueError("no o200k_base.tiktoken there")
        return real(None)

    monkeypatch.setattr(tk, "load_tokenizer", no_folder_vocab)
    session = Session(Comm(FakeGroup(0, 1)), _Dog(0, 1, None))
    model, tok = dcli.load(session, "tiny", "float32", status=print)
    assert tok is real(None) and session.ready and model.plan.size == 1


def test_dense_quantized_folder_shards_to_the_same_logits(tiny_hf, tmp_path_factory):
    """`--dense-bits 8`: the affine-quantized embedding is split by rows and the quantized dense layers
    by whole groups; 2 ranks give the one-process logits of the same folder."""
    from mlx_oss.convert.convert import convert_checkpoint
    from mlx_oss.distributed.layers import QuantizedVocabShardedEmbedding
    from mlx_oss.loader import load

    folder = convert_checkpoint(tiny_hf, tmp_path_factory.mktemp("q8") / "q8", dense_bits=8, progress=False).dst
    c = _comms(2)
    models = [load_sharded(folder, c[r], "float32") for r in range(2)]
    assert isinstance(models[1].embed, QuantizedVocabShardedEmbedding) and models[1].embed._start == models[1].plan.vocab
    tokens = mx.array([TOKENS], dtype=mx.int32)
    got = _ranks(c, *[(lambda m=m: np.array(m(tokens))) for m in models])
    ref = np.array(load(folder, "float32")[0](tokens))
    assert np.array_equal(got[0], got[1])
    assert np.abs(got[0] - ref).max() <= 1e-5 * np.abs(ref).max()


# ---------------------------------------------------------------------------------- quantized KV cache (issue 30)


@pytest.fixture(scope="module")
def kv_folder(tmp_path_factory):
    """The tiny preset at gpt-oss's head_dim 64 (the golden tiny's 16 cannot be grouped by
    `mx.quantize`), 8-slot window, converted."""
    from mlx_oss.convert.convert import convert_checkpoint
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    root = tmp_path_factory.mktemp("kvq")
    src = write_checkpoint(root / "src", preset("tiny", head_dim=64), "hf", seed=0)
    return convert_checkpoint(src, root / "converted", progress=False).dst


def _sessions(n: int) -> list[Session]:
    c = _comms(n)
    return [Session(c[r], _Dog(r, n, None)) for r in range(n)]


def _quantized_turns(new_engine):
    """Turns whose 8-slot rings wrap: a prefill with a boundary (snapshots at 10 and 14), a turn that
    reuses all of it, a turn that leaves the conversation at 12 (the rings cannot be trimmed back: they
    come back from the snapshot at 10), a prefill that does so again, then the server pool's moves
    (detach, fork, attach, a turn on each copy). -> (each step's result, the prefills' logits, the engines)."""
    log, logits = [], []
    eng = new_engine()
    lg, keep = eng.prefill(TOKENS[:14], boundaries=[10])
    logits.append(np.array(lg))
    log.append((keep, eng.tokens, [s.position for s in eng.snapshots]))
    for prompt in (TOKENS[:14] + [33, 44], TOKENS[:12] + [61, 62, 63]):
        g = eng.generate(prompt, GREEDY, max_tokens=4, stop_tokens=())
        log.append((list(g), g.reused_tokens))
    lg, keep = eng.prefill(TOKENS[:11] + [70, 71, 72])
    logits.append(np.array(lg))
    log.append((keep, [s.position for s in eng.snapshots]))
    s = eng.detach()
    f = s.fork()
    eng.attach(s)
    other = new_engine()
    other.attach(f)
    for e, extra in ((eng, 80), (other, 81)):
        g = e.generate(TOKENS[:11] + [70, 71, 72, extra], GREEDY, max_tokens=3, stop_tokens=())
        log.append((list(g), g.reused_tokens))
    return log, logits, (eng, other)


def _kinds(engine) -> list:
    return [(type(c).__name__, getattr(c, "bits", None), getattr(c, "group_size", None)) for c in engine.cache]


@pytest.mark.parametrize("bits,group", [(8, 64), (4, 32)])
def test_a_quantized_kv_cache_on_two_ranks_equals_one_engine(kv_folder, monkeypatch, followers, bits, group):
    """`load(kv_bits=)` on rank 0, a follower given no setting of its own (it takes rank 0's): every
    rank's caches are the quantized ones, and the turns (snapshot restores after the rings wrapped,
    detach / fork / attach) give one quantized Engine's tokens, reuse and logits, which differ from
    an unquantized cache's."""
    from mlx_oss.loader import load

    monkeypatch.setattr(dcli, "resolve_once_per_host", lambda name, status: kv_folder)
    s = _sessions(2)

    def rank0():
        model, _ = dcli.load(s[0], "kv", "float32", status=print, kv_bits=bits, kv_group_size=group)
        log, logits, engines = _quantized_turns(lambda: LeaderEngine(model))
        held = [(e.tokens, e.snapshots) for e in engines]
        res = log, logits, [e.id for e in engines], held, [_kinds(e) for e in engines]
        dcli.end(s[0])
        return res, (model.kv_bits, model.kv_group_size)

    ((log, logits, ids, held, kinds), setting), code = _ranks(
        [x.comm for x in s], rank0, lambda: dcli.follow_rank_0(s[1], "kv", "float32"))  # fmt: skip
    ref_model, _ = load(kv_folder, "float32", kv_bits=bits, kv_group_size=group)
    ref_log, ref_logits, _ = _quantized_turns(lambda: Engine(ref_model))
    assert code == 0 and log == ref_log
    assert log[0] == (0, TOKENS[:14], [10, 14]) and log[1][1] == 14 and log[2][1] == 10 and log[3] == (10, [10, 14])
    assert log[4][1] == log[5][1] == 14  # both copies of the pool's state reused their prefix
    for got, ref in zip(logits, ref_logits):
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    plain = _quantized_turns(lambda: Engine(load(kv_folder, "float32")[0]))[1]
    for got, ref in zip(logits, plain):  # the quantization is there on every rank (the heads are split)
        assert np.abs(got - ref).max() > 1e-3 * np.abs(ref).max()
    want = [("RotatingKVCache", None, None), ("QuantizedKVCache", bits, group)] * 2  # the window in full precision
    f = followers[0]
    assert setting == (f.model.kv_bits, f.model.kv_group_size) == (bits, group)
    for eid, (toks, snaps), k in zip(ids, held, kinds):
        assert k == _kinds(f.engines[eid]) == want
        assert f.engines[eid].tokens == toks
        assert [(x.position, x.kind) for x in f.engines[eid].snapshots] == [(x.position, x.kind) for x in snaps]


def test_an_engine_s_own_kv_setting_reaches_the_follower(pair, reference, followers):
    """`LeaderEngine(kv_bits=)` (a `DistributedChat(kv_bits=)`) on a model loaded unquantized: the header
    carries the engine's setting, so the follower's engine quantizes alike; the golden tiny (head_dim
    16) takes 16-value groups nowhere, so here the check is the cache kinds and the same refusal."""
    lead, fol = pair
    with pytest.raises(ValueError, match=r"^kv_group_size 32 does not divide the model's head_dim 16$"):
        LeaderEngine(lead, kv_bits=8, kv_group_size=32)  # refused before any command goes out
    f = Follower(fol, fol.comm)
    base = {"max_context": 64, "prefill_chunk": 8, "max_snapshots": 4}
    f.run(Command(RESET, engine=2, **base), [])  # an old header (no kv fields): the model's setting
    assert _kinds(f.engines[2])[:2] == [("RotatingKVCache", None, None), ("KVCache", None, None)]
    f.run(Command(RESET, engine=3, kv_bits=0, kv_group_size=64, **base), [])
    assert f.engines[3].kv_bits is None and _kinds(f.engines[3])[1] == ("KVCache", None, None)
    with pytest.raises(ValueError, match=r"^kv_group_size 32 does not divide the model's head_dim 16$"):
        f.run(Command(RESET, engine=4, kv_bits=8, kv_group_size=32, **base), [])


def test_an_engine_s_own_kv_setting_is_mirrored_on_a_head_dim_64_model(kv_folder, followers):
    """An unquantized load, then `LeaderEngine(kv_bits=8, kv_group_size=32)` next to a plain one: the
    follower's twin of each engine has the same kind of caches, and the quantized one's tokens are one
    Engine(kv_bits=8, kv_group_size=32)'s."""
    c = _comms(2)
    models = [load_sharded(kv_folder, c[r], "float32") for r in range(2)]
    prompt = TOKENS[:14]

    def rank0():
        q, plain = LeaderEngine(models[0], kv_bits=8, kv_group_size=32), LeaderEngine(models[0])
        out = [list(e.generate(prompt, GREEDY, max_tokens=4, stop_tokens=())) for e in (q, plain)]
        q.reset()  # fresh caches of the same kind on every rank
        out.append(list(q.generate(prompt, GREEDY, max_tokens=4, stop_tokens=())))
        res = out, [(e.id, _kinds(e)) for e in (q, plain)]
        end_followers(models[0].comm)
        return res

    (out, kinds), _ = _ranks(c, rank0, _follow(models[1]))
    from mlx_oss.loader import load

    ref = load(kv_folder, "float32")[0]
    one = Engine(ref, kv_bits=8, kv_group_size=32)
    assert out[0] == out[2] == list(one.generate(prompt, GREEDY, max_tokens=4, stop_tokens=()))
    assert out[1] == list(Engine(ref).generate(prompt, GREEDY, max_tokens=4, stop_tokens=()))
    (qid, qk), (pid, pk) = kinds
    want = [("RotatingKVCache", None, None), ("QuantizedKVCache", 8, 32)] * 2
    assert qk == _kinds(followers[0].engines[qid]) == want
    assert pk == _kinds(followers[0].engines[pid]) == [("RotatingKVCache", None, None), ("KVCache", None, None)] * 2


@pytest.mark.parametrize("mine,theirs,msg0,msg1", [
    ((8, 64), (4, 64), "--kv-bits 8 --kv-group-size 64", "--kv-bits 4 --kv-group-size 64"),
    ((8, 64), (8, 32), "--kv-bits 8 --kv-group-size 64", "--kv-bits 8 --kv-group-size 32"),
    ((None, 64), (8, 64), "unquantized", "--kv-bits 8 --kv-group-size 64"),
    ((4, 128), (None, 128), "--kv-bits 4 --kv-group-size 128", "unquantized"),
])  # fmt: skip
def test_ranks_whose_kv_settings_differ_stop_with_one_line(kv_folder, monkeypatch, mine, theirs, msg0, msg1):
    """Every rank's own --kv-bits / --kv-group-size against rank 0's: a difference stops every rank with
    one line (none is left in a collective), before any weight is read."""
    import mlx_oss.distributed.load as dload

    monkeypatch.setattr(dcli, "resolve_once_per_host", lambda name, status: kv_folder)
    monkeypatch.setattr(dload, "load_sharded", lambda *a: pytest.fail("weights read despite the mismatch"))
    s = _sessions(2)

    def rank(r, kv):
        try:
            dcli.load(s[r], "kv", "float32", status=print, kv_bits=kv[0], kv_group_size=kv[1])
        except PeerMismatch as e:
            return str(e)

    got = _ranks([x.comm for x in s], lambda: rank(0, mine), lambda: rank(1, theirs))
    tail = f"differs from rank 0's ({msg0}); run every rank with the same --kv-bits and --kv-group-size"
    assert got == [f"1 other rank(s)' KV cache {tail}", f"this rank's KV cache ({msg1}) {tail}"]
    assert not s[0].ready and not s[1].ready


def test_kv_agreement_takes_rank_0s_setting_and_ignores_an_unused_group_size():
    """Three ranks: one with its own equal setting, one with none (it takes rank 0's); the group size of
    an unquantized cache is not compared; two differing ranks are counted on the others."""
    c = _comms(3)
    got = _ranks(c, lambda: dsession.agree_kv_cache(c[0], 8, 32), lambda: dsession.agree_kv_cache(c[1], 8, 32),
                 lambda: dsession.agree_kv_cache(c[2], None, 64, own=False))  # fmt: skip
    assert got == [(8, 32)] * 3
    c = _comms(2)
    got = _ranks(c, lambda: dsession.agree_kv_cache(c[0], None, 32), lambda: dsession.agree_kv_cache(c[1], None, 64))
    assert got == [(None, 32)] * 2
    c = _comms(3)

    def agree(r, bits):
        try:
            return dsession.agree_kv_cache(c[r], bits, 64)
        except PeerMismatch as e:
            return str(e)

    got = _ranks(c, lambda: agree(0, None), lambda: agree(1, 8), lambda: agree(2, 8))
    assert got[0] == ("2 other rank(s)' KV cache differs from rank 0's (unquantized); run every rank with the same "
                      "--kv-bits and --kv-group-size")  # fmt: skip
    assert got[1] == got[2] and got[1].startswith("this rank's KV cache (--kv-bits 8 --kv-group-size 64) differs")
    solo = Comm(FakeGroup(0, 1))
    assert dsession.agree_kv_cache(solo, 4, 128) == (4, 128) and dsession.agree_kv_cache(solo, None, 64) == (None, 64)


def test_kv_settings_that_cannot_apply_are_refused_on_every_rank(tiny_converted, monkeypatch):
    """A bad value of this rank's own is refused before anything else; a group size the model's head_dim
    (16 here) cannot take is refused on every rank alike, before any weight is read."""
    import mlx_oss.distributed.load as dload

    monkeypatch.setattr(dcli, "resolve_once_per_host", lambda name, status: tiny_converted)
    solo = Session(Comm(FakeGroup(0, 1)), _Dog(0, 1, None))
    with pytest.raises(ValueError, match=r"^kv_bits must be 4 or 8 \(None: an unquantized cache\), got 6$"):
        dcli.load(solo, "tiny", "float32", status=print, kv_bits=6)
    with pytest.raises(ValueError, match=r"^kv_group_size must be 32, 64 or 128, got 16$"):
        dcli.load(solo, "tiny", "float32", status=print, kv_bits=8, kv_group_size=16)
    monkeypatch.setattr(dload, "load_sharded", lambda *a: pytest.fail("weights read for a setting that cannot apply"))
    s = _sessions(2)

    def rank(r, **kw):
        try:
            dcli.load(s[r], "tiny", "float32", status=print, **kw)
        except ValueError as e:
            return str(e)

    got = _ranks([x.comm for x in s], lambda: rank(0, kv_bits=8), lambda: rank(1, own_kv=False))
    assert got == ["kv_group_size 64 does not divide the model's head_dim 16"] * 2


def test_load_without_kv_arguments_leaves_the_cache_unquantized(tiny_converted, monkeypatch):
    monkeypatch.setattr(dcli, "resolve_once_per_host", lambda name, status: tiny_converted)
    solo = Session(Comm(FakeGroup(0, 1)), _Dog(0, 1, None))
    model, _ = dcli.load(solo, "tiny", "float32", status=print, kv_group_size=None)
    assert (model.kv_bits, model.kv_group_size) == (None, 64) and _kinds(Engine(model))[0][0] == "RotatingKVCache"
