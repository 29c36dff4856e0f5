"""Fetching pages over HTTP(S) with httpx, within limits: time, redirects, size, content types, addresses.

Every failure is a `BrowserError` whose message is one readable line: the browser hands it to the
model as the tool's answer, so a bad page never ends the conversation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

from mlx_oss.builtin.browser.html import html_to_text, neutralize
from mlx_oss.builtin.browser.net import AddressRefused, DeadlineBackend, transport_through
from mlx_oss.builtin.browser.page import Page

__all__ = ["BrowserError", "FetchLimits", "Fetcher", "USER_AGENT"]

USER_AGENT = "mlx-oss-browser/0.1 (+https://github.com/; a local gpt-oss assistant)"
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "application/x-yaml")


class BrowserError(Exception):
    """A failure the model is told about (fetch, search or usage); never raised out of the tool."""


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one page fetch. `timeout_s` bounds the whole fetch (lookups, connects, every redirect,
    headers and body), however slowly the server sends them."""

    timeout_s: float = 20.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5


class Fetcher:
    """Fetches one URL into a `Page`. `allow_private=False` refuses loopback and private-network
    addresses (also after redirects, and checked on the address actually connected to, see net.py),
    so a page the model reads cannot make it probe the user's machine or LAN."""

    def __init__(self, limits: FetchLimits = FetchLimits(), *, allow_private: bool = False) -> None:
        self.limits = limits
        self.allow_private = allow_private

    def client(self, *, check_address: bool = True) -> httpx.Client:
        """A client with the limits applied; everything it does (connects, redirects, bodies) ends
        within `timeout_s` of this call, so make one per fetch or search. Search backends use one with
        `check_address=False`: their address is the user's configuration (a self-hosted SearXNG is
        often on localhost), not something a page chose."""
        backend = DeadlineBackend(time.monotonic() + self.limits.timeout_s,
                                  check_address=check_address and not self.allow_private)  # fmt: skip
        return httpx.Client(
            follow_redirects=True,
            max_redirects=self.limits.max_redirects,
            timeout=httpx.Timeout(self.limits.timeout_s),
            headers={"user-agent": USER_AGENT},
            event_hooks={"request": [_check_scheme]},
            transport=transport_through(backend),
        )

    def fetch(self, url: str, *, view_source: bool = False) -> Page:
        """The page at `url` (its text, title and links); raises BrowserError with the reason."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BrowserError(f"`{_short(url)}` is not an http(s) URL")
        try:
            with self.client() as client, client.stream("GET", url) as r:
                if r.status_code >= 400:
                    raise BrowserError(f"HTTP {r.status_code} {r.reason_phrase}".rstrip())
                ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
                is_html = ctype in _HTML_TYPES or not ctype  # no type: read as HTML (its source, as text)
                if not (is_html or ctype.startswith(_TEXT_TYPES)):
                    raise BrowserError(f"unsupported content type {ctype} (the browser reads HTML and text pages)")
                body = self._read(r)
                final_url = str(r.url)
                text = body.decode(r.encoding, errors="replace")  # (httpx: the charset, else utf-8)
        except BrowserError:
            raise
        except AddressRefused as e:
            raise BrowserError(str(e)) from None
        except httpx.TooManyRedirects:
            raise BrowserError(f"more than {self.limits.max_redirects} redirects") from None
        except httpx.TimeoutException:
            raise BrowserError(f"timed out after {self.limits.timeout_s:g} s") from None
        except httpx.HTTPError as e:
            raise BrowserError(f"cannot reach the site ({type(e).__name__}: {_short(str(e)) or 'no details'})") from None
        if view_source:
            return Page(f"view-source:{final_url}", f"Source of {final_url}", neutralize(text))
        if is_html:
            pt = html_to_text(text, final_url)
            return Page(final_url, pt.title, pt.text, pt.links)
        return Page(final_url, final_url.rpartition("/")[2] or parsed.netloc, neutralize(text))  # its file name

    def _read(self, r: httpx.Response) -> bytes:
        limit = self.limits.max_bytes
        declared = r.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BrowserError(f"the page is too large ({int(declared):,} bytes; the limit is {limit:,})")
        chunks, size = [], 0
        for chunk in r.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise BrowserError(f"the page is too large (over the {limit:,}-byte limit)")
            chunks.append(chunk)
        return b"".join(chunks)


def _check_scheme(request: httpx.Request) -> None:
    if request.url.scheme not in ("http", "https"):
        raise BrowserError(f"only http and https URLs can be opened, not {request.url.scheme}:")


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
