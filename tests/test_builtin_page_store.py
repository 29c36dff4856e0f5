"""The browser's page store is bounded in bytes (`Browser(max_page_bytes=)`): a conversation continued
with `previous_response_id` for hours keeps one browser, and must not keep every page it fetched. Past
the limit the cache of pages no cursor shows goes first, then the text of the oldest pages shown; their
cursors, URLs and titles stay, so earlier citations still resolve. The page just shown is kept whole,
whatever its size. A fake fetcher serves pages of known sizes (no network)."""

from __future__ import annotations

import json

from mlx_oss.builtin.browser.page import Page
from mlx_oss.builtin.browser.search import NoSearch
from mlx_oss.builtin.browser.tool import Browser

KB = 1000


class Pages:
    """A fetcher of `https://site/<name>` pages of `size` bytes of text each; counts fetches."""

    def __init__(self, size: int = 10 * KB) -> None:
        self.size = size
        self.fetched: list[str] = []

    def fetch(self, url: str, view_source: bool = False) -> Page:
        self.fetched.append(url)
        name = url.rsplit("/", 1)[-1]
        line = f"{name} text. " * 8
        text = "\n".join([line] * (self.size // (len(line) + 1)))
        return Page(url, f"Title {name}", text)


def held(b: Browser) -> int:
    """The bytes of the distinct pages the browser holds (shown or cached)."""
    return sum({id(p): p.nbytes for p in (*b.stack, *b._cache.values())}.values())


def open_(b: Browser, name: str) -> str:
    answer = b.call("open", json.dumps({"id": f"https://site/{name}"}))
    assert not answer.error, answer.text
    return answer.text


def test_pages_within_the_limit_are_all_kept_and_reopened_from_the_cache():
    pages = Pages()
    b = Browser(NoSearch(), fetcher=pages, max_page_bytes=100 * KB)
    for name in "abc":
        open_(b, name)
    open_(b, "a")
    assert pages.fetched == ["https://site/a", "https://site/b", "https://site/c"]
    assert all(p.text for p in b.stack) and b.stack[0] is b.stack[3]


def test_past_the_limit_the_oldest_pages_lose_their_text_and_keep_their_cursor_url_and_title():
    pages = Pages(size=10 * KB)
    b = Browser(NoSearch(), fetcher=pages, max_page_bytes=35 * KB)
    for i, name in enumerate("abcdefgh"):
        open_(b, name)
        assert held(b) <= 35 * KB, f"after page {i}"
        assert b.stack[-1].text and b.stack[-1].url == f"https://site/{name}"  # the page just shown is whole
    kept = [p.url.rsplit("/", 1)[-1] for p in b.stack if p.text]
    assert kept == ["f", "g", "h"]  # the three newest fit
    assert [p.url for p in b.stack] == [f"https://site/{n}" for n in "abcdefgh"]  # every cursor stays
    assert [p.title for p in b.stack] == [f"Title {n}" for n in "abcdefgh"]
    old, new = b.citations("see 【0†L1-L2】 and 【7†L1】")
    assert (old.cursor, old.url, old.title, old.quote) == (0, "https://site/a", "Title a", "")
    assert (new.url, new.title) == ("https://site/h", "Title h") and new.quote.startswith("h text.")
    open_(b, "a")  # its text is gone from memory: fetched again
    assert pages.fetched.count("https://site/a") == 2 and b.stack[-1].text


def test_a_page_shown_at_several_cursors_is_freed_at_all_of_them():
    b = Browser(NoSearch(), fetcher=Pages(size=10 * KB), max_page_bytes=25 * KB)
    open_(b, "a")
    b.call("open", json.dumps({"loc": 3}))  # scroll: cursor 1 shows the same page
    assert b.stack[0] is b.stack[1]
    for name in "bc":
        open_(b, name)
    assert not b.stack[0].text and not b.stack[1].text and held(b) <= 25 * KB


def test_a_page_larger_than_the_limit_is_still_shown_whole():
    b = Browser(NoSearch(), fetcher=Pages(size=50 * KB), max_page_bytes=20 * KB)
    for name in "ab":
        text = open_(b, name)
        assert f"{name} text." in text
    assert b.stack[-1].nbytes > 20 * KB and not b.stack[0].text
    assert held(b) == b.stack[-1].nbytes  # nothing else is held


def test_the_size_of_a_page_counts_its_text_and_links_in_utf8():
    page = Page("https://x/", "T", "héllo", links={0: "https://x/ü"})
    assert page.nbytes == len("héllo".encode()) + len("https://x/ü".encode())


def test_cached_pages_no_cursor_shows_go_first_oldest_first_and_only_as_many_as_needed():
    """After a restore (a reopened chat) the stack holds the pages rebuilt from the displays, and the
    pages fetched before stay cached, shown by no cursor. Past the limit the oldest of those goes, and
    only it: the next ones still open from the cache, and no shown page loses its text."""
    pages = Pages(size=10 * KB)
    b = Browser(NoSearch(), fetcher=pages, max_page_bytes=45 * KB)
    displays = [open_(b, name) for name in "abc"]
    b.restore(displays)  # each display showed about 4 KB of its page: 12 KB rebuilt, 30 KB cached
    assert all(p not in b._cache.values() for p in b.stack)  # rebuilt pages; a, b, c cached apart
    assert [p.nbytes for p in b.stack] == [len("\n".join(p.lines).encode()) for p in b.stack]  # what was shown
    open_(b, "d")
    assert held(b) <= 45 * KB and all(p.text for p in b.stack)
    assert list(b._cache) == ["https://site/b", "https://site/c", "https://site/d"]
    open_(b, "b")
    open_(b, "a")
    assert pages.fetched == [f"https://site/{n}" for n in "abcda"]  # b from the cache, a fetched again
    pages = Pages(size=10 * KB)  # a tighter limit: two cached pages must go, the oldest two
    b = Browser(NoSearch(), fetcher=pages, max_page_bytes=35 * KB)
    b.restore([open_(b, name) for name in "abc"])
    open_(b, "d")
    assert list(b._cache) == ["https://site/c", "https://site/d"] and held(b) <= 35 * KB and all(p.text for p in b.stack)


def test_pages_that_fill_the_limit_exactly_are_all_kept():
    sizes = Browser(NoSearch(), fetcher=Pages(size=10 * KB))
    for name in "ab":
        open_(sizes, name)
    b = Browser(NoSearch(), fetcher=Pages(size=10 * KB), max_page_bytes=held(sizes))
    for name in "ab":
        open_(b, name)
    assert all(p.text for p in b.stack) and len(b._cache) == 2 and held(b) == b.max_page_bytes


def test_the_oldest_shown_pages_lose_their_text_only_as_far_as_needed():
    """Exactly at the limit nothing more goes; a lower limit frees as many of the oldest pages as it takes,
    a page shown at two cursors once."""
    page = Pages(size=10 * KB).fetch("https://site/x").nbytes
    b = Browser(NoSearch(), fetcher=Pages(size=10 * KB), max_page_bytes=2 * page)
    for name in "abc":
        open_(b, name)
    assert [bool(p.text) for p in b.stack] == [False, True, True] and held(b) == 2 * page  # at the limit: b stays
    b = Browser(NoSearch(), fetcher=Pages(size=10 * KB), max_page_bytes=10 * page)
    open_(b, "a")
    b.call("open", json.dumps({"loc": 2}))  # cursor 1 shows a again
    for name in "bc":
        open_(b, name)
    b.max_page_bytes = page + page // 2  # room for the newest page and half of another
    open_(b, "d")
    assert [bool(p.text) for p in b.stack] == [False, False, False, False, True] and held(b) == page


def test_a_find_page_that_lost_its_text_still_cites_the_page_it_searched():
    b = Browser(NoSearch(), fetcher=Pages(size=10 * KB), max_page_bytes=25 * KB)
    open_(b, "a")
    assert not b.call("find", json.dumps({"pattern": "a text"})).error  # cursor 1: a find page on a
    for name in "bcd":
        open_(b, name)
    assert not b.stack[1].text
    (c,) = b.citations("see 【1†L0】")
    assert (c.cursor, c.url) == (1, "https://site/a")
