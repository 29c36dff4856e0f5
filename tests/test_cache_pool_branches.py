"""The prompt-cache pool beyond one conversation: branches, three conversations taking turns, and
which state goes when the byte budget is full. Every generation's first logits are checked against a
from-scratch forward pass (float32, relative error <= 1e-5), on the tiny chat model (sliding window 8:
resuming inside a conversation needs the snapshots). Prompts are rendered as the server renders them
(`Turn.render`, with its snapshot boundaries), and `prepare` runs before each generation as in
`server/generation.py`."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlx_oss
from mlx_oss.engine import Engine
from mlx_oss.harmony import Message
from mlx_oss.sampling import Sampler, SamplingConfig
from mlx_oss.server.cache_pool import PromptCachePool
from mlx_oss.server.conversation import Turn

INSTRUCTIONS = "Shared instructions for every conversation."


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


def render(tok, texts) -> tuple[list[int], tuple[int, ...]]:
    """user / assistant / user ... as the server renders a request (prompt, snapshot boundaries)."""
    history = tuple(Message.user(t) if i % 2 == 0 else Message.assistant(t) for i, t in enumerate(texts))
    return Turn(history, INSTRUCTIONS).render(tok)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class Served:
    """One engine + pool, serving requests as the server's worker does (prepare, then generate)."""

    def __init__(self, model, tok, max_bytes: int = 1 << 30) -> None:
        self.model, self.tok = model, tok
        self.engine = Engine(model)
        self.pool = PromptCachePool(max_bytes)
        self.prompts: dict[str, list[int]] = {}  # conversation name -> its latest prompt

    def serve(self, name: str, texts, n: int = 3) -> int:
        """prepare + generate n greedy tokens; checks the first logits against a fresh pass; -> reused tokens."""
        prompt, boundaries = render(self.tok, texts)
        reuse = self.pool.prepare(self.engine, prompt)
        seen = []

        def record(context, logits):
            if not seen:
                seen.append(np.array(logits.reshape(-1)))
            return logits

        gen = self.engine.generate(prompt, Sampler(SamplingConfig(temperature=0, logits_processors=(record,))),
                                   max_tokens=n, boundaries=boundaries)  # fmt: skip
        list(gen)
        assert gen.reused_tokens == reuse
        fresh = np.array(self.model(mx.array([prompt]), None, last_only=True)[0, -1])
        err = rel_error(seen[0], fresh)
        assert err <= 1e-5, f"{name}: logits after reusing {reuse} cached tokens differ from a fresh pass ({err:.2e})"
        self.prompts[name] = prompt
        return reuse

    def owners(self) -> list[str]:
        """The pool's entries, oldest first, named by the conversation whose latest prompt they were built for."""
        out = []
        for e in self.pool._entries:
            names = [n for n, p in self.prompts.items() if tuple(p) == e.state.tokens[: e.prompt_end]]
            assert len(names) == 1, f"a pool entry matches {names}"
            out.append(names[0])
        return out


A = ["conversation A opening words", "A reply one", "A second question"]
A2 = A + ["A reply two", "A third question"]


def start_a(s: Served) -> None:
    """Conversation A over two requests (an agent loop: the live state extends), so that A's state has
    a snapshot at its first prompt's end, inside the conversation."""
    s.serve("A", A)
    assert s.serve("A", A2) == len(render(s.tok, A)[0])


def test_a_branch_before_the_end_leaves_the_original_exact(model_tok):
    """The class of the 'pooled state handed out instead of a fork' break: a request that branches an
    earlier conversation inside it (an edited or regenerated turn) writes its own tokens past the branch
    point; the original, resumed afterwards, must still read its own keys and values."""
    model, tok = model_tok
    s = Served(model, tok)
    start_a(s)
    shared = render(tok, ["x"])[1][1]  # end of the developer message: what any two conversations share
    # A second conversation while A is live: A goes to the pool as a fork, the engine's buffers are B's now.
    b = ["conversation B is something else"]
    assert s.serve("B", b) == shared
    assert s.owners() == ["A"]
    # A branch of A at its second reply (a regenerate): A's state serves the common part, as a fork.
    branch = A + ["A different reply two", "A branch question"]
    assert s.serve("branch", branch) == len(render(tok, A)[0])  # A's snapshot at its first prompt's end
    assert s.owners() == ["A", "B"]  # A stays (forked, not moved); B left the engine
    # A resumed: its state is moved into the engine and reads what A wrote, not what the branch wrote.
    assert s.serve("A", A2 + ["A reply three", "A fourth question"]) == len(render(tok, A2)[0])
    assert s.owners() == ["B", "branch"]  # moved: no copy of A left behind
    # The branch and B were kept intact too.
    assert s.serve("branch", branch + ["branch reply", "branch goes on"]) == len(render(tok, branch)[0])
    assert s.serve("B", b + ["B reply", "B again"]) == len(render(tok, b)[0])
    assert sorted(s.owners()) == ["A", "branch"]


def test_the_live_conversation_branched_keeps_its_own_cache(model_tok):
    """A regenerate of the conversation in the engine (no pool entry serves it better): the live state
    is forked into the pool before the branch writes over its tail, and resuming it reuses all of it."""
    model, tok = model_tok
    s = Served(model, tok)
    start_a(s)
    branch = A + ["A regenerated reply two", "A other question"]
    assert s.serve("branch", branch) == len(render(tok, A)[0])
    assert s.owners() == ["A"]
    assert s.serve("A", A2 + ["A reply three", "A fourth"]) == len(render(tok, A2)[0])
    assert s.owners() == ["branch"]


def test_three_conversations_taking_turns_each_resume_their_own_state(model_tok):
    """Each turn picks the state with the longest reusable prefix (its own conversation's), whatever
    was used last; the pool then holds exactly the other conversations."""
    model, tok = model_tok
    s = Served(model, tok)
    convs = {n: [f"conversation {n} opening, its own words number {i}"] for i, n in enumerate("ABC")}
    shared = render(tok, ["x"])[1][1]
    for turn in range(3):
        for name in "ABC":
            texts = convs[name]
            before = s.prompts.get(name)
            reuse = s.serve(name, texts)
            if before is None:
                assert reuse == (0 if name == "A" else shared)
            else:
                assert reuse == len(before), f"turn {turn} of {name} did not resume its own state"
            assert sorted(s.owners()) == [n for n in "ABC" if n != name and n in s.prompts]
            texts += [f"{name} reply {turn}", f"{name} question {turn}"]


def test_a_tie_goes_to_the_most_recently_used_state(model_tok):
    """Two pool states that serve a request equally well (the same prompt generated twice): the one
    used last is moved into the engine, the older stays."""
    model, tok = model_tok
    s = Served(model, tok)
    s.serve("A", A)
    s.serve("X", ["an unrelated conversation X"])  # A forked into the pool
    [older] = s.pool._entries
    s.serve("A", A)  # the same prompt again: served by a fork of the pooled A, which counts as a use
    assert older.last_used == s.pool._clock
    s.serve("Y", ["another unrelated conversation Y"])  # the regenerated A forked into the pool, used last
    [newer] = [e for e in s.pool._entries if e is not older and e.state.tokens == older.state.tokens]
    assert newer.last_used > older.last_used
    assert s.serve("A", A2) == len(render(tok, A)[0])
    assert [e for e in s.pool._entries if e.state.tokens == older.state.tokens] == [older]


def test_a_full_budget_evicts_the_least_recently_used_state(model_tok):
    """`max_bytes` over: entries go least recently used first, where a fork taken from an entry counts
    as a use (A, stashed first, outlives B and C because a branch was forked from it after them)."""
    model, tok = model_tok
    s = Served(model, tok)
    start_a(s)
    for name in "BCD":
        s.serve(name, [f"conversation {name}, its opening message"])
    assert s.owners() == ["A", "B", "C"]  # stashed in that order; D is in the engine
    branch = A + ["A different reply two", "A branch question"]
    s.serve("branch", branch)  # forked from A: A used now; D stashed
    assert sorted(s.owners()) == ["A", "B", "C", "D"]
    for gone in ("B", "C"):
        s.pool.max_bytes = s.pool.nbytes - 1  # one byte short: exactly one entry must go
        before = set(s.owners())
        branch += ["branch reply", f"branch question {gone}"]
        assert s.serve("branch", branch) > 0  # the branch goes on in the engine: nothing stashed, only evicted
        assert before - set(s.owners()) == {gone}
    assert sorted(s.owners()) == ["A", "D"]
    assert s.serve("A", A2 + ["A reply three", "A fourth"]) == len(render(tok, A2)[0])


def test_zero_bytes_keeps_only_the_state_in_the_engine(model_tok):
    model, tok = model_tok
    s = Served(model, tok, max_bytes=0)
    start_a(s)  # the live state is kept and reused
    assert len(s.pool) == 0 and s.pool.nbytes == 0
    shared = render(tok, ["x"])[1][1]
    assert s.serve("B", ["conversation B is something else"]) == shared
    assert len(s.pool) == 0
    assert s.serve("A", A2 + ["A reply three", "A fourth"]) == shared  # A was not kept: prefilled again
