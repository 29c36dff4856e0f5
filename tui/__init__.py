"""The Textual chat app behind `mlx-oss chat`.

From Python, `mlx_oss.tui.run()` opens the same chat, either on a model (Hub id or folder) with `Chat`
options, or on a `mlx_oss.Chat` you built yourself (e.g. with callable tools):

    import mlx_oss
    from mlx_oss import tui
    model, tok = mlx_oss.load("~/models/gpt-oss-20b")
    tui.run(mlx_oss.Chat(model, tok, tools=[get_weather]))
"""

from __future__ import annotations

from typing import Any


def run(model: Any = "openai/gpt-oss-20b", *, hide_reasoning: bool = False, chats_dir: str | None = None,
        keep: bool = True, data_dir: str | None = None, **chat_options: Any) -> int:  # fmt: skip
    """Run the chat in this terminal; returns the exit code. `model` is a Hub id, a folder, or a
    `mlx_oss.Chat`; `chat_options` are `mlx_oss.tui.session.ChatOptions` fields (reasoning_effort, instructions,
    tools, sampling, max_tokens, max_context, dtype) and apply when `model` is not a Chat. `keep`: store
    the chats in the chat database (`data_dir`, default as `mlx-oss chat`'s), like the command does."""
    from pathlib import Path

    from mlx_oss.tui.app import ChatApp
    from mlx_oss.tui.datadir import database_path
    from mlx_oss.tui.session import ChatOptions, model_label, model_loader, session_loader
    from mlx_oss.tui.storage import ChatStore

    if hasattr(model, "send"):
        if chat_options:
            raise TypeError("chat options go to the Chat itself when you pass a Chat")
        loader, label, source = session_loader(model), "gpt-oss", "the given Chat"
    else:
        loader, label, source = model_loader(str(model), ChatOptions(**chat_options)), model_label(str(model)), str(model)
    store = ChatStore(database_path(data_dir)) if keep else None
    app = ChatApp(loader, model=label, source=source, hide_reasoning=hide_reasoning,
                  chats_dir=Path(chats_dir).expanduser() if chats_dir else None, store=store)  # fmt: skip
    if app.keeper is not None and hasattr(model, "send"):
        app.keeper.model = ""  # a Chat built in Python: no model name to reopen it with
    try:
        app.run()
        app.model_thread.join(timeout=5)
    finally:
        if store is not None:
            store.close()
    return app.return_code or 0
