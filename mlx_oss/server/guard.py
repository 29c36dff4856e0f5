"""Who may talk to the server: the checks every request passes before any route sees it.

A server on 127.0.0.1 is reachable by every web page the user opens. A page can send a "simple"
cross-site POST (`Content-Type: text/plain`) without the browser asking anyone, and a DNS-rebinding
page (its own name re-pointed at 127.0.0.1) can even read the replies. So, for every request:

- `Host` must name this server: the address it is bound to, `localhost`, `127.0.0.1`, `[::1]`, or a
  name given with `--allowed-hosts` (`*` allows any). A rebinding page sends its own name: 403.
- `Origin`, which browsers send with every cross-site request and with every POST, must be one that
  `--cors` allows (`*` allows any, and needs an API key). Non-browser clients send none.
- A POST must be `application/json`: a browser cannot send that cross-site without a CORS preflight,
  which only `--cors` origins pass.

Refusals are OpenAI-shaped errors (403 / 415) sent before the body is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from mlx_oss.server.errors import APIError, clip

__all__ = ["Access", "RequestGuard", "LOCAL_NAMES", "host_name"]

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def host_name(value: str) -> str | None:
    """The host part of a `Host` header (`[::1]:8000` -> `::1`), lower-cased; None if malformed (a
    Host is `name[:port]`: no user part, path, query or spaces, which urlsplit would read around)."""
    if any(c in value for c in "@/?#\\ \t"):
        return None
    try:
        parts = urlsplit(f"//{value}")
        name, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        return None
    return name.rstrip(".") if name else None


@dataclass(frozen=True)
class Access:
    """The hosts and browser origins the server answers. `bind`: the address it listens on (a
    specific one is allowed as a Host name; a wildcard bind allows only the local names and
    `hosts`)."""

    bind: str = "127.0.0.1"
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()

    @property
    def any_host(self) -> bool:
        return "*" in self.hosts

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins

    def host_names(self) -> frozenset[str]:
        bind = self.bind.strip("[]").lower()
        extra = {h.strip("[]").lower().rstrip(".") for h in self.hosts}
        return LOCAL_NAMES | extra | ({bind} if bind not in WILDCARD_BINDS else set())

    def check(self, method: str, headers: Headers) -> None:
        """Raise the APIError a request with these headers gets (nothing when it may pass)."""
        host = headers.get("host")
        if not self.any_host:
            name = host_name(host) if host else None
            if name is None or name not in self.host_names():
                raise APIError(403, f"Host {_quote(host)} is not allowed: this server answers "
                               f"{', '.join(sorted(self.host_names()))} (add names with --allowed-hosts).",
                               type="permission_error", code="host_not_allowed")  # fmt: skip
        origin = headers.get("origin")
        if origin is not None and not self.any_origin and origin not in self.origins:
            raise APIError(403, f"Origin {_quote(origin)} is not allowed: a web page may use this server only if it "
                           "was started with --cors ORIGIN.", type="permission_error",
                           code="origin_not_allowed")  # fmt: skip
        if method == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise APIError(415, f"Content-Type must be application/json, not {_quote(media or None)}.",
                               code="unsupported_media_type")  # fmt: skip


def _quote(value: str | None) -> str:
    if value is None:
        return "(none)"
    return repr(clip(value, 100))


class RequestGuard:
    """ASGI middleware: `access.check` for every HTTP request; a refusal is answered here."""

    def __init__(self, app, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            try:
                self.access.check(scope["method"], Headers(scope=scope))
            except APIError as e:
                body = json.dumps(e.body()).encode()
                await send({"type": "http.response.start", "status": e.status,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def origins_need_key(origins: Iterable[str], api_key: str | None) -> str | None:
    """Why `--cors *` without a key is refused (None when the combination is fine)."""
    if "*" in origins and not api_key:
        return "--cors '*' lets every web page you open use this server; it needs --api-key (or MLX_OSS_API_KEY)"
    return None
