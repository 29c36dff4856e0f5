"""The `browser` built-in tool: `search`, `open`, `find` over a stack of pages, and its citations.

Behaves like OpenAI's reference browser (gpt_oss/tools/simple_browser): every display gets the next
cursor, pages are shown as numbered 80-column lines in a window of about `view_tokens` tokens,
`open` follows a link id of the page at `cursor` (or a URL, or scrolls with `loc`), `find` makes a
pseudo-page of matches, and `【cursor†L3-L7】` in the answer resolves to the cursor's page.
Failures of any kind come back as `BrowserAnswer(error=True)` with a message the model can read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from mlx_oss.builtin.browser.fetch import BrowserError, Fetcher
from mlx_oss.builtin.browser.html import domain_of, neutralize
from mlx_oss.builtin.browser.page import FIND_PATH, Page, Snippet, find_in_page, open_line, parse_display, strip_links, window
from mlx_oss.builtin.browser.search import SearchBackend, make_search_backend
from mlx_oss.events import Citation
from mlx_oss.harmony import ToolNamespace

__all__ = ["Browser", "BrowserAnswer", "CITATION"]

CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<content>[^†】]+)(?:†[^†】]*)?】")
_LINES = re.compile(r"L(\d+)(?:-L?(\d+))?$")
_PARAMS: dict[str, dict[str, tuple[type, ...]]] = {
    "search": {"query": (str,), "topn": (int, float), "top_n": (int, float), "source": (str, type(None))},
    "open": {"id": (int, float, str), "cursor": (int, float), "loc": (int, float), "num_lines": (int, float),
             "view_source": (bool,), "source": (str, type(None))},  # fmt: skip
    "find": {"pattern": (str,), "cursor": (int, float)},
}
_REQUIRED = {"search": ("query",), "open": (), "find": ("pattern",)}


@dataclass(frozen=True)
class BrowserAnswer:
    """What one browser call shows the model; `page` is the page displayed (None after an error)."""

    text: str
    error: bool = False
    page: Page | None = None


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class Browser:
    """One chat's browser: its page stack, its page cache, a search backend and a fetcher.

    The pages it holds (shown or cached) stay within `max_page_bytes`: a conversation continued for
    hours must not keep every page it ever fetched. Past the limit, cached pages no cursor shows go
    first (oldest first), then the text of the oldest pages shown; their cursors, URLs and titles
    stay, so earlier citations still resolve (without their quoted lines). The page just shown is
    always kept whole."""

    name = "browser"

    def __init__(
        self,
        search: SearchBackend | str = "auto",
        *,
        fetcher: Fetcher | None = None,
        count_tokens: Callable[[str], int] | None = None,
        view_tokens: int = 1024,
        max_results: int = 10,
        max_page_bytes: int = 32 << 20,
    ) -> None:
        self.backend = make_search_backend(search) if isinstance(search, str) else search
        self.fetcher = fetcher or Fetcher()
        self.count_tokens = count_tokens or _approx_tokens
        self.counts_exactly = count_tokens is not None  # False: a chat may give it its tokenizer's count
        self.view_tokens = view_tokens
        self.max_results = max_results
        self.max_page_bytes = max_page_bytes
        self.stack: list[Page] = []  # cursor i shows stack[i]
        self._cache: dict[str, Page] = {}

    def reset(self) -> None:
        """Forget the pages shown (cursors start at 0 again) and the cache."""
        self.stack.clear()
        self._cache.clear()

    def restore(self, displays: Iterable[str]) -> None:
        """Rebuild the page stack from the texts earlier calls showed the model (a reopened chat's
        browser results, in order), so cursors go on where they were and earlier citations resolve.
        Only what was shown comes back: the lines displayed (for quotes), titles and URLs; nothing
        is fetched. Texts that are not displays (errors) are skipped."""
        by_cursor: dict[int, tuple] = {}
        lines: dict[str, dict[int, str]] = {}
        for text in displays:
            d = parse_display(text)
            if d is None:
                continue
            url, source = d.url, None
            if FIND_PATH in url:
                source = url.partition(FIND_PATH)[0]
            key = url or f"#{d.cursor}"  # a search page has no URL: its own lines
            lines.setdefault(key, {}).update(d.lines)
            by_cursor[d.cursor] = (key, url, d.title, d.total, source)
        pages: dict[str, Page] = {}
        self.stack.clear()
        for cursor in range(max(by_cursor, default=-1) + 1):
            if cursor not in by_cursor:
                self.stack.append(Page("", "", ""))
                continue
            key, url, title, total, source = by_cursor[cursor]
            if key not in pages:
                known = lines[key]
                rows = [known.get(i, "") for i in range(max(total, max(known, default=-1) + 1))]
                pages[key] = Page.from_lines(url, title, rows, source)
            self.stack.append(pages[key])

    def namespace(self) -> ToolNamespace:
        """The tool section of the system message, exactly as gpt-oss was trained on it."""
        return ToolNamespace.browser()

    # ------------------------------------------------------------------ calls

    def call(self, function: str, raw_arguments: str) -> BrowserAnswer:
        """Run `browser.<function>` with the model's JSON arguments; never raises."""
        try:
            args = self._arguments(function, raw_arguments)
            page, loc, num_lines = getattr(self, f"_{function}")(**args)
            return self._show(page, loc, num_lines)
        except BrowserError as e:
            return BrowserAnswer(str(e), error=True)
        except Exception as e:  # a bug here must not end the conversation either
            return BrowserAnswer(f"browser.{function} failed: {type(e).__name__}: {e}", error=True)

    def _arguments(self, function: str, raw: str) -> dict[str, Any]:
        if function not in _PARAMS:
            raise BrowserError(f"browser has no function {function!r}; use search, open or find")
        text = raw.strip()
        try:
            args = json.loads(text) if text else {}
        except json.JSONDecodeError as e:
            raise BrowserError(f"invalid JSON arguments for browser.{function}: {e.msg} at column {e.colno}") from None
        if not isinstance(args, dict):
            raise BrowserError(f"browser.{function} takes a JSON object of arguments")
        spec = _PARAMS[function]
        for key, value in args.items():
            if key not in spec:
                raise BrowserError(f"browser.{function} has no argument {key!r} (it takes {', '.join(spec)})")
            if not isinstance(value, spec[key]) or (isinstance(value, bool) and bool not in spec[key]):
                raise BrowserError(f"browser.{function}: `{key}` has the wrong type ({type(value).__name__})")
        missing = [k for k in _REQUIRED[function] if k not in args]
        if missing:
            raise BrowserError(f"browser.{function} needs `{missing[0]}`")
        return {k: int(v) if isinstance(v, float) and k != "id" else v for k, v in args.items()}

    def _search(self, query: str, topn: int = 10, top_n: int | None = None, source: str | None = None):
        n = max(1, min(int(top_n or topn), self.max_results))
        with self.fetcher.client(check_address=False) as client:
            results = self.backend.search(query, n, client)
        lines, links, snippets = ["# Search Results", ""], {}, {}
        for i, r in enumerate(results[:n]):
            title = neutralize(r.title).replace("†", "‡")
            lines.append(f"* 【{i}†{title}†{domain_of(r.url)}】 {neutralize(r.snippet)}".rstrip())
            links[i] = r.url
            snippets[i] = Snippet(r.url, title)
        if not results:
            lines.append(f"No results for `{query}`.")
        return Page("", neutralize(query), "\n".join(lines), links, snippets), 0, -1

    def _open(self, id: int | float | str = -1, cursor: int = -1, loc: int = -1, num_lines: int = -1,
              view_source: bool = False, source: str | None = None):  # fmt: skip
        snippet: Snippet | None = None
        if isinstance(id, str) and not id.strip().lstrip("-").isdigit():
            url = id.strip()
        else:
            link = int(id)
            current = self._page(cursor)
            if link >= 0:
                if link not in current.links:
                    raise BrowserError(f"Invalid link id `{link}`.")
                url = current.links[link]
                snippet = (current.snippets or {}).get(link)
            elif not view_source:  # scroll the page at `cursor`
                return current, max(loc, 0), num_lines
            else:
                url = current.cited_url
        page = self._fetch(url, view_source)
        return page, loc if loc >= 0 else open_line(snippet), num_lines

    def _find(self, pattern: str, cursor: int = -1):
        page = self._page(cursor)
        if page.snippets is not None:
            raise BrowserError("Cannot run `find` on a search results page or a find results page")
        return find_in_page(page, pattern), 0, -1

    # ------------------------------------------------------------------ pages

    def _page(self, cursor: int) -> Page:
        if not self.stack:
            raise BrowserError("No page is open yet: search, or open a URL, first.")
        if cursor == -1:
            return self.stack[-1]
        if not 0 <= cursor < len(self.stack):
            raise BrowserError(f"Cursor `{cursor}` is out of range. Available cursor indices: [0 - {len(self.stack) - 1}].")
        return self.stack[cursor]

    def _fetch(self, url: str, view_source: bool) -> Page:
        key = f"view-source:{url}" if view_source else url
        if key not in self._cache:
            try:
                self._cache[key] = self.fetcher.fetch(url, view_source=view_source)
            except BrowserError as e:
                raise BrowserError(f"Error fetching URL `{url[:300]}`: {e}") from None
        self._cache[key] = self._cache.pop(key)  # the most recently used last
        return self._cache[key]

    def _show(self, page: Page, loc: int, num_lines: int) -> BrowserAnswer:
        cursor = len(self.stack)
        try:
            text = window(page, cursor, loc, num_lines, self.count_tokens, self.view_tokens)
        except ValueError as e:
            raise BrowserError(str(e)) from None
        self.stack.append(page)
        self._bound()
        return BrowserAnswer(text, page=page)

    def _bound(self) -> None:
        """Hold at most `max_page_bytes` of pages (see the class docstring)."""
        sizes = {id(p): p.nbytes for p in (*self.stack, *self._cache.values())}
        total = sum(sizes.values())
        shown = {id(p) for p in self.stack}
        for key in list(self._cache):
            if total <= self.max_page_bytes:
                return
            page = self._cache.pop(key)
            if id(page) not in shown:
                total -= sizes.pop(id(page))
        for page in self.stack[:-1]:
            if total <= self.max_page_bytes:
                return
            if id(page) in sizes and page.text:
                total -= sizes.pop(id(page))
                light = Page(page.url, page.title, "", source_url=page.source_url)
                self.stack = [light if q is page else q for q in self.stack]

    # ------------------------------------------------------------------ citations

    def citations(self, text: str) -> tuple[Citation, ...]:
        """The `【cursor†L…】` citations in `text` whose cursor shows a page with a URL."""
        out = []
        for m in CITATION.finditer(text):
            cursor = int(m.group("cursor"))
            if cursor >= len(self.stack):
                continue
            page = self.stack[cursor]
            if not page.cited_url:
                continue
            start = end = None
            quote = ""
            lm = _LINES.match(m.group("content").strip())
            if lm:
                start = int(lm.group(1))
                end = int(lm.group(2)) if lm.group(2) else start
                quote = "\n".join(strip_links(line) for line in page.lines[start : end + 1])
            title = page.title if page.source_url is None else self._title_of(page.source_url)
            out.append(Citation(m.group(0), m.start(), m.end(), cursor, page.cited_url, title, start, end, quote))
        return tuple(out)

    def _title_of(self, url: str) -> str:
        return next((p.title for p in reversed(self.stack) if p.url == url), url)
