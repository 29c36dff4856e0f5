"""`mlx_oss.tui.session`, the TUI's one door to the model, piece by piece and without Textual: the
loaders (what they resolve, load and hand to every `Chat`), the model thread, `run_send`'s item order,
and the `--hosts` hooks. The app and the real engine over these pieces: tests/test_tui_engine.py; the
group hooks on real ranks: tests/test_distributed.py (slow, multi-process), here on recording fakes."""

from __future__ import annotations

import sys
import threading
import types
from contextlib import contextmanager

import pytest

import mlx_oss
from mlx_oss.harmony import ReasoningEffort
from mlx_oss.tui import session as door
from mlx_oss.tui.session import ChatOptions, Failure, Finished, ModelThread, run_send

WAIT = 60  # seconds; generous, never a timing assert


def test_effort_name_reads_enums_and_strings_and_defaults_to_medium():
    assert door.effort_name(ReasoningEffort.HIGH) == "high"
    assert door.effort_name("low") == "low"
    assert door.effort_name(None) == "medium" and door.effort_name("") == "medium"


def test_model_label():
    assert door.model_label("openai/gpt-oss-20b") == "gpt-oss-20b"
    assert door.model_label("/models/gpt-oss-120b/") == "gpt-oss-120b"  # a trailing slash is not the name
    assert door.model_label("/") == "/" and door.model_label("") == ""  # no name part: the text itself
    assert door.model_label("models//gpt-oss-20b//") == "gpt-oss-20b"


def test_default_model_is_the_stores():
    from mlx_oss.store import DEFAULT_MODEL

    assert door.default_model() == DEFAULT_MODEL == "openai/gpt-oss-20b"


def test_chat_kwargs_pass_only_what_was_set():
    assert ChatOptions().chat_kwargs() == {"reasoning_effort": "medium", "instructions": None,
                                           "max_tokens": None, "max_context": None}  # fmt: skip
    assert ChatOptions().builtin_kwargs() == {}

    def ping(host: str) -> str:
        return host

    tools = [ping]
    sampling = object()
    calls = []
    o = ChatOptions(reasoning_effort="high", instructions="Be brief.", tools=tools, sampling=sampling, max_tokens=7,
                    max_context=99, builtin=lambda: calls.append(1) or {"browser": f"b{len(calls)}"})  # fmt: skip
    kw = o.chat_kwargs()
    assert kw == {"reasoning_effort": "high", "instructions": "Be brief.", "max_tokens": 7, "max_context": 99,
                  "tools": [ping], "sampling": sampling, "browser": "b1"}  # fmt: skip
    assert kw["tools"] is not tools  # each chat its own list
    assert o.builtin_kwargs() == {"browser": "b2"}  # fresh built-in tools for every chat
    assert "tools" not in ChatOptions(tools=[]).chat_kwargs()


def test_prompt_size():
    assert door.prompt_size(types.SimpleNamespace(prompt_tokens=lambda: [1, 2, 3])) == 3
    assert door.prompt_size(types.SimpleNamespace(prompt_tokens=[1, 2])) is None  # not callable
    assert door.prompt_size(object()) is None


class FakeChat:
    """Records how the loader builds and reopens chats (the real ones: tests/test_tui_engine.py)."""

    made: list = []

    def __init__(self, model, tok, **kw):
        self.model, self.tokenizer, self.kw = model, tok, kw
        FakeChat.made.append(("new", model, tok, kw))

    @classmethod
    def from_json(cls, data, model, tok, **kw):
        FakeChat.made.append(("open", data, model, tok, kw))
        return "reopened"


@pytest.fixture
def fake_load(monkeypatch):
    """`mlx_oss.load`/`Chat` and `store.resolve_model` replaced by recorders."""
    import mlx_oss.store

    seen: dict = {}
    model = types.SimpleNamespace(args=types.SimpleNamespace(max_position_embeddings=4321))

    def resolve(name, **kw):
        seen["resolve"] = (name, kw)
        return f"/resolved/{name}"

    def load(path, dtype=None, kv_bits=None, kv_group_size=64):
        seen["load"] = (path, dtype)
        seen["kv"] = (kv_bits, kv_group_size)
        return model, "tok"

    FakeChat.made = []
    monkeypatch.setattr(mlx_oss.store, "resolve_model", resolve)
    monkeypatch.setattr(mlx_oss, "load", load)
    monkeypatch.setattr(mlx_oss, "Chat", FakeChat)
    return seen, model


def test_model_loader_resolves_loads_and_builds_chats_with_the_options(fake_load):
    seen, model = fake_load

    def ping(host: str) -> str:
        return host

    opts = ChatOptions(reasoning_effort="low", tools=[ping], dtype="float16", builtin=lambda: {"python": "p"})
    stages = []
    backend = door.model_loader("org/some-model", opts)(stages.append)
    assert seen["resolve"] == ("org/some-model", {"progress": True, "status": stages.append, "download_bars": True})
    assert seen["load"] == ("/resolved/org/some-model", "float16")
    assert seen["kv"] == (None, 64)  # the cache as it always was, unless --kv-bits says otherwise
    assert stages == ["Loading weights from /resolved/org/some-model", "Ready"]
    assert backend.name == "some-model" and backend.context_limit == 4321  # the model's own limit
    assert backend.memory_bytes is door._mlx_memory and backend.close is None

    chat = backend.new_chat()
    assert isinstance(chat, FakeChat) and (chat.model, chat.tokenizer) == (model, "tok")
    assert chat.kw == {"reasoning_effort": "low", "instructions": None, "max_tokens": None, "max_context": None,
                       "tools": [ping], "python": "p"}  # fmt: skip
    assert backend.open_chat({"saved": 1}) == "reopened"
    assert FakeChat.made[-1] == ("open", {"saved": 1}, model, "tok", {"tools": [ping], "python": "p"})

    door.model_loader("m", ChatOptions(kv_bits=4, kv_group_size=32))(lambda s: None)
    assert seen["kv"] == (4, 32)  # `chat --kv-bits 4 --kv-group-size 32`: every chat's cache, through load
    assert door.model_loader("m", ChatOptions(max_context=77))(lambda s: None).context_limit == 77  # --max-context wins
    model.args = None
    assert door.model_loader("m", ChatOptions())(lambda s: None).context_limit is None
    del model.args  # a model without `args` (not ours): no known limit, no error
    assert door.model_loader("m", ChatOptions())(lambda s: None).context_limit is None


@pytest.fixture
def fake_dist(monkeypatch):
    """The `--hosts` side (mlx_oss.distributed.cli) as recorders: no ranks are started."""
    from mlx_oss.distributed import cli as dist
    from mlx_oss.distributed import engine as dist_engine
    from mlx_oss.distributed import session as dist_session

    calls: list = []
    model = types.SimpleNamespace(args=types.SimpleNamespace(max_position_embeddings=64))

    class FakeDistributedChat(FakeChat):
        pass

    def load(group, name, dtype, status, kv_bits=None, kv_group_size=64):
        calls.append(("load", group, name, dtype, kv_bits, kv_group_size))
        status("slice loaded")
        return model, "tok"

    @contextmanager
    def group(a):
        calls.append(("group", a))
        yield "the-group"
        calls.append(("group ended", a))

    monkeypatch.setattr(dist, "load", load)
    monkeypatch.setattr(dist, "end", lambda g: calls.append(("end", g)))
    monkeypatch.setattr(dist, "group", group)
    monkeypatch.setattr(dist, "agree_model", lambda g, name: calls.append(("agree", g, name)) or f"agreed:{name}")
    monkeypatch.setattr(dist, "follow_rank_0", lambda g, name, dtype: calls.append(("follow", g, name, dtype)) or 5)
    monkeypatch.setattr(dist_engine, "DistributedChat", FakeDistributedChat)
    monkeypatch.setattr(dist_session, "is_follower", lambda: calls.append("is_follower") or True)
    FakeChat.made = []
    return calls, model, FakeDistributedChat


def test_model_loader_in_a_group_loads_rank_0s_slice_and_ends_the_followers(fake_dist, monkeypatch):
    calls, model, chat_class = fake_dist
    monkeypatch.setattr(mlx_oss, "load", lambda *a, **k: pytest.fail("a group loads through dist.load"))
    group = types.SimpleNamespace(size=3)
    stages = []
    backend = door.model_loader("org/m", ChatOptions(dtype="bfloat16", max_tokens=4, kv_bits=8), group)(stages.append)
    assert calls == [("load", group, "org/m", "bfloat16", 8, 64)]  # rank 0's --kv-bits, agreed by the others
    assert stages == ["Loading rank 0's slice of 3 ranks", "slice loaded", "Ready"]
    assert backend.name == "m" and backend.context_limit == 64
    chat = backend.new_chat()
    assert type(chat) is chat_class and chat.model is model and chat.kw["max_tokens"] == 4
    assert backend.open_chat({}) == "reopened" and FakeChat.made[-1][0] == "open"
    assert calls[-1] != ("end", group)
    backend.close()
    assert calls[-1] == ("end", group)


def test_group_hooks(fake_dist):
    calls, _, _ = fake_dist
    a = types.SimpleNamespace(hosts="hosts.json")
    with door.join_group(a) as g:
        assert g == "the-group" and calls == [("group", a)]
    assert calls[-1] == ("group ended", a)

    calls.clear()
    assert door.is_follower() is True and calls == ["is_follower"]
    calls.clear()
    assert door.follow("g", "float16") == 5
    assert calls == [("agree", "g", None), ("follow", "g", "agreed:None", "float16")]  # the model comes from rank 0

    calls.clear()
    assert door.agree_model(None, "m") == "m" and calls == []  # one machine: nothing to agree on
    assert door.agree_model("g", "m") == "agreed:m" and calls == [("agree", "g", "m")]


def test_on_lost_peer_registers_the_ui_stop_only_in_a_group():
    registered = []
    group = types.SimpleNamespace(watchdog=types.SimpleNamespace(on_failure=registered.append))

    def stop(message):
        pass

    door.on_lost_peer(None, stop)
    door.on_lost_peer(group, stop)
    assert registered == [stop]


def test_not_following_outside_a_group(monkeypatch):
    for key in ("MLX_RANK", "MLX_HOSTFILE", "MLX_WORLD_SIZE", "MLX_JACCL_COORDINATOR"):
        monkeypatch.delenv(key, raising=False)
    assert door.is_follower() is False


def test_session_loader_opens_the_given_chat_and_reopens_with_its_callables():
    def ping(host: str) -> str:
        return host

    class GivenChat:
        opened: list = []

        def __init__(self, tools):
            self.tools = tools
            self.model, self.tokenizer, self.max_context = "model", "tok", 512

        @classmethod
        def from_json(cls, data, model, tok, **kw):
            cls.opened.append((data, model, tok, kw))
            return "reopened"

    chat = GivenChat([types.SimpleNamespace(fn=ping), types.SimpleNamespace(fn=None)])  # a schema-only tool
    backend = door.session_loader(chat, name="mine")(lambda s: None)
    assert backend.name == "mine" and backend.new_chat() is chat and backend.new_chat() is chat
    assert backend.context_limit == 512 and backend.memory_bytes is door._mlx_memory
    assert backend.open_chat({"a": 1}) == "reopened"
    assert GivenChat.opened == [({"a": 1}, "model", "tok", {"tools": [ping]})]
    chat.tools = [types.SimpleNamespace(fn=None)]
    door.session_loader(chat)(lambda s: None).open_chat({})
    assert GivenChat.opened[-1] == ({}, "model", "tok", {})  # no callables: no tools argument
    assert door.session_loader(chat)(lambda s: None).name == "gpt-oss"
    chat.tools = [types.SimpleNamespace(name="schema only")]  # a tool with no `fn` at all
    door.session_loader(chat)(lambda s: None).open_chat({})
    assert GivenChat.opened[-1] == ({}, "model", "tok", {})


def test_session_loader_on_a_chat_with_only_send_and_from_json():
    """Any object with the `ChatSession` methods will do: no tools, model, tokenizer or limit needed."""

    class Bare:
        opened: list = []

        def send(self, text):
            return iter(())

        @classmethod
        def from_json(cls, data, model, tok, **kw):
            cls.opened.append((data, model, tok, kw))
            return "reopened"

    chat = Bare()
    backend = door.session_loader(chat)(lambda s: None)
    assert backend.new_chat() is chat and backend.context_limit is None
    assert backend.open_chat({"b": 2}) == "reopened" and Bare.opened == [({"b": 2}, None, None, {})]


def test_mlx_memory(monkeypatch):
    import mlx.core as mx

    monkeypatch.setattr(mx, "get_active_memory", lambda: 1234.0, raising=False)
    assert door._mlx_memory() == 1234 and type(door._mlx_memory()) is int
    monkeypatch.setattr(mx, "get_active_memory", lambda: 1 / 0, raising=False)
    assert door._mlx_memory() == 0  # a memory read never breaks the status line
    monkeypatch.delattr(mx, "get_active_memory", raising=False)
    monkeypatch.setattr(mx, "metal", types.SimpleNamespace(get_active_memory=lambda: 77), raising=False)
    assert door._mlx_memory() == 77  # older MLX: under mx.metal
    monkeypatch.setattr(mx, "metal", None, raising=False)
    assert door._mlx_memory() == 0
    monkeypatch.delattr(mx, "metal")  # an MLX without mx.metal at all
    assert door._mlx_memory() == 0


def test_model_thread_runs_jobs_in_order_on_one_thread_and_clears_mlx_streams_at_the_end(monkeypatch):
    cleared = []
    monkeypatch.setitem(sys.modules, "mlx.core", types.SimpleNamespace(clear_streams=lambda: cleared.append(
        threading.current_thread().name)))  # fmt: skip
    t = ModelThread(name="door-test")
    assert t.join(0) is True  # never started: nothing to wait for
    seen = []
    futs = [t.submit(lambda i: seen.append((i, threading.current_thread().name)) or i * 10, i) for i in range(5)]
    assert [f.result(WAIT) for f in futs] == [0, 10, 20, 30, 40]
    assert seen == [(i, "door-test") for i in range(5)]
    assert t._thread.daemon  # quitting never waits for a download

    def fail():
        raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):  # BaseException too is handed over, not lost with the thread
        t.submit(fail).result(WAIT)
    assert t.submit(lambda a, b: a + b, 2, 3).result(WAIT) == 5  # the thread goes on after a failure

    gate, release = threading.Event(), threading.Event()
    blocker = t.submit(lambda: gate.set() or release.wait(WAIT))
    assert gate.wait(WAIT)
    skipped = t.submit(seen.append, "cancelled job ran")
    assert skipped.cancel()
    after = t.submit(lambda: "after")
    t.shutdown()
    assert t.join(0.01) is False  # still busy
    release.set()
    assert blocker.result(WAIT) is True and after.result(WAIT) == "after"
    assert t.join(WAIT) is True
    assert "cancelled job ran" not in seen and cleared == ["door-test"]


def test_model_thread_shutdown_without_mlx_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "mlx.core", raising=False)
    t = ModelThread()
    assert t._thread.name == "mlx-oss-engine"
    assert t.submit(lambda: 1).result(WAIT) == 1
    t.shutdown()
    assert t.join(WAIT) is True


class Sending:
    def __init__(self, events, fail_after=None, fail_at_send=None):
        self.events, self.fail_after, self.fail_at_send = events, fail_after, fail_at_send
        self.sent = []

    def send(self, text):
        self.sent.append(text)
        if self.fail_at_send is not None:
            raise self.fail_at_send
        return self._stream()

    def _stream(self):
        yield from self.events
        if self.fail_after is not None:
            raise self.fail_after


def test_run_send_pushes_events_then_finished_and_keeps_each_message():
    pushed, kept = [], []
    s = Sending(["a", "b"])
    run_send(s, "hi", pushed.append, lambda ev: kept.append((ev, list(pushed))))
    assert s.sent == ["hi"] and pushed[:2] == ["a", "b"] and isinstance(pushed[2], Finished) and len(pushed) == 3
    assert kept == [(None, []), ("a", []), ("b", ["a"])]  # kept before it is pushed; None once send() took the text

    pushed = []
    run_send(Sending(["a"]), None, pushed.append)  # no keeper; None: regenerate
    assert pushed[0] == "a" and isinstance(pushed[1], Finished) and len(pushed) == 2


def test_run_send_hands_failures_over_and_always_finishes():
    pushed, kept = [], []
    err = RuntimeError("context full")
    run_send(Sending(["a"], fail_after=err), "hi", pushed.append, kept.append)
    assert pushed[0] == "a" and isinstance(pushed[1], Failure) and pushed[1].error is err
    assert isinstance(pushed[2], Finished) and len(pushed) == 3 and kept == [None, "a"]

    pushed, kept = [], []
    run_send(Sending([], fail_at_send=ValueError("busy")), "hi", pushed.append, kept.append)
    assert [type(p) for p in pushed] == [Failure, Finished] and str(pushed[0].error) == "busy"
    assert kept == []  # send() refused the text: nothing to keep

    pushed = []
    with pytest.raises(KeyboardInterrupt):
        run_send(Sending([], fail_after=KeyboardInterrupt()), "hi", pushed.append)
    assert [type(p) for p in pushed] == [Finished]  # even then the turn is closed


def test_model_thread_ends_cleanly_on_an_mlx_without_clear_streams(monkeypatch):
    """MLX before 0.32 has no `clear_streams()`: the thread still ends without an error."""
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    monkeypatch.setitem(sys.modules, "mlx.core", types.SimpleNamespace())
    t = ModelThread()
    assert t.submit(lambda: 2).result(WAIT) == 2
    t.shutdown()
    assert t.join(WAIT) is True and errors == []
