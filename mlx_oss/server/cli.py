"""`mlx-oss serve`: load the model once and serve the OpenAI-compatible API (see docs/SERVER.md).

Binds 127.0.0.1 unless told otherwise (another host without an API key gets a warning). Ctrl+C or
SIGTERM cancels the running and queued generations — their streams end with a final event — and
the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from pathlib import Path

from mlx_oss.cli.args import (
    add_browser_flags,
    add_dtype,
    add_hosts,
    add_kv_cache,
    add_limits,
    add_model,
    add_python_flags,
    add_sampling,
    kv_cache_kwargs,
    make_browser,
    positive_int,
    sampling_config,
)
from mlx_oss.errors import UsageError, UserError

LOG_LEVELS = ("debug", "info", "warning", "error")
STATE_KEY_ENV = "MLX_OSS_STATE_KEY"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def byte_size(s: str) -> int:
    """'8G', '512M', '1.5GB', '1000000' -> bytes (powers of 1024 for K/M/G/T)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 8G, 512M or 1000000, got {s!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the `mlx-oss` parser."""
    s = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible server (/v1/responses, /v1/chat/completions) for Codex, Open WebUI, SDKs",
        description="Serve the model over OpenAI's Responses and Chat Completions APIs.",
    )
    add_model(s)
    add_dtype(s)
    add_kv_cache(s)  # the pool's --cache-bytes then hold ~2x (8-bit) / ~3.5x (4-bit) the conversations
    add_limits(s)  # --max-tokens: the per-reply cap when a request sets none
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: env MLX_OSS_API_KEY)")
    s.add_argument("--cache-bytes", type=byte_size, default=byte_size("8G"),
                   help="memory for cached conversation states besides the one in use (default 8G; 0 = keep only that one)")  # fmt: skip
    s.add_argument("--cors", nargs="+", metavar="ORIGIN", default=[],
                   help="web page origins (https://app.example) that may call the server from a browser; any other "
                        "page is refused (403). '*' allows every page and needs an API key")  # fmt: skip
    s.add_argument("--allowed-hosts", nargs="+", metavar="NAME", default=[],
                   help="Host names the server answers besides localhost, 127.0.0.1, ::1 and the --host address "
                        "(e.g. host.docker.internal for Open WebUI in Docker); '*' answers any (no DNS-rebinding "
                        "protection)")  # fmt: skip
    s.add_argument("--model-alias", action="append", default=[], metavar="NAME",
                   help="another model name requests may ask for (repeatable); '*' matches any text, e.g. "
                        "'claude-*' for Claude Code, which asks for Claude models by name")  # fmt: skip
    s.add_argument("--max-queue", type=positive_int, default=16,
                   help="requests waiting beyond the running ones, beyond which the server answers 429")  # fmt: skip
    s.add_argument("--max-batch", type=_max_batch, default="auto", metavar="N",
                   help="generations run at once, decoded together (default auto: as many sequences at the full "
                        "context as fit the memory beside the weights and --cache-bytes, 1 to 8; 1: one at a time; "
                        "with --hosts always 1)")  # fmt: skip
    s.add_argument("--max-body", type=byte_size, default=byte_size("32M"), help="request body size limit (413 above)")
    s.add_argument("--stored-bytes", type=byte_size, default=byte_size("256M"),
                   help="memory for stored responses (store=true, for previous_response_id); the oldest go first "
                        "(default 256M)")  # fmt: skip
    s.add_argument("--state-key", default=None, metavar="KEY",
                   help="the key that signs the reasoning handed to clients (Responses encrypted_content), so it is "
                        "accepted after a restart or by another server with the same key (hex or any string; default: "
                        f"env {STATE_KEY_ENV}, else a random key per start; never printed or logged)")  # fmt: skip
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="what the server logs to stderr (default info: one access line per request with its "
                        "status, duration and token counts; never bodies, header values or keys)")  # fmt: skip
    add_sampling(s)
    add_hosts(s)
    g = s.add_argument_group("built-in tools (Responses API; see docs/SERVER.md 'Built-in tools')")
    add_browser_flags(g)
    g.add_argument("--allow-python", action="store_true",
                   help="accept the code_interpreter tool: the model's code then runs on this machine without asking "
                        "anyone (this flag is the approval of every run); off by default (400)")  # fmt: skip
    add_python_flags(g)
    g.add_argument("--max-tool-calls", type=positive_int, default=8, metavar="N",
                   help="built-in tool calls the server runs within one response (default 8; a request's max_tool_calls may lower it)")  # fmt: skip
    s.set_defaults(func=run)
    return s


def configure_logging(level: str) -> str:
    """Send the server's loggers (`mlx_oss.*`, the access log `mlx_oss.server.access` among them) to
    stderr at `level`; -> the level for uvicorn's own loggers: the same at debug and error, else
    warning (its startup lines would repeat the printed settings). uvicorn's access log stays off:
    ours replaces it. Called again (a test runs the CLI twice in one process) it replaces its handler.
    Records still propagate (the CLI's root logger has no handler, so nothing is written twice)."""
    logger = logging.getLogger("mlx_oss")
    for h in [h for h in logger.handlers if getattr(h, "_mlx_oss_serve", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    handler._mlx_oss_serve = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    return level if level in ("debug", "error") else "warning"


def server_tools(a: argparse.Namespace, count_tokens=None):
    """The app's `ServerTools` from the flags (a UsageError for a search backend that cannot work)."""
    from mlx_oss.builtin.python import PythonTool
    from mlx_oss.server.builtin import ServerTools, allow_all

    make_browser(a)  # check the backend now, before the model loads
    return ServerTools(
        browser=lambda: make_browser(a, count_tokens),
        python=lambda: PythonTool(a.python_backend, approve=allow_all, timeout_s=a.python_timeout, keep_files=False),
        allow_python=a.allow_python, max_calls=a.max_tool_calls,
    )  # fmt: skip


def model_id(name: str) -> str:
    """The id clients send: `openai/gpt-oss-20b` -> `gpt-oss-20b`; a folder -> its name."""
    return Path(name.rstrip("/")).name or name


def host_warnings(host: str, key: str | None, allowed_hosts: list[str] = ()) -> list[str]:
    """Why binding `host` this way is risky or will refuse clients (none when it is only this machine)."""
    from mlx_oss.server.guard import LOCAL_NAMES, WILDCARD_BINDS
    from mlx_oss.server.settings import KEY_ENV

    if host.strip("[]") in LOCAL_NAMES:
        return []
    out = []
    if not key:
        out.append(f"listening on {host} without an API key: anyone who can reach this machine can use the model "
                   f"(set --api-key or {KEY_ENV})")  # fmt: skip
    if host.strip("[]") in WILDCARD_BINDS and not allowed_hosts:
        out.append(f"listening on {host}, but requests are answered only when their Host is localhost, 127.0.0.1 or "
                   "::1: name this machine's addresses or names with --allowed-hosts")  # fmt: skip
    return out


def _max_batch(value: str) -> int | str:
    return "auto" if value == "auto" else positive_int(value)


def check_max_batch(a: argparse.Namespace, group: bool = False) -> None:
    """UsageError (exit 2): batched generation is not supported in a group (--hosts, mlx.launch) yet;
    there `auto` means 1 (one generation at a time, which the group runs)."""
    in_group = group or getattr(a, "hosts", None)
    if getattr(a, "max_batch", 1) == "auto":
        if in_group:
            a.max_batch = 1
        return
    if a.max_batch > 1 and in_group:
        raise UsageError("--max-batch above 1 is not supported with --hosts (a group of machines) yet")


def resolve_max_batch(a: argparse.Namespace, folder, max_context: int, say, limit: int | None = None) -> int:
    """`--max-batch auto` -> a number (`mlx_oss.info.auto_batch_size`, said on stderr); a number stays."""
    if a.max_batch != "auto":
        return a.max_batch
    from mlx_oss.backend import device
    from mlx_oss.info import auto_batch_size, describe

    info = describe(folder)
    dtype = a.dtype or device.default_dtype()
    limit = device.memory_limit() if limit is None else limit
    weights = info.weight_bytes_at(dtype)
    per = info.kv_bytes(max_context, dtype, a.kv_bits, a.kv_group_size)
    n = auto_batch_size(limit, weights, a.cache_bytes, per)
    g = 2**30
    say(f"mlx-oss serve: --max-batch auto: {n} ({limit / g:.1f} GiB of memory, weights {weights / g:.1f} GiB, "
        f"--cache-bytes {a.cache_bytes / g:.1f} GiB, {per / g:.2f} GiB of KV cache per sequence at "
        f"{max_context} tokens)")  # fmt: skip
    return n


def run(a: argparse.Namespace, processors=None) -> int:
    """The `serve` command. With `--hosts` (or under `mlx.launch`) rank 0 serves and the other ranks
    follow its engine. `processors`: the test-only sampling hook of `create_app` (tests/serve_worker.py)."""
    try:
        import uvicorn

        from mlx_oss.server.app import create_app
    except ImportError as e:
        raise UserError(f"mlx-oss serve needs the 'serve' extra ({e.name} is missing): pip install 'mlx-oss[serve]'") from None
    from mlx_oss.distributed import cli as dist

    check_max_batch(a)
    with dist.group(a) as session:
        if session is not None and not session.leader:
            return dist.follow_rank_0(session, a.model, a.dtype, **kv_cache_kwargs(a))  # the same argv: checked
        return _serve(a, session, uvicorn, create_app, processors)


def _serve(a: argparse.Namespace, session, uvicorn, create_app, processors) -> int:
    from mlx_oss.engine import Engine
    from mlx_oss.server.guard import origins_need_key
    from mlx_oss.server.settings import KEY_ENV, client_settings

    key = a.api_key or os.environ.get(KEY_ENV) or None
    state_key = a.state_key or os.environ.get(STATE_KEY_ENV) or None  # None: create_app draws a random one
    uvicorn_level = configure_logging(a.log_level)
    refusal = origins_need_key(a.cors, key)
    if refusal:
        raise UserError(refusal)
    for warning in host_warnings(a.host, key, a.allowed_hosts):
        print(f"mlx-oss serve: warning: {warning}", file=sys.stderr)
    tools = server_tools(a)  # flag errors before the model loads
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    engine_class, end_group = Engine, None
    if session is None:
        from mlx_oss.loader import load
        from mlx_oss.store import resolve_model

        folder = resolve_model(a.model, status=say)
        model, tokenizer = load(folder, a.dtype, **kv_cache_kwargs(a))
        context = a.max_context or model.args.max_position_embeddings
        a.max_batch = resolve_max_batch(a, folder, context, say)
    else:  # rank 0 of a group: this rank's slice; the engine leads the others, stopped from the worker thread
        check_max_batch(a, group=True)
        from mlx_oss.distributed import cli as dist
        from mlx_oss.distributed.engine import LeaderEngine

        model, tokenizer = dist.load(session, a.model, a.dtype, status=say, **kv_cache_kwargs(a))
        folder, engine_class, end_group = model.source, LeaderEngine, lambda: dist.end(session)
    mid = model_id(a.model)
    tools = server_tools(a, lambda text: len(tokenizer.encode_ordinary(text)))
    app = create_app(
        model, tokenizer, model_id=mid, aliases=[a.model, model_id(str(folder))], model_aliases=a.model_alias, api_key=key,
        max_context=a.max_context, cache_bytes=a.cache_bytes, max_queue=a.max_queue, max_batch=a.max_batch, cors=a.cors,
        allowed_hosts=a.allowed_hosts, bind=a.host, body_limit=a.max_body, stored_bytes=a.stored_bytes, state_key=state_key, sampling=sampling_config(a), max_tokens=a.max_tokens, processors=processors,
        engine_class=engine_class, end_group=end_group, builtin=tools,
    )  # fmt: skip
    backend = app.state.backend
    if session is not None:  # a lost rank: the in-flight requests get an error before the process ends
        session.watchdog.on_failure(lambda msg: backend.fail_all(f"The server is stopping: {msg}"))

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            """Cancel the generations (in-flight streams end now, with their final event), then shut
            down gracefully; unlike uvicorn's own handler, the signal is not re-raised afterwards, so
            a stop on request exits 0. A second Ctrl+C forces the exit."""
            backend.worker.cancel_all()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    host = f"[{a.host}]" if ":" in a.host else a.host
    config = uvicorn.Config(app, host=a.host, port=a.port, log_level=uvicorn_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)  # fmt: skip
    server = Server(config)
    print(client_settings(f"http://{host}:{a.port}/v1", mid, bool(key), backend.max_context), flush=True)
    server.run()
    backend.shutdown()  # done by the lifespan already, unless the server never started
    if session is not None and session.ready:  # the worker never reached end_group: it is stuck in a step
        raise UserError("the generation worker did not stop; stopping every rank")
    if not server.started:
        print(f"mlx-oss serve: error: could not listen on {a.host}:{a.port}", file=sys.stderr)
        return 1
    print("mlx-oss serve: stopped", file=sys.stderr)
    return 0
