"""The TUI's one door to mlx_oss: loading a model, making `Chat`s, and the thread every model call runs on.

Nothing here draws anything; `app.py` is the Textual UI over these pieces. Every model call (resolve/load,
`send()` iteration, `reset()`, `from_json()`) runs on one long-lived daemon thread (`ModelThread`), so MLX
state stays on a single thread; `Chat.cancel()` is thread-safe and is called straight from the UI thread.
"""

from __future__ import annotations

import queue
import sys
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from mlx_oss.cli.args import EFFORTS
from mlx_oss.harmony import ReasoningEffort

__all__ = ["EFFORTS", "Backend", "default_model", "ChatOptions", "ChatSession", "Failure", "Finished", "Loader", "ModelThread",
           "agree_model", "effort_name", "follow", "is_follower", "join_group", "model_label", "model_loader", "on_lost_peer",
           "prompt_size", "run_send", "session_loader"]  # fmt: skip

def effort_name(e: Any) -> str:
    """A session's reasoning effort (enum or string) as "low" / "medium" / "high"."""
    return str(getattr(e, "value", e) or ReasoningEffort.MEDIUM.value)


class ChatSession(Protocol):
    """The part of `mlx_oss.Chat` the app uses (docs/ENGINE_API.md)."""

    reasoning_effort: Any
    instructions: str | None

    def send(self, text: str) -> Iterator[Any]: ...
    def cancel(self) -> None: ...
    def reset(self) -> None: ...
    def to_json(self) -> Any: ...
    @property
    def messages(self) -> Iterable[Any]: ...


@dataclass
class Backend:
    """A loaded model and how to make chats with it; the app never touches MLX directly."""

    name: str
    new_chat: Callable[[], ChatSession]
    open_chat: Callable[[Any], ChatSession]
    context_limit: int | None = None
    memory_bytes: Callable[[], int] | None = None
    close: Callable[[], None] | None = None  # run on the model thread as the app ends (a group: the other ranks stop)


Loader = Callable[[Callable[[str], None]], Backend]
"""Runs on the model thread; reports stages through the callback; raises on failure."""


@dataclass
class ChatOptions:
    """Chat settings from the command line, passed to every `Chat` the app creates."""

    reasoning_effort: str = "medium"
    instructions: str | None = None
    tools: list[Callable[..., Any]] | None = None
    sampling: Any = None  # mlx_oss.SamplingConfig
    max_tokens: int | None = None
    max_context: int | None = None
    max_reasoning_tokens: int | None = None  # None: no limit (and not passed, so Chat's default holds)
    dtype: str | None = None  # for mlx_oss.load; None: the device default
    kv_bits: int | None = None  # for mlx_oss.load: a quantized KV cache (8 or 4); None: not quantized
    kv_group_size: int = 64
    builtin: Callable[[], dict[str, Any]] | None = None  # fresh built-in tool kwargs for each Chat

    def builtin_kwargs(self) -> dict[str, Any]:
        return self.builtin() if self.builtin is not None else {}

    def chat_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"reasoning_effort": self.reasoning_effort, "instructions": self.instructions,
                              "max_tokens": self.max_tokens, "max_context": self.max_context}  # fmt: skip
        if self.tools:
            kw["tools"] = list(self.tools)
        if self.sampling is not None:
            kw["sampling"] = self.sampling
        if self.max_reasoning_tokens is not None:
            kw["max_reasoning_tokens"] = self.max_reasoning_tokens
        kw.update(self.builtin_kwargs())
        return kw


def model_label(name: str) -> str:
    """`openai/gpt-oss-20b` -> `gpt-oss-20b`; a folder -> its name (a trailing / is not part of it)."""
    return Path(str(name)).name or str(name)


def model_loader(model: str, options: ChatOptions, group: Any = None) -> Loader:
    """The real loader: resolve (download / convert once / as is), load, and make `Chat`s. With
    `group` (rank 0 of `--hosts`, see `join_group`): this rank's slice, and chats whose engines
    lead the other ranks (`DistributedChat`)."""

    def load(say: Callable[[str], None]) -> Backend:
        import mlx_oss

        if group is None:
            from mlx_oss.store import resolve_model

            path = resolve_model(model, progress=True, status=say, download_bars=True)
            say(f"Loading weights from {path}")
            m, tok = mlx_oss.load(path, dtype=options.dtype, kv_bits=options.kv_bits, kv_group_size=options.kv_group_size)
            chat_class: Any = mlx_oss.Chat
        else:
            from mlx_oss.distributed import cli as dist
            from mlx_oss.distributed.engine import DistributedChat

            say(f"Loading rank 0's slice of {group.size} ranks")
            m, tok = dist.load(group, model, options.dtype, status=say, kv_bits=options.kv_bits,
                               kv_group_size=options.kv_group_size)
            chat_class = DistributedChat

        def new_chat() -> ChatSession:
            return chat_class(m, tok, **options.chat_kwargs())  # each chat its own tools (python session)

        def open_chat(data: Any) -> ChatSession:
            # Callables cannot be saved in JSON: this session's --tools replace the saved schemas.
            return chat_class.from_json(data, m, tok, tools=options.tools, **options.builtin_kwargs())

        limit = options.max_context or getattr(getattr(m, "args", None), "max_position_embeddings", None)
        say("Ready")
        close = None
        if group is not None:
            from mlx_oss.distributed import cli as dist

            def close() -> None:  # on the model thread, where the engines' arrays live
                dist.end(group)

        return Backend(model_label(model), new_chat, open_chat, context_limit=limit, memory_bytes=_mlx_memory, close=close)

    return load


@contextmanager
def join_group(a: Any) -> Iterator[Any]:
    """`--hosts HOSTFILE` (or started by `mlx.launch`): start / join the group; yields this rank's
    session, None for a single-machine chat. The other ranks are told to stop at the end."""
    from mlx_oss.distributed import cli as dist

    with dist.group(a) as group:
        yield group


def is_follower() -> bool:
    """A rank other than 0: it shows nothing and runs rank 0's commands (`follow`)."""
    from mlx_oss.distributed.session import is_follower as follower

    return follower()


def follow(group: Any, dtype: str | None) -> int:
    """A follower rank of `mlx-oss chat`: load the model rank 0 names, run its commands until it ends."""
    from mlx_oss.distributed import cli as dist

    return dist.follow_rank_0(group, dist.agree_model(group, None), dtype)


def agree_model(group: Any, model: str) -> str:
    """Rank 0: tell the followers which model to load (the resumed chat's may be known only here)."""
    from mlx_oss.distributed import cli as dist

    return dist.agree_model(group, model) if group is not None else model


def on_lost_peer(group: Any, stop_ui: Callable[[str], None]) -> None:
    """`stop_ui(message)` runs before a lost rank ends the process (give the terminal back first)."""
    if group is not None:
        group.watchdog.on_failure(stop_ui)


def default_model() -> str:
    """The model `mlx-oss chat` opens when neither --model nor a resumed chat names one."""
    from mlx_oss.store import DEFAULT_MODEL

    return DEFAULT_MODEL


def prompt_size(session: Any) -> int | None:
    """Tokens the conversation takes (what the status line's ctx shows for a chat just reopened)."""
    tokens = getattr(session, "prompt_tokens", None)
    return len(tokens()) if callable(tokens) else None


def session_loader(chat: Any, name: str = "gpt-oss") -> Loader:
    """Open the TUI on an `mlx_oss.Chat` built in Python (its model, settings and callable tools).
    Reopened conversations get the same callables, since JSON keeps only their schemas."""

    def load(say: Callable[[str], None]) -> Backend:
        fns = [t.fn for t in getattr(chat, "tools", ()) if getattr(t, "fn", None) is not None]

        def open_chat(data: Any) -> ChatSession:
            extra = {"tools": fns} if fns else {}
            return type(chat).from_json(data, getattr(chat, "model", None), getattr(chat, "tokenizer", None), **extra)

        return Backend(name, lambda: chat, open_chat, context_limit=getattr(chat, "max_context", None), memory_bytes=_mlx_memory)

    return load


def _mlx_memory() -> int:
    import mlx.core as mx

    get = getattr(mx, "get_active_memory", None) or getattr(getattr(mx, "metal", None), "get_active_memory", None)
    try:
        return int(get()) if get else 0
    except Exception:
        return 0


def _clear_mlx_streams() -> None:
    """MLX (0.32+) wants `clear_streams()` at the end of each thread that ran it; without it the
    process aborts at exit ("terminate called without an active exception")."""
    mx = sys.modules.get("mlx.core")
    if mx is not None and hasattr(mx, "clear_streams"):
        mx.clear_streams()


class ModelThread:
    """One daemon thread running every model call in order, so MLX state stays on one thread and the
    UI's event loop never blocks (and quitting never waits for a download)."""

    def __init__(self, name: str = "mlx-oss-engine") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        if not self._started:
            self._started = True
            self._thread.start()
        return fut

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                _clear_mlx_streams()
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting side
                fut.set_exception(e)

    def shutdown(self) -> None:
        """Finish the queued jobs, then stop (see `join`)."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after `shutdown`); False if it is still busy."""
        if self._started:
            self._thread.join(timeout)
        return not self._thread.is_alive()


class Failure:
    """An exception raised by `send()` (e.g. ContextLengthError), handed to the UI as an item."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Finished:
    """The `send()` iteration is over (always the last item of a turn)."""


def run_send(session: ChatSession, text: str | None, push: Callable[[Any], None],
             keep: Callable[[Any], None] | None = None) -> None:  # fmt: skip
    """On the model thread: hand every event of `session.send(text)` to `push`, then a `Failure` if it
    raised, then `Finished`. Never raises. `keep(event)` runs before each event is pushed, and once
    with None as soon as `send()` has taken the user message (the chat database writes each message
    as it completes). `text` None: answer the history's last message again (regenerate)."""
    try:
        stream = session.send(text)
        if keep is not None:
            keep(None)
        for ev in stream:
            if keep is not None:
                keep(ev)
            push(ev)
    except Exception as e:  # noqa: BLE001 - shown in the chat
        push(Failure(e))
    finally:
        push(Finished())
