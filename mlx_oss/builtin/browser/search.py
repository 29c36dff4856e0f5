"""Search backends: Exa (`EXA_API_KEY`), You.com (`YDC_API_KEY`), a SearXNG instance, or none.

A backend turns a query into `SearchResult`s; the browser lays them out as a results page. API keys
are read from the environment when a search runs, sent only in request headers, and kept out of
reprs, errors and saved chats. Base URLs are constructor arguments (tests point them at 127.0.0.1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import httpx

from mlx_oss.builtin.browser.fetch import BrowserError

__all__ = [
    "SearchResult",
    "SearchBackend",
    "ExaSearch",
    "YouSearch",
    "SearxngSearch",
    "NoSearch",
    "SEARCH_BACKENDS",
    "make_search_backend",
]

SEARCH_BACKENDS = ("auto", "exa", "you", "searxng", "none")


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str = ""


class SearchBackend(Protocol):
    name: str

    def search(self, query: str, topn: int, client: httpx.Client) -> list[SearchResult]: ...


def _call(name: str, client: httpx.Client, method: str, url: str, secret: str = "", **kw: Any) -> Any:
    """One API request -> decoded JSON; every failure becomes a BrowserError naming the backend."""
    try:
        r = client.request(method, url, **kw)
    except httpx.TimeoutException:
        raise BrowserError(f"{name} search timed out") from None
    except BrowserError:
        raise
    except httpx.HTTPError as e:
        raise BrowserError(f"{name} search is unreachable ({type(e).__name__})") from None
    if r.status_code in (401, 403):
        raise BrowserError(f"{name} search rejected the API key (HTTP {r.status_code})")
    if r.status_code in (402, 429):
        raise BrowserError(f"{name} search is out of quota or rate-limited (HTTP {r.status_code}); try again later")
    if r.status_code >= 400:
        detail = " ".join(r.text.split())[:200]
        if secret:
            detail = detail.replace(secret, "***")
        raise BrowserError(f"{name} search failed (HTTP {r.status_code}{': ' + detail if detail else ''})")
    try:
        return r.json()
    except ValueError:
        raise BrowserError(f"{name} search returned something that is not JSON") from None


def _key(env_var: str, given: str | None, env: Mapping[str, str] | None) -> str:
    key = given or (os.environ if env is None else env).get(env_var, "")
    if not key:
        raise BrowserError(f"search needs an API key: set {env_var} in the environment")
    return key


def _results(items: Any, title: str, url: str, *snippet_keys: str) -> list[SearchResult]:
    if not isinstance(items, list):
        raise BrowserError("the search API answered in an unexpected format")
    out = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get(url), str):
            continue
        snippet = next((it[k] for k in snippet_keys if it.get(k)), "")
        if isinstance(snippet, list):
            snippet = " ".join(str(s) for s in snippet)
        out.append(SearchResult(str(it.get(title) or it[url]), it[url], " ".join(str(snippet).split())))
    return out


@dataclass
class ExaSearch:
    """Exa's /search API; the key comes from `api_key` or `EXA_API_KEY`."""

    base_url: str = "https://api.exa.ai"
    api_key: str | None = field(default=None, repr=False)
    env: Mapping[str, str] | None = field(default=None, repr=False)
    name: str = "exa"

    def search(self, query: str, topn: int, client: httpx.Client) -> list[SearchResult]:
        key = _key("EXA_API_KEY", self.api_key, self.env)
        body = {"query": query, "numResults": topn, "contents": {"summary": True}}
        data = _call("Exa", client, "POST", f"{self.base_url.rstrip('/')}/search", key, json=body, headers={"x-api-key": key})
        return _results(data.get("results") if isinstance(data, dict) else None, "title", "url", "summary", "text")


@dataclass
class YouSearch:
    """You.com's search API (web and news results); the key comes from `api_key` or `YDC_API_KEY`."""

    base_url: str = "https://api.ydc-index.io"
    api_key: str | None = field(default=None, repr=False)
    env: Mapping[str, str] | None = field(default=None, repr=False)
    name: str = "you"

    def search(self, query: str, topn: int, client: httpx.Client) -> list[SearchResult]:
        key = _key("YDC_API_KEY", self.api_key, self.env)
        data = _call("You.com", client, "GET", f"{self.base_url.rstrip('/')}/v1/search", key,
                     params={"query": query, "count": topn}, headers={"x-api-key": key})  # fmt: skip
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, dict):
            raise BrowserError("You.com search answered in an unexpected format")
        web = _results(results.get("web", []), "title", "url", "snippets", "description")
        news = _results(results.get("news", []), "title", "url", "description")
        return (web + news)[:topn]


@dataclass
class SearxngSearch:
    """A SearXNG instance's JSON API (`format=json` must be enabled in its settings); no key."""

    url: str
    name: str = "searxng"

    def search(self, query: str, topn: int, client: httpx.Client) -> list[SearchResult]:
        data = _call("SearXNG", client, "GET", f"{self.url.rstrip('/')}/search", params={"q": query, "format": "json"})
        return _results(data.get("results") if isinstance(data, dict) else None, "title", "url", "content")[:topn]


@dataclass
class NoSearch:
    """No search engine: the model can still open pages by URL."""

    name: str = "none"

    def search(self, query: str, topn: int, client: httpx.Client) -> list[SearchResult]:
        raise BrowserError("search is not available in this session (no search backend); open a page by its URL instead")


def make_search_backend(name: str = "auto", *, url: str | None = None, env: Mapping[str, str] | None = None) -> SearchBackend:
    """A backend by name. `auto`: Exa if EXA_API_KEY is set, else You.com if YDC_API_KEY is, else
    SearXNG if a URL is given (or SEARXNG_URL is set), else none. `searxng` needs `url` or SEARXNG_URL."""
    env = os.environ if env is None else env
    url = url or env.get("SEARXNG_URL") or None
    if name == "auto":
        name = "exa" if env.get("EXA_API_KEY") else "you" if env.get("YDC_API_KEY") else "searxng" if url else "none"
    if name == "exa":
        return ExaSearch()
    if name == "you":
        return YouSearch()
    if name == "searxng":
        if not url:
            raise ValueError("search backend searxng needs the instance URL (--searxng-url or SEARXNG_URL)")
        return SearxngSearch(url)
    if name == "none":
        return NoSearch()
    raise ValueError(f"search backend must be one of {', '.join(SEARCH_BACKENDS)}, not {name!r}")
