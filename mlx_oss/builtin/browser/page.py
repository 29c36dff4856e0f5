"""A page as the model sees it: text wrapped into numbered lines, shown a window at a time.

Search results and `find` matches are pages too (pseudo-pages whose links point at the results),
so `open`, scrolling and citations work the same on all of them.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable
from urllib.parse import quote, unquote

__all__ = ["Page", "Snippet", "wrap_lines", "window", "find_in_page", "open_line", "strip_links", "parse_display",
           "LINE_WIDTH", "FIND_PATH"]  # fmt: skip

LINE_WIDTH = 80
_LINK = re.compile(r"【\d+†(?P<text>[^†】]+)(?:†[^†】]+)?】")
_FIND_CONTEXT = 4  # lines shown per match, and lines shown above a match when it is opened
_MAX_FIND = 50
FIND_PATH = "/find?pattern="  # a find page's URL: the searched page's URL + this + the pattern
_DISPLAY = re.compile(r"\[(?P<cursor>\d+)\] (?P<header>[^\n]*)\n\*\*viewing lines \[(?P<loc>\d+) - (?P<end>-?\d+)\] of (?P<last>-?\d+)\*\*\n")
_NUMBERED = re.compile(r"L(\d+): ?(.*)")
# `title (url)`: the URL is what follows the last " (" that starts a web address (the browser opens http(s)
# only); a search page has no URL and its title, the query, may end in "(...)"; a title may quote a web
# address in parentheses; a find page's URL may hold " (" from its pattern, unquoted
_TITLE_URL = re.compile(r"(?P<title>.*) \((?P<url>(?:view-source:)?https?://.*)\)")


@dataclass(frozen=True)
class Display:
    """What one `window()` showed, read back from its text: cursor, page title and URL, numbered lines."""

    cursor: int
    title: str
    url: str
    total: int
    lines: dict[int, str]


def parse_display(text: str) -> Display | None:
    """The `window()` text `text` read back (None when it is not one, e.g. an error message)."""
    m = _DISPLAY.match(text)
    if m is None:
        return None
    header, url = m.group("header"), ""
    if (u := _TITLE_URL.fullmatch(header)) is not None:
        header, url = u.group("title"), u.group("url")
    lines = {}
    for row in text[m.end() :].split("\n"):  # the blank row after the position line matches nothing
        lm = _NUMBERED.fullmatch(row)
        if lm:
            lines[int(lm.group(1))] = lm.group(2)
    return Display(int(m.group("cursor")), header, url, int(m.group("last")) + 1, lines)


@dataclass(frozen=True)
class Snippet:
    """Where a result of a search or find page points: the URL and, for find, the line."""

    url: str
    title: str
    line: int | None = None


@dataclass
class Page:
    url: str
    title: str
    text: str
    links: dict[int, str] = field(default_factory=dict)
    snippets: dict[int, Snippet] | None = None  # set on search and find pages
    source_url: str | None = None  # for find pages: the page that was searched

    @cached_property
    def lines(self) -> list[str]:
        return wrap_lines(self.text)

    @cached_property
    def nbytes(self) -> int:
        """What holding this page costs, about: its text and link URLs in UTF-8."""
        links = [*self.links.values(), *(x for s in (self.snippets or {}).values() for x in (s.url, s.title))]
        return len(self.text.encode()) + sum(len(u.encode()) for u in links)

    @property
    def cited_url(self) -> str:
        """What a citation of this page refers to (a find page cites the page it searched)."""
        return self.source_url or self.url

    @classmethod
    def from_lines(cls, url: str, title: str, lines: list[str], source_url: str | None = None) -> Page:
        """A page known only by its numbered lines (a reopened chat's earlier displays); lines that
        were never shown are empty."""
        page = cls(url, title, "\n".join(lines), source_url=source_url)
        page.__dict__["lines"] = list(lines)  # exactly as numbered then, not wrapped again
        return page


def wrap_lines(text: str, width: int = LINE_WIDTH) -> list[str]:
    """Lines of at most `width` characters, breaking at spaces; empty lines kept (they number too)."""
    out: list[str] = []
    for line in text.split("\n"):
        out.extend(textwrap.wrap(line, width=width, replace_whitespace=False, drop_whitespace=False) or [""])
    return out


def _numbered(lines: list[str], start: int) -> str:
    return "\n".join(f"L{start + i}: {line}" for i, line in enumerate(lines))


def window(page: Page, cursor: int, loc: int, num_lines: int, count_tokens: Callable[[str], int], view_tokens: int) -> str:
    """The browsing display: `[cursor] title (url)`, the scroll position, then numbered lines from `loc`.

    `num_lines <= 0` shows as many lines as fit in `view_tokens` tokens (at least one).
    Raises ValueError when `loc` is past the end.
    """
    lines = page.lines
    total = len(lines)
    if loc >= total:
        raise ValueError(f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {total - 1}.")
    if num_lines > 0:
        end = min(loc + num_lines, total)
    else:
        end, used = loc, 0
        while end < total:
            used += count_tokens(f"L{end}: {lines[end]}\n")
            if used > view_tokens and end > loc:
                break
            end += 1
    header = page.title
    if page.url:
        header += f" ({unquote(page.url)[:1024]})"
    return f"[{cursor}] {header}\n**viewing lines [{loc} - {end - 1}] of {total - 1}**\n\n{_numbered(lines[loc:end], loc)}"


def strip_links(text: str) -> str:
    """Link markup replaced by the link text (what `find` matches against)."""
    return _LINK.sub(lambda m: m.group("text"), text)


def find_in_page(page: Page, pattern: str) -> Page:
    """A pseudo-page listing the case-insensitive matches of `pattern`, each a link to its line."""
    needle = pattern.lower()
    lines = [strip_links(line) for line in page.lines]
    chunks: list[str] = []
    snippets: dict[int, Snippet] = {}
    i = 0
    while i < len(lines) and len(chunks) < _MAX_FIND:
        if needle and needle in lines[i].lower():
            n = len(chunks)
            chunks.append(f"# 【{n}†match at L{i}】\n" + "\n".join(lines[i : i + _FIND_CONTEXT]))
            snippets[n] = Snippet(page.url, f"#{n}", i)
            i += _FIND_CONTEXT
        else:
            i += 1
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(
        url=f"{page.url}{FIND_PATH}{quote(pattern)}",
        title=f"Find results for text: `{pattern}` in `{page.title}`",
        text=text,
        links={n: page.url for n in snippets},
        snippets=snippets,
        source_url=page.url,
    )


def open_line(snippet: Snippet | None) -> int:
    """Where `open` on a result starts: a few lines above the matched line."""
    if snippet is None or snippet.line is None:
        return 0
    return snippet.line - _FIND_CONTEXT if snippet.line > _FIND_CONTEXT else snippet.line
