"""`mlx-oss chat`: its flags (shared ones from mlx_oss/cli/args.py) and the checks before the full-screen app starts."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from mlx_oss.cli import args
from mlx_oss.errors import UsageError, UserError

__all__ = ["load_tools_file", "register", "run_chat"]


def load_tools_file(path: str | Path) -> list[Callable[..., Any]]:
    """The public functions defined in a Python file (or its `__all__`), to give the model as tools.

    The model sees each function's signature and docstring; the chat runs them when the model calls
    them and feeds the result back.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: no such file (--tools expects a Python file defining functions)")
    spec = importlib.util.spec_from_file_location(f"mlx_oss_tools_{abs(hash(str(p.resolve())))}", p)
    if spec is None or spec.loader is None:
        raise UserError(f"{p}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{p}: failed to import ({type(e).__name__}: {first})") from None
    names = getattr(module, "__all__", None)
    if names is not None:
        fns = [getattr(module, n, None) for n in names]
        bad = [n for n, f in zip(names, fns) if not callable(f)]
        if bad:
            raise UserError(f"{p}: __all__ names something that is not a function: {bad[0]}")
    else:
        fns = [
            obj for name, obj in vars(module).items()
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
        ]  # fmt: skip
    if not fns:
        raise UserError(f"{p}: defines no public functions to use as tools")
    return fns


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `chat` subcommand."""
    c = subparsers.add_parser(
        "chat",
        help="terminal chat with gpt-oss (streaming answer, live reasoning, tools)",
        description="Chat with gpt-oss in the terminal. Keys: Enter send, Esc stop, ctrl+t effort, "
        "ctrl+r reasoning, ctrl+n new, ctrl+g instructions, ctrl+s save, ctrl+o open, ctrl+l copy, "
        "ctrl+b chats, ↑ select messages (copy, edit, regenerate, delete), ctrl+p commands, ctrl+q quit. "
        "Chats are kept in the data folder (--data-dir). See docs/TUI.md.",
    )
    from mlx_oss.tui.datadir import DATA_DIR_ENV
    from mlx_oss.tui.session import default_model

    args.add_model(c, help=f"Hub id, checkpoint folder or converted folder, converted once (default {default_model()}, "
                           "or the resumed chat's own model)")  # fmt: skip
    c.set_defaults(model=None)  # None: DEFAULT_MODEL, or the model of the chat --resume opens
    args.add_effort(c, help="initial reasoning effort (ctrl+t switches it in the chat)")
    args.add_instructions(c)
    c.add_argument("--tools", default=None, metavar="FILE.py",
                   help="Python file whose public functions become tools the model can call")  # fmt: skip
    c.add_argument("--hide-reasoning", action="store_true", help="do not show the reasoning (analysis channel)")
    args.add_sampling(c)
    args.add_limits(c, max_context_help="context limit in tokens (default: the model's, 131072); lower it to bound memory")
    args.add_reasoning_budget(c)
    args.add_dtype(c)
    args.add_kv_cache(c)
    which = c.add_mutually_exclusive_group()
    which.add_argument("--list", action="store_true", help="list the stored chats (id, last change, title) and exit")
    which.add_argument("--resume", nargs="?", const="last", default=None, metavar="ID",
                       help="reopen a stored chat (no ID: the last one), its cache prefilled in the background")  # fmt: skip
    which.add_argument("--new", action="store_true", help="start with a new chat (the default)")
    c.add_argument("--data-dir", default=None, metavar="DIR",
                   help=f"where chats are kept (chats.sqlite3; default ${DATA_DIR_ENV} or the OS data folder, "
                        "e.g. ~/Library/Application Support/mlx-oss)")  # fmt: skip
    c.add_argument("--chats-dir", default=None, metavar="DIR",
                   help="where ctrl+s saves conversations (default $MLX_OSS_CHATS or ~/mlx-oss-chats)")  # fmt: skip
    args.add_builtin_tools(c)
    args.add_hosts(c)
    c.set_defaults(func=run_chat)


def list_chats(store: Any, out: Any = None) -> None:
    """`--list`: one line per stored chat, newest first."""
    from datetime import datetime

    out = out or sys.stdout
    chats = store.list()
    if not chats:
        print(f"No chats yet in {store.path}", file=out)
        return
    print(f"{'ID':>5}  {'UPDATED':16}  {'MSGS':>4}  TITLE", file=out)
    for c in chats:
        when = datetime.fromtimestamp(c.updated_at).strftime("%Y-%m-%d %H:%M")
        print(f"{c.id:>5}  {when:16}  {c.messages:>4}  {c.title or '(untitled)'}", file=out)
    print(f"{len(chats)} chat{'s' if len(chats) != 1 else ''} in {store.path}; resume one with: mlx-oss chat --resume ID", file=out)


def resume_target(store: Any, value: str | None) -> Any:
    """The stored chat `--resume` names (None without --resume)."""
    from mlx_oss.tui.storage import ChatStoreError

    if value is None:
        return None
    if value == "last":
        info = store.last()
        if info is None:
            raise ChatStoreError(f"--resume: no chats to resume yet in {store.path}")
        return info
    try:
        chat_id = int(value)
    except ValueError:
        raise ChatStoreError(f"--resume expects a chat id (a number from `mlx-oss chat --list`), got {value!r}") from None
    return store.get(chat_id)


def run_chat(a: argparse.Namespace) -> int:
    """Validate the options before the full-screen app starts, then run it."""
    from mlx_oss.tui import session as door

    if door.is_follower():  # a rank other than 0 of --hosts / mlx.launch: no UI, rank 0's commands only
        with door.join_group(a) as group:
            return door.follow(group, a.dtype)
    from mlx_oss.tui.app import ChatApp
    from mlx_oss.tui.datadir import database_path
    from mlx_oss.tui.session import ChatOptions, default_model, model_label, model_loader
    from mlx_oss.tui.storage import ChatStore

    try:
        tools = load_tools_file(a.tools) if a.tools else None
    except UserError as e:  # like generate's --tools: a bad argument
        raise UsageError(f"--tools: {e}") from None
    args.check_builtin_args(a)  # flag errors now, before the full-screen app
    store = ChatStore(database_path(a.data_dir))
    if store.notice:
        print(f"mlx-oss: warning: {store.notice}", file=sys.stderr)
    if a.list:
        list_chats(store)
        store.close()
        return 0
    resumed = resume_target(store, a.resume)
    model = a.model or (resumed.model if resumed is not None and resumed.model else default_model())
    if not (sys.stdin.isatty() and sys.stdout.isatty()):  # Textual would spin on a missing terminal
        raise UserError("mlx-oss chat needs a terminal (stdin and stdout are not one); "
                           "for a prompt from a script or a pipe use `mlx-oss generate`")  # fmt: skip
    options = ChatOptions(
        builtin=lambda: args.builtin_chat_kwargs(a, None),
        reasoning_effort=a.reasoning_effort,
        instructions=a.instructions,
        tools=tools,
        sampling=args.sampling_config(a),
        max_tokens=a.max_tokens,
        max_context=a.max_context,
        max_reasoning_tokens=a.max_reasoning_tokens,
        dtype=a.dtype,
        kv_bits=a.kv_bits,
        kv_group_size=a.kv_group_size,
    )
    try:
        with door.join_group(a) as group:  # --hosts: the other ranks start now; None on one machine
            return _run_app(ChatApp(
                model_loader(door.agree_model(group, model), options, group),
                model=model_label(model),
                source=model,
                hide_reasoning=a.hide_reasoning,
                chats_dir=Path(a.chats_dir).expanduser() if a.chats_dir else None,
                store=store,
                resume=resumed.id if resumed is not None else None,
                tools_file=str(Path(a.tools).expanduser().resolve()) if a.tools else None,
                approve_python=a.approve_python,
            ), group)  # fmt: skip
    finally:
        store.close()


def _run_app(app: Any, group: Any) -> int:
    """Run the app; in a group, a lost rank first gives the terminal back (then the one-line error)."""
    import threading

    from mlx_oss.tui import session as door

    restored = threading.Event()

    def stop_ui(message: str) -> None:
        try:
            app.call_from_thread(app.exit, 1)
        except Exception:  # noqa: BLE001 - the app is not running (yet, or any more)
            pass
        restored.wait(5)

    door.on_lost_peer(group, stop_ui)
    try:
        app.run()
    finally:
        restored.set()
    done = app.model_thread.join(timeout=5)  # let the model be freed on its own thread before exiting
    if group is not None and not done:  # still inside a step with the other ranks: they stop on the error
        raise UserError("the model thread did not finish within 5 s of quitting; stopping every rank")
    return app.return_code or 0
