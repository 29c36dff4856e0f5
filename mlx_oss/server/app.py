"""The ASGI app: routes, API key, body limit, OpenAI-shaped errors. `create_app(...)` builds it.
Anthropic's Messages API (`/v1/messages`, server/messages.py) answers its errors in Anthropic's shape.

Every request passes `RequestGuard` first (Host, Origin, content type: server/guard.py); a body is
read once, within the byte limit, and checked against its API's schema (server/request_body.py)
before a route translates it. Whatever raises after that is answered, never re-raised: a 400 while
the request is translated (the body caused it), a 500 while it runs, a final error event once a
stream has started, so the connection stays usable and the log holds one line, not a traceback.

Starlette (not FastAPI): the request bodies are translated by hand into harmony anyway (both APIs
accept loose shapes that a pydantic model would reject or reshape), so FastAPI's validation layer
would only add a dependency and a second error format.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hmac
import logging
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Sequence

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlx_oss.engine import Engine
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server import access_log, chat_completions, messages, responses
from mlx_oss.server.backend import Backend, ProcessorHook
from mlx_oss.server.builtin import ServerTools, Session, Sessions
from mlx_oss.server.errors import APIError, anthropic_body, bad_request, clip, error_body
from mlx_oss.server.generation import Finished
from mlx_oss.server.guard import Access, RequestGuard
from mlx_oss.server.request_body import CHAT, COUNT_TOKENS, MESSAGES, RESPONSES, read_body
from mlx_oss.server.sse import DONE, EventStream, data_line, named_event, watch_disconnect

__all__ = ["create_app", "DEFAULT_BODY_LIMIT", "DEFAULT_STORED_BYTES"]

DEFAULT_BODY_LIMIT = 32 << 20
DEFAULT_STORED_BYTES = 256 << 20
log = logging.getLogger("mlx_oss.server")


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class _Server:
    """State shared by the routes."""

    def __init__(self, backend: Backend, model_id: str, aliases: Sequence[str], api_key: str | None, body_limit: int,
                 builtin: ServerTools, stored_bytes: int, state_key: str | bytes | None,
                 model_aliases: Sequence[str] = ()):  # fmt: skip
        self.backend = backend
        self.builtin = builtin
        self.sessions = Sessions()
        self.model_id = model_id
        self.names = {model_id, *aliases}
        self.patterns = tuple(model_aliases)  # `--model-alias`: more names, `*` matching any text (claude-*)
        self.api_key = api_key
        self.body_limit = body_limit
        self.stored = responses.StoredResponses(stored_bytes, state_key=state_key)
        self.created = int(time.time())

    def has_key(self, request: Request, x_api_key: bool = False) -> bool:
        """True when no key is set, or the request carries it (compared in constant time): as
        `Authorization: Bearer`, or with `x_api_key` (the Anthropic routes) also as `x-api-key`."""
        if not self.api_key:
            return True
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        other = request.headers.get("x-api-key", "").strip() if x_api_key else ""  # Anthropic's header
        key = self.api_key.encode()
        return hmac.compare_digest(given.encode(), key) | (x_api_key and hmac.compare_digest(other.encode(), key))

    def check_key(self, request: Request, x_api_key: bool = False) -> None:
        if not self.has_key(request, x_api_key):
            also = " or 'x-api-key: <key>'" if x_api_key else ""
            raise APIError(401, f"Missing or incorrect API key: send it as 'Authorization: Bearer <key>'{also}.",
                           code="invalid_api_key")  # fmt: skip

    def serves(self, name: str) -> bool:
        """True when a request's `model` names this server's model (its id, an alias, a --model-alias)."""
        return name in self.names or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    async def body(self, request: Request, schema: dict) -> dict[str, Any]:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.body_limit:
            raise APIError(413, f"Request body is {size} bytes; the limit is {self.body_limit}.", code="request_too_large")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.body_limit:
                raise APIError(413, f"Request body is over the {self.body_limit}-byte limit.", code="request_too_large")
        body = read_body(bytes(data), schema)
        model = body.get("model")
        if model is not None and not (isinstance(model, str) and self.serves(model)):
            raise APIError(404, f"The model {model!r} does not exist on this server (it serves {self.model_id!r}).",
                           param="model", code="model_not_found")  # fmt: skip
        return body

    def model_json(self) -> dict:
        """The model as both APIs describe one: OpenAI's fields and Anthropic's (`type`, `display_name`,
        `created_at`), so the openai and the anthropic SDKs (and Claude Code) read the same answer."""
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "mlx-oss", "type": "model",
                "display_name": self.model_id, "created_at": created_at}  # fmt: skip


async def _events(job) -> AsyncIterator[object]:
    """The job's events (`Backend.events`); its `Finished` also goes on the request's access-log line."""
    async for ev in Backend.events(job):
        if isinstance(ev, Finished):
            access_log.note(ev)
        yield ev


async def _collect(job, request: Request, feed) -> None:
    """Feed a job's events to `feed` until it ends, cancelling it if the client disconnects."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await watch_disconnect(request.receive, job.cancel)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            async for ev in _events(job):
                feed(ev)
        finally:
            tg.cancel_scope.cancel()


def create_app(
    model,
    tokenizer,
    *,
    model_id: str = "gpt-oss",
    aliases: Sequence[str] = (),
    model_aliases: Sequence[str] = (),
    api_key: str | None = None,
    max_context: int | None = None,
    cache_bytes: int = 8 << 30,
    max_queue: int = 16,
    max_batch: int = 1,
    cors: Sequence[str] = (),
    allowed_hosts: Sequence[str] = (),
    bind: str = "127.0.0.1",
    body_limit: int = DEFAULT_BODY_LIMIT,
    stored_bytes: int = DEFAULT_STORED_BYTES,
    state_key: str | bytes | None = None,
    sampling: SamplingConfig | None = None,
    max_tokens: int | None = None,
    processors: ProcessorHook | None = None,
    engine_class: type[Engine] = Engine,
    end_group: Callable[[], None] | None = None,
    builtin: ServerTools | None = None,
) -> Starlette:
    """The OpenAI-compatible app for a loaded model (and Anthropic's Messages API). `model_aliases`: more
    names a request's `model` may give (`*` matches any text: `claude-*`). `sampling`: defaults a request's temperature,
    top_p and seed override (top_k/min_p apply to every request); `max_tokens`: the reply cap when a
    request sets none. `cors` / `allowed_hosts` / `bind`: the browser origins and Host names it answers
    (server/guard.py). `max_batch`: generations run at once (batched decode; 1: one at a time, as
    before; more is not supported with a LeaderEngine). `stored_bytes`: the memory kept for stored responses (`previous_response_id`);
    `state_key`: the key that signs reasoning handed to stateless clients (None: random per start).
    `builtin`: the built-in tools the Responses API runs (default: the browser
    without search, no python; see server/builtin.py). `processors` is a test-only sampling hook
    (request body -> logits processors); leave it None in production. `app.state.backend.shutdown()`
    cancels all generations (the CLI calls it on Ctrl+C / SIGTERM). `engine_class` / `end_group`: rank 0
    of a group (`mlx-oss serve --hosts`) passes its LeaderEngine and how the other ranks are stopped
    (run on the worker thread as it stops)."""
    backend = Backend(model, tokenizer, max_context=max_context, cache_bytes=cache_bytes, max_queue=max_queue,
                      max_batch=max_batch, sampling=sampling, max_tokens=max_tokens, processors=processors, engine_class=engine_class,
                      end_group=end_group)  # fmt: skip
    srv = _Server(backend, model_id, aliases, api_key, body_limit, builtin or ServerTools(), stored_bytes, state_key,
                  model_aliases)  # fmt: skip

    async def health(request: Request):
        if not srv.has_key(request):  # with a key set, state is for those who hold it
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "ok", "model": srv.model_id, "busy": backend.worker.busy,
                             "queued": backend.worker.waiting, "generations": dict(backend.outcomes)})  # fmt: skip

    async def list_models(request: Request):
        """OpenAI's list, with Anthropic's page fields (`has_more`, `first_id`, `last_id`) beside it."""
        srv.check_key(request, x_api_key=True)
        return JSONResponse({"object": "list", "data": [srv.model_json()], "has_more": False, "first_id": srv.model_id,
                             "last_id": srv.model_id})  # fmt: skip

    async def get_model(request: Request):
        srv.check_key(request, x_api_key=True)
        if not srv.serves(request.path_params["model"]):
            raise APIError(404, f"The model {clip(request.path_params['model'])!r} does not exist on this server.",
                           param="model", code="model_not_found")  # fmt: skip
        return JSONResponse(srv.model_json())

    async def chat(request: Request):
        srv.check_key(request)
        body = await srv.body(request, CHAT)
        req = _translate(lambda: chat_completions.parse_request(body, backend.sampling(body)))
        req = replace(req, turn=await _compiled(backend, req.turn))
        prompt, boundaries = _translate(lambda: backend.prompt(req.turn))
        job = backend.submit(req.turn, prompt, boundaries)
        acc = chat_completions.ChatAccumulator(srv.model_id, req.turn.sampling.logprobs is not None)
        if not req.stream:
            await _collect(job, request, acc.feed)
            return _finished_or_error(acc.finished, acc.completion)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield data_line(acc.first_chunk())
                async for ev in _events(job):
                    chunk = acc.feed(ev)
                    if chunk is not None:
                        yield data_line(chunk)
                f = acc.finished
                if f is None or f.stop_reason == "error" or (f.stop_reason == "cancelled" and job.cancelled.is_set()):
                    yield data_line(_stream_error(f, job))
                else:
                    for c in acc.last_chunks(req.include_usage):
                        yield data_line(c)
            except Exception as e:  # the stream has started: its error is its last chunk
                _log_failure(request, e)
                yield data_line(_failure(e))
            finally:
                job.cancel()  # no-op when finished; stops the generation if the stream was abandoned
            yield DONE

        return EventStream(chunks(), job.cancel)

    async def create_response(request: Request):
        srv.check_key(request)
        body = await srv.body(request, RESPONSES)
        req = _translate(lambda: responses.parse_request(body, srv.stored, backend.sampling(body), srv.builtin))
        req = replace(req, turn=await _compiled(backend, req.turn))
        job, b = _submit_response(srv, req)

        def save() -> None:
            if req.store and b.status != "in_progress":
                srv.stored.put(b.response(), req.items, b.tool_messages)

        if not req.stream:
            await _collect(job, request, b.feed)
            if b.status == "in_progress":
                b.fail("cancelled", "the generation was cancelled")
            save()
            if b.status == "failed":
                return JSONResponse(error_body(b.error["message"], "server_error", None, b.error["code"]), status_code=500)
            return JSONResponse(b.response())

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in _built_events(b, job):
                    yield chunk
                if b.status == "in_progress":  # the job was cancelled before it started
                    for kind, ev in b.fail("cancelled", "the server is shutting down"):
                        yield named_event(kind, ev)
                save()
            except Exception as e:  # the stream has started: it ends with response.failed
                _log_failure(request, e)
                if b.status == "in_progress":
                    for kind, ev in b.fail("server_error", _failure(e)["error"]["message"]):
                        yield named_event(kind, ev)
            finally:
                job.cancel()

        return EventStream(events(), job.cancel)

    async def messages_request(request: Request, schema) -> messages.MessagesRequest:
        """A Messages (or count_tokens) request: the key (`x-api-key` too), the body, its translation."""
        srv.check_key(request, x_api_key=True)
        body = await srv.body(request, schema)
        return _translate(lambda: messages.parse_request(body, backend.sampling(body), srv.stored.seal))

    async def anthropic_messages(request: Request):
        """Anthropic's Messages API: every error in Anthropic's shape (`_anthropic`)."""
        try:
            req = await messages_request(request, MESSAGES)
            req = replace(req, turn=await _compiled(backend, req.turn))
            prompt, boundaries = _translate(lambda: backend.prompt(req.turn))
            job = backend.submit(req.turn, prompt, boundaries)
        except APIError as e:
            return _anthropic(e)
        except Exception as e:
            return _anthropic_500(request, e)
        b = messages.MessageBuilder(srv.model_id, srv.stored.seal, len(prompt), req.show_thinking)
        if not req.stream:
            try:
                await _collect(job, request, b.feed)
            except Exception as e:
                return _anthropic_500(request, e)
            failed = _anthropic_failure(b.finished)
            if failed is not None:
                return JSONResponse(failed[1], status_code=failed[0])
            return JSONResponse(b.message())

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in _built_events(b, job):
                    yield chunk
                failed = _anthropic_failure(b.finished)
                if failed is not None:
                    yield named_event("error", failed[1])
                else:
                    for kind, ev in b.end():
                        yield named_event(kind, ev)
            except Exception as e:  # the stream has started: it ends with an error event
                _log_failure(request, e)
                yield named_event("error", anthropic_body(500, _failure(e)["error"]["message"]))
            finally:
                job.cancel()

        return EventStream(events(), job.cancel)

    async def count_tokens(request: Request):
        """`{"input_tokens": N}`: the tokens of the prompt the same Messages request renders."""
        try:
            req = await messages_request(request, COUNT_TOKENS)
            tokens, _ = _translate(lambda: req.turn.render(backend.tokenizer))
        except APIError as e:
            return _anthropic(e)
        return JSONResponse({"input_tokens": len(tokens)})

    async def get_response(request: Request):
        srv.check_key(request)
        _, resp = srv.stored.get(request.path_params["response_id"])
        return JSONResponse(resp)

    async def api_error(request: Request, exc: APIError):
        return _error(exc)

    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{exc.detail}: {request.method} {clip(request.url.path)}", kind),
                            status_code=exc.status_code)  # fmt: skip

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
        Route("/v1/messages", anthropic_messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    ]
    access = Access(bind, tuple(allowed_hosts), tuple(cors))
    middleware = [Middleware(access_log.AccessLog), Middleware(RequestGuard, access=access)]
    if cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["*"], allow_headers=["*"]))
    middleware.append(Middleware(_InternalErrors))
    app = Starlette(
        routes=routes, middleware=middleware,
        exception_handlers={APIError: api_error, HTTPException: http_error},
        lifespan=_lifespan(backend, srv.sessions),
    )  # fmt: skip
    app.state.backend = backend
    app.state.stored = srv.stored  # stored responses and their built-in calls' messages
    app.state.sessions = srv.sessions  # the conversations' browser/python sessions
    return app




async def _built_events(b, job) -> AsyncIterator[bytes]:
    """A builder's opening events, then its events for each item the job emits (Responses and Messages
    streams alike; each ends its stream its own way)."""
    for kind, ev in b.start():
        yield named_event(kind, ev)
    async for item in _events(job):
        for kind, ev in b.feed(item):
            yield named_event(kind, ev)

def _anthropic_500(request: Request, e: Exception) -> JSONResponse:
    """An unexpected failure of a Messages request before its reply started: logged, a 500 in Anthropic's shape."""
    log.error("POST %s: %s: %s", request.url.path, type(_cause(e)).__name__, clip(str(_cause(e))))
    return JSONResponse(anthropic_body(500, _failure(e)["error"]["message"]), status_code=500)


def _anthropic_failure(f) -> tuple[int, dict] | None:
    """(status, Anthropic's error body) for a Messages reply that failed (500) or was cancelled or never
    finished (503); None for one that ended."""
    if f is not None and f.stop_reason not in ("error", "cancelled"):
        return None
    status = 500 if f is not None and f.stop_reason == "error" else 503
    return status, anthropic_body(status, (f.error if f is not None else None) or _stopped(status))

def _anthropic(e: APIError) -> JSONResponse:
    return JSONResponse(e.anthropic(), status_code=e.status, headers=e.headers)


def _stopped(status: int) -> str:
    return "generation failed" if status == 500 else "The generation was cancelled (the server is shutting down)."


def _translate(step: Callable[[], Any]) -> Any:
    """Run a translation step of a request (body -> Turn -> prompt). It reads only the client's body,
    so whatever it raises is the body's fault: a 400, never a 500 (the schema should have caught it;
    the log says where, to add the rule)."""
    try:
        return step()
    except APIError:
        raise
    except (RecursionError, MemoryError):
        raise bad_request("The request is too large or too deeply nested to translate.") from None
    except Exception as e:
        log.warning("a request body the schema let through failed in translation", exc_info=True)
        raise bad_request(f"The request could not be read: {type(e).__name__}: {clip(str(e))}") from None


async def _compiled(backend: Backend, turn):
    """The turn with its strict schemas compiled (a 400 for one that cannot be enforced), in a worker
    thread: compiling blocks (the first schema also reads the vocabulary, about a second)."""
    if not turn.schemas():
        return turn
    return await anyio.to_thread.run_sync(lambda: _translate(lambda: backend.compile(turn)))


class _InternalErrors:
    """ASGI middleware: an exception from a route becomes a 500 in OpenAI's shape, logged in one line
    (with the traceback at DEBUG). Starlette's own handler would re-raise it after answering, and
    uvicorn then drops the keep-alive connection that the client's next request is using."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as e:
            c = _cause(e)
            log.error("%s %s: %s: %s", scope["method"], clip(scope["path"]), type(c).__name__, clip(str(c)))
            log.debug("traceback", exc_info=True)
            if started:
                return  # a streamed reply already ended with its error event
            await JSONResponse(_failure(e), status_code=500)(scope, receive, send)


def _cause(e: BaseException) -> BaseException:
    """The exception itself, out of the task groups' one-exception groups (`_collect`)."""
    while len(getattr(e, "exceptions", ())) == 1:
        e = e.exceptions[0]
    return e


def _failure(e: BaseException) -> dict:
    e = _cause(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return error_body(f"Internal error: {type(e).__name__}: {clip(first)}", "server_error", None, "server_error")


def _log_failure(request: Request, e: BaseException) -> None:
    log.error("%s %s: stream failed: %s: %s", request.method, clip(request.url.path), type(e).__name__, clip(str(e)))
    log.debug("traceback", exc_info=True)




def _submit_response(srv: _Server, req) -> tuple[Any, responses.ResponseBuilder]:
    """Queue a Responses generation. With built-in tools it gets the conversation's session (the
    previous response's, else a new one); when the generation ends the worker keeps it for this
    response (store=true) or closes it."""
    turn, session = req.turn, None
    if turn.tools.builtin_names:
        previous = srv.sessions.take(req.previous)
        session = srv.builtin.session(turn.tools.builtin_names, previous)
        if previous is None:  # a conversation this server holds no session for: pages from what the model saw
            session.tools.restore(turn.history)
        turn = replace(turn, tools=replace(turn.tools, builtin=session.tools.namespaces()))
    b = responses.ResponseBuilder(srv.model_id, req.echo, session.container_id if session else "")
    try:
        prompt, boundaries = _translate(lambda: srv.backend.prompt(turn))
        done = None
        if session is not None:
            done = (lambda: srv.sessions.put(b.id, session)) if req.store else session.tools.close
        job = srv.backend.submit(turn, prompt, boundaries, session.tools if session else None, req.max_calls, done)
    except BaseException:
        if session is not None:
            _keep_or_close(srv, req.previous, session)
        raise
    return job, b


def _keep_or_close(srv: _Server, previous: str | None, session: Session) -> None:
    if previous is not None:
        srv.sessions.put(previous, session)  # the request was refused: the conversation keeps its session
    else:
        session.tools.close()


def _lifespan(backend: Backend, sessions: Sessions):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        backend.shutdown()
        sessions.close()

    return lifespan


def _finished_or_error(finished: Finished | None, build) -> JSONResponse:
    if finished is not None and finished.stop_reason == "error":
        return JSONResponse(error_body(finished.error or "generation failed", "server_error", None, "server_error"), status_code=500)
    if finished is None or finished.stop_reason == "cancelled":
        return JSONResponse(error_body("The generation was cancelled (the server is shutting down).", "server_error",
                                       None, "cancelled"), status_code=503)  # fmt: skip
    return JSONResponse(build())


def _stream_error(finished: Finished | None, job) -> dict:
    if finished is not None and finished.stop_reason == "error":
        return error_body(finished.error or "generation failed", "server_error", None, "server_error")
    return error_body("The generation was cancelled (the server is shutting down).", "server_error", None, "cancelled")
