"""A real uvicorn server on 127.0.0.1 (random free port, own thread) around the tiny chat model,
with a test-only sampling hook: each request pops the next scripted reply (harmony tokens that
`ScriptedTokens` forces; the model still runs every forward pass). Always shut down by the fixture."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import mlx.core as mx
import uvicorn


from mlx_oss.sampling import ScriptedTokens
from scripted import AfterHeader  # noqa: F401  (the tests import it from here too)
from mlx_oss.server.app import create_app
from test_chat import reply  # noqa: F401  (harmony reply tokens, as gpt-oss writes them)

MODEL_ID = "gpt-oss-tiny"


class Scripts:
    """The sampling hook: a FIFO of scripted replies, one per request, or a reply chosen by a key
    the request's JSON contains (for concurrent clients). Extra processors (e.g. a Gate) run first."""

    def __init__(self) -> None:
        self.queue: list[list] = []
        self.keyed: dict[str, list[int]] = {}
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    def push(self, tokens, *before) -> None:
        with self.lock:
            self.queue.append([*before, ScriptedTokens(tokens)])

    def __call__(self, body: dict):
        with self.lock:
            self.bodies.append(body)
            text = json.dumps(body)
            for key, tokens in self.keyed.items():
                if key in text:
                    return [ScriptedTokens(tokens)]
            return self.queue.pop(0) if self.queue else []


class Gate:
    """A logits processor that blocks the worker at its first step until released (to hold a
    generation in flight), then counts the steps that follow."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, context, logits):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.release.wait(60)
        return logits


class Hold:
    """A logits processor that writes a whole reply and keeps it going, without blocking the worker, until
    released: it forces `head`, then `filler` while `release` is not set (at most `limit` times), then
    `tail`, then lets the model go on. For servers with `max_batch` > 1, where a `Gate` would block the one
    worker thread and so every sequence of the batch. `entered` is set at the first filler token."""

    def __init__(self, head: list[int], filler: int, tail: list[int], limit: int = 20000) -> None:
        self.head, self.filler, self.tail, self.limit = list(head), filler, list(tail), limit
        self.entered = threading.Event()
        self.release = threading.Event()
        self.step = self.held = self.done = 0

    def __call__(self, context, logits):
        if self.step < len(self.head):
            tok, self.step = self.head[self.step], self.step + 1
        elif not self.release.is_set() and self.held < self.limit:
            tok, self.held = self.filler, self.held + 1
            self.entered.set()
        elif self.done < len(self.tail):
            tok, self.done = self.tail[self.done], self.done + 1
        else:
            return logits
        zero = mx.minimum(mx.abs(mx.max(logits, axis=-1, keepdims=True)), 0.0)  # as ScriptedTokens
        return mx.where(mx.arange(logits.shape[-1]) == tok, zero, mx.array(-mx.inf, logits.dtype))


def wait_idle(app, timeout: float = 60.0) -> None:
    """Wait until the app's generation worker has nothing running or queued (between tests)."""
    w = app.state.backend.worker
    deadline = time.monotonic() + timeout
    while w.busy or w.waiting:
        assert time.monotonic() < deadline, "the generation worker did not become idle"
        time.sleep(0.02)


def fresh(served: tuple) -> tuple:
    """A module's served (url, app, scripts, ...) made ready for the next test: no script left from the last
    one, no body recorded, the worker idle."""
    app, scripts = served[1], served[2]
    with scripts.lock:
        scripts.queue.clear()
        scripts.keyed.clear()
        scripts.bodies.clear()
    wait_idle(app)
    return served


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model, tokenizer, scripts: Scripts, wrap=None, **kw) -> Iterator[tuple[str, object]]:
    """Serve on 127.0.0.1:<free port> in a thread; yields (base URL …/v1, the app). `wrap(app)`: an ASGI
    app around it (e.g. one that records the requests)."""
    app = create_app(model, tokenizer, model_id=MODEL_ID, processors=scripts, **kw)
    port = free_port()
    served = wrap(app) if wrap is not None else app
    server = uvicorn.Server(uvicorn.Config(served, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="on"))  # fmt: skip
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", app
    finally:
        app.state.backend.worker.cancel_all()
        server.should_exit = True
        t.join(30)


# ----------------------------------------------------------------------------- helpers for raw HTTP tests


class FirstLogits:
    """A logits processor (put before the scripted tokens) that records, at every sampling step, the
    length of the context, and at the first step of each round (a generation's prefill) the context and
    the logits the sampler received: compare them with a from-scratch forward pass over the context."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.firsts: list[tuple[list[int], "object"]] = []  # (context tokens, logits as numpy) per round

    def __call__(self, context, logits):
        import numpy as np

        size = int(context.size)
        if not self.sizes or size != self.sizes[-1] + 1:
            self.firsts.append((context.tolist(), np.array(logits.reshape(-1).astype(mx.float32))))
        self.sizes.append(size)
        return logits

    @property
    def round_prompts(self) -> list[int]:
        """The prompt length of each round (a round starts where the context does not grow by one)."""
        return [len(ctx) for ctx, _ in self.firsts]


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll `condition()` until true (an event, not a duration: the timeout only stops a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.01)


def join_all(threads, timeout: float = 60.0) -> bool:
    """Join every thread within one shared deadline; -> True when none is still running (none hung)."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


def post_json(url: str, path: str, body, timeout: float = 120, **kw):
    """POST a body (a dict, or bytes sent as they are) as application/json with httpx."""
    import httpx

    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=data, headers={"Content-Type": "application/json"}, timeout=timeout, **kw)


def sse_frames(raw: str) -> list[str]:
    return [f for f in raw.split("\n\n") if f]


def stream_chat(url: str, body: dict, timeout: float = 120) -> tuple[int, list[dict], bool]:
    """A streamed chat completion read to its end: (status, every `data:` JSON object, ended with [DONE])."""
    import httpx

    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=timeout) as r:
        raw = r.read().decode()
        status = r.status_code
    frames = sse_frames(raw)
    done = bool(frames) and frames[-1] == "data: [DONE]"
    return status, [json.loads(f[6:]) for f in frames if f.startswith("data: {")], done


def stream_responses(url: str, body: dict, timeout: float = 120) -> tuple[int, list[dict]]:
    """A streamed response read to its end: (status, the events' JSON objects, each checked against its `event:` line)."""
    import httpx

    with httpx.stream("POST", url + "/responses", json=body, timeout=timeout) as r:
        raw = r.read().decode()
        status = r.status_code
    events = []
    for f in sse_frames(raw):
        head, data = f.split("\n", 1)
        ev = json.loads(data[len("data: "):])
        assert head == f"event: {ev['type']}"
        events.append(ev)
    return status, events


def serve_folder(model_dir, **kw) -> Iterator[tuple]:
    """The body of a module fixture: (base URL, app, Scripts, tokenizer) of a server on the converted
    model at `model_dir` (float32), for the module's tests (`fresh()` gives each test a clean slate)."""
    import mlx_oss

    model, tok = mlx_oss.load(model_dir, dtype="float32")
    scripts = Scripts()
    with running_server(model, tok, scripts, **kw) as (url, app):
        yield url, app, scripts, tok


def sdk_client(srv: tuple):
    """The openai SDK's client on a `fresh()` server: no retries (a retry would hide a failure)."""
    import openai

    return openai.OpenAI(base_url=srv[0], api_key="unused", max_retries=0, timeout=120)
