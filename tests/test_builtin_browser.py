"""The built-in browser against a local web server: windows, line numbers, find, the cursor stack,
citations, limits, every failure (each an answer the model can read), and the search backends."""

from __future__ import annotations

import json
import re

import pytest

from mlx_oss.builtin.browser import (
    Browser,
    ExaSearch,
    FetchLimits,
    Fetcher,
    NoSearch,
    SearxngSearch,
    YouSearch,
    make_search_backend,
)
from mlx_oss.builtin.browser.html import html_to_text
from mlx_oss.tokenizer import load_tokenizer
from tests.web_fixture import EXA_KEY, PARAGRAPHS, YDC_KEY, WebServer

ENC = load_tokenizer()


def count(text: str) -> int:
    return len(ENC.encode_ordinary(text))


@pytest.fixture(scope="module")
def web():
    with WebServer() as w:
        yield w


def browser(web, search=None, **kw) -> Browser:
    limits = kw.pop("limits", FetchLimits(timeout_s=5.0))
    return Browser(search or NoSearch(), fetcher=Fetcher(limits, allow_private=True), count_tokens=count, **kw)


def call(b: Browser, fn: str, **args):
    return b.call(fn, json.dumps(args))


def shown_lines(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^L(\d+): ", text, re.M)]


def test_open_url_shows_numbered_window_and_scrolls(web):
    b = browser(web, view_tokens=200)
    a = call(b, "open", id=web.url("/page"))
    assert not a.error
    first = a.text.splitlines()[0]
    assert first == f"[0] MLX Release Notes ({web.url('/page')})"
    m = re.search(r"\*\*viewing lines \[0 - (\d+)\] of (\d+)\*\*", a.text)
    end, last = int(m.group(1)), int(m.group(2))
    assert shown_lines(a.text) == list(range(end + 1))
    assert 0 < end < last  # the window is bounded by view_tokens
    assert count(a.text) < 200 + 80  # about the token budget (one line of slack)
    assert "L0: # MLX Release Notes" in a.text and "var x" not in a.text  # scripts dropped
    # scroll: open without id keeps the page, new cursor
    s = call(b, "open", loc=10, num_lines=5)
    assert s.text.startswith("[1] MLX Release Notes") and shown_lines(s.text) == [10, 11, 12, 13, 14]
    assert "**viewing lines [10 - 14] of" in s.text
    assert len(web.hits) and web.hits.count("/page") == 1  # cached: one fetch for both displays


def test_links_are_numbered_and_open_by_id(web):
    b = browser(web)
    a = call(b, "open", id=web.url("/page"))
    assert "【0†other page】" in a.text and "【1†the repo†github.com】" in a.text
    page = b.stack[0].text
    assert "〖3†L1-L2〗" in page and "【3†L1-L2】" not in page  # a page cannot forge markup
    o = call(b, "open", id=0)
    assert o.text.startswith(f"[1] Other ({web.url('/other')})") and "The other page says hello." in o.text
    # the link ids of an earlier cursor
    o2 = call(b, "open", cursor=0, id=0)
    assert o2.text.startswith("[2] Other")
    bad = call(b, "open", id=42)
    assert bad.error and "Invalid link id `42`" in bad.text
    assert len(b.stack) == 3  # errors push nothing


def test_find_makes_a_pseudo_page_and_opening_a_match_centers_it(web):
    b = browser(web)
    call(b, "open", id=web.url("/page"))
    f = call(b, "find", pattern="QUANTIZATION kernels")
    assert f.text.startswith("[1] Find results for text: `QUANTIZATION kernels` in `MLX Release Notes`")
    assert b.stack[1].url == web.url("/page") + "/find?pattern=QUANTIZATION%20kernels"  # its own URL (a restore's key)
    assert shown_lines(f.text)[0] == 0 and len(shown_lines(f.text)) > 1  # from the top, as many lines as fit
    m = re.search(r"# 【0†match at L(\d+)】", f.text)
    line = int(m.group(1))
    assert "quantization kernels are now faster" in b.stack[0].lines[line]
    o = call(b, "open", id=0)  # opens the page a few lines above the match
    assert shown_lines(o.text)[0] == line - 4 and f"L{line}: The quantization" in o.text
    none = call(b, "find", pattern="zebra", cursor=0)
    assert "No `find` results for pattern: `zebra`" in none.text
    nested = call(b, "find", pattern="x")  # current page is a find page
    assert nested.error and nested.text == "Cannot run `find` on a search results page or a find results page"


def test_cursor_stack_and_citations_resolve_to_urls(web):
    b = browser(web)
    call(b, "open", id=web.url("/page"))  # cursor 0
    call(b, "open", id=web.url("/other"))  # cursor 1
    call(b, "find", pattern="item number 7", cursor=0)  # cursor 2: a find page of cursor 0
    answer = "MLX lists items【0†L4-L5】, the other page greets【1†L2】 and 【2†L0】; bogus 【9†L1】【3†L1】 and 【1†x】."
    cites = b.citations(answer)
    assert [c.cursor for c in cites] == [0, 1, 2, 1]  # cursor 3 is one past the stack: not a page
    c0 = cites[0]
    assert (c0.url, c0.title, c0.line_start, c0.line_end) == (web.url("/page"), "MLX Release Notes", 4, 5)
    assert answer[c0.start : c0.end] == "【0†L4-L5】" and c0.quote == "\n".join(b.stack[0].lines[4:6])
    assert cites[1].url == web.url("/other") and cites[1].line_start == cites[1].line_end == 2
    assert cites[2].url == web.url("/page") and cites[2].title == "MLX Release Notes"  # find page cites its page
    assert cites[3].line_start is None and cites[3].quote == ""  # 【1†x】: the page, no lines
    bad = call(b, "open", cursor=7, loc=0)
    assert bad.error and "Cursor `7` is out of range" in bad.text


def test_images_are_numbered_placeholders_named_by_alt_or_title():
    """An image is `[Image n: alt]` in the page text (its title when it has no alt, whitespace collapsed;
    bare `[Image n]` without either), numbered from 0 in page order, so the model knows it is there."""
    page = html_to_text("<p>Before <img src='a.png' alt=' A\n  chart ' title='not this'> and "
                        "<img src='b.png' title='The  logo'> then <img src='c.png' alt=''> end.</p>", "https://x.example/")  # fmt: skip
    assert page.text == "Before [Image 0: A chart] and [Image 1: The logo] then [Image 2] end."


def test_loc_past_the_end_and_plain_text_and_view_source(web):
    b = browser(web)
    call(b, "open", id=web.url("/other"))
    past = call(b, "open", loc=500)
    assert past.error and "Cannot exceed page maximum" in past.text
    t = call(b, "open", id=web.url("/plain.txt"))
    assert "L0: line one" in t.text and "L1: line two〖0†x〗" in t.text
    v = call(b, "open", id=web.url("/other"), view_source=True)
    assert "&lt;" not in v.text and "<title>Other</title>" in v.text


@pytest.mark.parametrize(
    "path, expect",
    [
        ("/missing", "HTTP 404 Not Found"),
        ("/error", "HTTP 500"),
        ("/image.png", "unsupported content type image/png"),
        ("/huge", "too large"),
        ("/chunked", "too large"),
        ("/loop", "more than 5 redirects"),
        ("/slow", "timed out"),
    ],
)
def test_fetch_failures_become_answers(web, path, expect):
    b = browser(web, limits=FetchLimits(timeout_s=1.0, max_bytes=2_000_000))
    a = call(b, "open", id=web.url(path))
    assert a.error and expect in a.text and a.text.startswith(f"Error fetching URL `{web.url(path)}`")
    assert b.stack == []


def test_redirect_followed_and_unreachable_and_bad_urls(web):
    b = browser(web)
    r = call(b, "open", id=web.url("/redirect"))
    assert r.text.startswith(f"[0] MLX Release Notes ({web.url('/page')})")
    down = call(b, "open", id="http://127.0.0.1:1/nothing")
    assert down.error and "cannot reach the site" in down.text
    for bad in ("file:///etc/passwd", "not a url", "ftp://x.org/a"):
        a = call(b, "open", id=bad)
        assert a.error and "not an http(s) URL" in a.text


def test_private_addresses_are_refused_by_default(web):
    b = Browser(NoSearch(), fetcher=Fetcher(FetchLimits(timeout_s=2)))
    before = len(web.hits)
    a = call(b, "open", id=web.url("/page"))
    assert a.error and "local or private-network address" in a.text
    assert len(web.hits) == before  # nothing was sent


@pytest.mark.parametrize(
    "fn, raw, expect",
    [
        ("open", "{not json", "invalid JSON arguments for browser.open"),
        ("open", "[1, 2]", "takes a JSON object"),
        ("search", "{}", "browser.search needs `query`"),
        ("find", '{"pattern": 3}', "`pattern` has the wrong type"),
        ("open", '{"url": "x"}', "has no argument 'url'"),
        ("open", '{"loc": true}', "`loc` has the wrong type"),
        ("scroll", "{}", "browser has no function 'scroll'"),
        ("find", '{"pattern": "x"}', "No page is open yet"),
    ],
)
def test_malformed_arguments_become_answers(web, fn, raw, expect):
    a = browser(web).call(fn, raw)
    assert a.error and expect in a.text


def test_exa_search_page_and_open_result(web):
    b = browser(web, ExaSearch(base_url=web.url("/exa"), api_key=EXA_KEY))
    s = call(b, "search", query="mlx news", topn=2)
    assert not s.error and s.text.startswith("[0] mlx news\n**viewing lines [0 -")
    assert "【0†Result 0 about MLX†127.0.0.1:" in s.text and "Summary 0." in s.text
    assert web.posted[-1]["numResults"] == 2 and web.posted[-1]["query"] == "mlx news"
    o = call(b, "open", id=0)
    assert o.text.startswith("[1] MLX Release Notes")
    assert b.citations("see 【0†L2】") == ()  # a results page has no URL to cite
    (c,) = b.citations("see 【0†L2】 and 【1†L2】")  # ... and the page after it still is one
    assert c.cursor == 1 and c.url == web.url("/page")
    assert b.stack[0].url == "" and b.stack[0].snippets[0].title == "Result 0 about MLX"
    call(b, "search", query="one only", topn=0)  # at least one result is asked for
    assert web.posted[-1]["numResults"] == 1


def test_exa_key_from_env_and_never_shown(web, monkeypatch):
    monkeypatch.setenv("EXA_API_KEY", EXA_KEY)
    backend = make_search_backend("auto")
    assert isinstance(backend, ExaSearch) and EXA_KEY not in repr(backend)
    backend.base_url = web.url("/exa")
    assert not call(browser(web, backend), "search", query="q").error
    wrong = ExaSearch(base_url=web.url("/exa"), api_key="wrong-key-zzz")
    a = call(browser(web, wrong), "search", query="q")
    assert a.error and "rejected the API key" in a.text and "wrong-key-zzz" not in a.text
    monkeypatch.delenv("EXA_API_KEY")
    missing = call(browser(web, ExaSearch(base_url=web.url("/exa"))), "search", query="q")
    assert missing.error and "set EXA_API_KEY" in missing.text


def test_you_and_searxng_backends(web):
    y = call(browser(web, YouSearch(base_url=web.url("/you"), api_key=YDC_KEY)), "search", query="mlx")
    assert "【3†News about MLX†" in y.text and "Summary 0. more" in y.text
    s = call(browser(web, SearxngSearch(web.url("/searx"))), "search", query="mlx")
    assert "【2†Result 2 about MLX†" in s.text and "Summary 2." in s.text


@pytest.mark.parametrize(
    "backend, expect",
    [
        (lambda w: ExaSearch(base_url=w.url("/quota"), api_key="k"), "out of quota or rate-limited (HTTP 429)"),
        (lambda w: SearxngSearch(w.url("/down")), "SearXNG search failed (HTTP 503: maintenance)"),
        (lambda w: SearxngSearch(w.url("/notjson")), "not JSON"),
        (lambda w: SearxngSearch("http://127.0.0.1:1"), "SearXNG search is unreachable"),
        (lambda w: NoSearch(), "search is not available"),
    ],
)
def test_search_failures_become_answers(web, backend, expect):
    a = call(browser(web, backend(web)), "search", query="q")
    assert a.error and expect in a.text


def test_make_search_backend_choices():
    env = {"YDC_API_KEY": "k"}
    assert isinstance(make_search_backend("auto", env=env), YouSearch)
    assert isinstance(make_search_backend("auto", env={}), NoSearch)
    assert make_search_backend("auto", env={"SEARXNG_URL": "http://s"}).url == "http://s"
    with pytest.raises(ValueError, match="needs the instance URL"):
        make_search_backend("searxng", env={})
    with pytest.raises(ValueError, match="must be one of"):
        make_search_backend("bing", env={})


def test_paragraphs_are_all_reachable_by_scrolling(web):
    b = browser(web, view_tokens=300)
    a = call(b, "open", id=web.url("/page"))
    seen, loc = set(), 0
    total = len(b.stack[0].lines)
    for _ in range(100):  # bounded
        seen.update(shown_lines(a.text))
        loc = max(seen) + 1
        if loc >= total:
            break
        a = call(b, "open", loc=loc)
    assert seen == set(range(total))
    text = "\n".join(b.stack[0].lines)
    assert all(p in text for p in PARAGRAPHS)


@pytest.mark.parametrize(
    "url, title",
    [
        ("https://a.test/x", "Notes (draft)"),  # parentheses in a page's title
        ("", "python (programming)"),  # a search page: no URL, the query as its title
        ("", "mlx"),
        ("view-source:https://a.test/x", "Source of https://a.test/x"),
        ("https://en.wikipedia.org/wiki/Python_(programming_language)", "Python"),  # parentheses in the URL
        ("https://a.test/x/find?pattern=f(x) (y)", "Find results for text: `f(x) (y)` in `Notes (draft)`"),
        ("https://y.test/p", "Mirror of (https://x.test/p)"),  # a web address in parentheses in the title
    ],
)
def test_a_display_reads_back_as_shown(url, title):
    """`parse_display` (a reopened chat's browser pages are rebuilt from what the model was shown) gives
    back the title, URL, cursor, size and numbered lines `window()` wrote, whatever parentheses the title
    or the URL hold: a search for "python (programming)" is a page without a URL, not one at "programming"."""
    from mlx_oss.builtin.browser.page import Page, parse_display, window

    page = Page(url, title, "\n".join(f"line {i}" for i in range(12)))
    d = parse_display(window(page, 7, 3, 4, len, 100))
    assert (d.cursor, d.title, d.url, d.total) == (7, title, url, 12)
    assert d.lines == {3: "line 3", 4: "line 4", 5: "line 5", 6: "line 6"}
    assert parse_display("Error: no such page") is None


def test_a_find_page_whose_page_was_not_shown_cites_its_url_as_the_title():
    """A reopened chat whose `open` result is gone (a message deleted) but whose `find` result stays: the
    find page is rebuilt alone, and a citation of it names the searched page by its URL, as its title."""
    from mlx_oss.builtin.browser.page import Page, window

    found = Page("https://a.test/x/find?pattern=item", "Find results for text: `item` in `Notes`", "item one\nitem two")
    browser = Browser(NoSearch())
    browser.restore([window(found, 0, 0, 2, len, 100)])
    (c,) = browser.citations("See 【0†L1】.")
    assert (c.url, c.title, c.quote) == ("https://a.test/x", "https://a.test/x", "item two")


def test_a_refused_url_is_named_in_at_most_200_characters_on_one_line():
    """The refusal names the URL as given, whitespace collapsed, cut to 200 characters with an ellipsis."""
    from mlx_oss.builtin.browser import BrowserError

    def refusal(url: str) -> str:
        with pytest.raises(BrowserError) as e:
            Fetcher().fetch(url)
        return str(e.value)

    exact = "ftp://a.test/" + "x" * 187  # 200 characters: shown whole
    assert refusal(exact) == f"`{exact}` is not an http(s) URL"
    long = exact + "y"
    assert refusal(long) == f"`{exact[:199]}…` is not an http(s) URL"
    assert refusal("ftp://a.test/a \n\t b") == "`ftp://a.test/a b` is not an http(s) URL"


def test_find_lists_at_most_50_matches_from_the_first_line():
    """`find`: a match on line 0 is found; 60 matching lines (each past the last one's context) give the
    first 50, each a link to its line."""
    from mlx_oss.builtin.browser.page import Page, find_in_page

    page = Page("https://a.test/x", "T", "\n".join("needle" if i % 5 == 0 else "hay" for i in range(300)))
    found = find_in_page(page, "NEEDLE")
    assert [s.line for s in found.snippets.values()] == list(range(0, 250, 5))
    assert found.lines[0] == "# 【0†match at L0】"


def test_a_reopened_page_keeps_its_lines_as_numbered_then():
    """A display read back keeps each row as one line even when it is longer than today's wrap width (an
    older display): the line numbers its citations name stay right."""
    row = "w" * 120
    shown = f"[0] Old page (https://a.test/old)\n**viewing lines [0 - 2] of 2**\n\nL0: first\nL1: {row}\nL2: last"
    browser = Browser(NoSearch())
    browser.restore([shown])
    (c,) = browser.citations("【0†L1-L2】")
    assert c.quote == f"{row}\nlast" and browser.stack[0].lines == ["first", row, "last"]


def test_links_read_as_their_text():
    """What `find` searches and a citation quotes: a link `【id†text†domain】` as its text alone."""
    from mlx_oss.builtin.browser.page import strip_links

    assert strip_links("see 【3†MLX docs†mlx.dev】 and 【12†the notes】.") == "see MLX docs and the notes."


def test_only_anchors_to_web_pages_become_links():
    """A link is an anchor with text and an http(s) URL with a host (relative ones resolved against the
    page): not an anchor in the page, another scheme, a missing or empty href, or no text. A `†` in the
    text would end the link's markup early: it reads `‡`."""
    html = ("<p><a href='/docs'>Docs</a> <a href='#top'>Top</a> <a href='mailto:a@b.test'>Mail</a> "
            "<a href='javascript:go()'>Go</a> <a href='tel:123'>Call</a> <a href='data:text/html,x'>Data</a> "
            "<a>No href</a> <a href=' '>Blank</a> <a href='/empty'> </a> <a href='http:///nowhere'>Hostless</a> "
            "<a href='https://other.test/x'>Dagger † here</a></p>")  # fmt: skip
    page = html_to_text(html, "https://site.test/page")
    assert page.text == "【0†Docs】 Top Mail Go Call Data No href Blank  Hostless 【1†Dagger ‡ here†other.test】"
    assert page.links == {0: "https://site.test/docs", 1: "https://other.test/x"}
    bare = html_to_text("<a href='/docs'>Docs</a> <a href='http://x.test/'>X</a>")  # no page URL: no base
    assert (bare.text, bare.title) == ("Docs 【0†X†x.test】", "")


def test_titles_lists_and_marks_read_plainly():
    """The page title without the whitespace around it (the site's name when there is none); lists with one
    bullet at every depth; underscores and asterisks left as written (no Markdown escapes)."""
    html = ("<html><head><title>\n  Release  notes \n</title></head><body><ul><li>a<ul><li>b</li></ul></li></ul>"
            "<p>x_y *z*</p></body></html>")  # fmt: skip
    page = html_to_text(html, "https://site.test/p")
    assert (page.title, page.text) == ("Release  notes", "* a\n  * b\n\nx_y *z*")
    assert html_to_text("<p>x</p>", "https://site.test/p").title == "site.test"
    assert html_to_text("<title>Release<i>notes</i> 2</title><p>x</p>", "https://site.test/p").title == "Release notes 2"  # words apart


def test_a_page_reads_as_plain_lines():
    """ATX headings; bold and italic without marks; a line break as a new line; trailing spaces and runs of
    blank lines gone; Markdown's special characters as written (no escapes); the content of scripts, styles,
    templates, drawings, formulas and embedded frames left out; preformatted text fenced as it is."""
    html = """<html><head><title>T</title><style>p{}</style></head><body>
<h2>Section  two</h2>
<p>Some <b>bold</b> and <i>italic</i> and <strong>strong</strong> text.   </p>
<p>line one   <br>line two<br/>line three</p>
<p>1. not a list + plus - minus # hash [brackets] (parens) &lt;tag&gt; back\\slash</p>
<script>var x = 1;</script><noscript>no</noscript><template>t</template><svg><text>s</text></svg><math>m</math>
<iframe>f</iframe><object>o</object><canvas>c</canvas>



<ul><li>first</li><li>second</li></ul>
<pre>  code   keeps   spaces</pre>
</body></html>"""
    assert html_to_text(html, "https://a.test/x").text == (
        "## Section two\n\nSome bold and italic and strong text.\n\nline one\nline two\nline three\n\n"
        "1. not a list + plus - minus # hash [brackets] (parens) <tag> back\\slash\n\n* first\n* second\n\n"
        "```\n  code   keeps   spaces\n```")  # fmt: skip


def test_a_restore_skips_what_is_not_a_display_and_keeps_a_missing_cursor_empty():
    """A reopened chat's browser results: an error text is no page, and a cursor whose result is gone (a
    message deleted) is an empty page, so the cursors after it keep their numbers and citations."""
    from mlx_oss.builtin.browser.page import Page, window

    a = Page("https://a.test/a", "A", "a zero\na one")
    c = Page("https://a.test/c", "C", "c zero\nc one")
    browser = Browser(NoSearch())
    browser.restore([window(a, 0, 0, 2, len, 100), "Error fetching URL `https://a.test/b`: HTTP 404", window(c, 2, 0, 2, len, 100)])
    assert [(p.url, p.title, p.lines) for p in browser.stack] == [
        ("https://a.test/a", "A", ["a zero", "a one"]),
        ("", "", [""]),
        ("https://a.test/c", "C", ["c zero", "c one"]),
    ]
    (c1,) = browser.citations("【2†L1】")
    assert (c1.cursor, c1.url, c1.quote) == (2, "https://a.test/c", "c one")
    assert browser.call("open", '{"loc": 1}').text.startswith("[3] C (https://a.test/c)\n")  # the next cursor


class _Failing:
    """A fetcher with a bug: every fetch raises a plain exception."""

    def fetch(self, url: str, view_source: bool = False):
        raise ValueError(f"no parser for {url}")


def test_an_unexpected_failure_is_an_answer_and_the_browser_goes_on():
    b = Browser(NoSearch(), fetcher=_Failing(), count_tokens=count)
    a = call(b, "open", id="https://a.test/x")
    assert (a.error, a.text, a.page) == (True, "browser.open failed: ValueError: no parser for https://a.test/x", None)
    assert b.stack == []
    assert call(b, "open", id="https://a.test/y").text.endswith("https://a.test/y")  # the same browser answers again


class _NoResults:
    name = "none"

    def search(self, query, topn, client):
        return []


def test_a_search_without_results_says_so():
    b = Browser(_NoResults(), count_tokens=count)
    a = call(b, "search", query="rare words")
    assert not a.error and a.text == "[0] rare words\n**viewing lines [0 - 2] of 2**\n\nL0: # Search Results\nL1: \nL2: No results for `rare words`."
    assert a.page.title == "rare words" and a.page.links == {}


def test_view_source_without_an_id_shows_the_source_of_the_page_at_the_cursor(web):
    b = browser(web)
    call(b, "open", id=web.url("/other"))
    call(b, "find", pattern="other")  # cursor 1: a find page, which cites /other
    v = call(b, "open", view_source=True)
    assert not v.error and "<title>Other</title>" in v.text and v.page.url == f"view-source:{web.url('/other')}"
    w = call(b, "open", view_source=True, cursor=0)
    assert "<title>Other</title>" in w.text and w.page is v.page  # the same source, from the cache


def test_a_find_page_shows_each_match_with_the_lines_after_it():
    """Each match: its link line, then the matched line and the three after it; matches apart by a blank line."""
    from mlx_oss.builtin.browser.page import Page, find_in_page

    page = Page("https://a.test/x", "T", "\n".join(["alpha one", "beta", "gamma", "delta", "alpha two", "epsilon", "zeta", "eta", "theta"]))
    assert find_in_page(page, "ALPHA").text == (
        "# 【0†match at L0】\nalpha one\nbeta\ngamma\ndelta\n\n# 【1†match at L4】\nalpha two\nepsilon\nzeta\neta")


class _Lines:
    """A fetcher of one page of the given lines."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def fetch(self, url: str, view_source: bool = False):
        from mlx_oss.builtin.browser.page import Page

        return Page(url, "T", "\n".join(self.lines))


@pytest.mark.parametrize("line, shown", [("abcde", 5), ("", 10)])
def test_without_a_tokenizer_a_window_counts_a_token_per_four_characters(line, shown):
    """The browser's own estimate (no tokenizer given): a numbered line `L3: abcde` of 10 characters is 2
    tokens, an empty one (`L3: `) 1 at least; a window of 10 tokens shows as many lines as fit."""
    b = Browser(NoSearch(), fetcher=_Lines([line] * 30), view_tokens=10)
    text = call(b, "open", id="https://a.test/p").text
    assert shown_lines(text) == list(range(shown))


def test_a_cursor_or_a_page_that_is_not_there_is_said_so():
    b = Browser(NoSearch(), fetcher=_Lines(["one"]))
    assert call(b, "find", pattern="x").text == "No page is open yet: search, or open a URL, first."
    call(b, "open", id="https://a.test/p")
    for cursor in (1, 5, -2):
        a = call(b, "find", pattern="one", cursor=cursor)
        assert (a.error, a.text) == (True, f"Cursor `{cursor}` is out of range. Available cursor indices: [0 - 0].")
    assert not call(b, "find", pattern="one", cursor=0).error


def test_opening_a_match_starts_four_lines_above_it_as_the_reference_does():
    """OpenAI's reference browser opens a find result `loc -= 4` only when its line is past 4: a match on
    lines 0-4 opens at its own line."""
    from mlx_oss.builtin.browser.page import Snippet, open_line

    assert [open_line(Snippet("u", "#0", line)) for line in (0, 2, 4, 5, 9)] == [0, 2, 4, 1, 5]
    assert open_line(Snippet("u", "t")) == 0 and open_line(None) == 0  # a search result: from the top


def test_a_location_just_past_the_last_line_is_refused():
    b = Browser(NoSearch(), fetcher=_Lines(["zero", "one", "two"]))
    call(b, "open", id="https://a.test/p")
    assert shown_lines(call(b, "open", loc=2).text) == [2]
    a = call(b, "open", loc=3)
    assert (a.error, a.text) == (True, "Invalid location parameter: `3`. Cannot exceed page maximum of 2.")


def test_lines_wrap_at_80_characters_keeping_their_spaces():
    from mlx_oss.builtin.browser.page import wrap_lines

    assert wrap_lines("a" * 79 + " b") == ["a" * 79 + " ", "b"]
    assert wrap_lines("  two  spaces " + "w" * 70 + " end") == ["  two  spaces ", "w" * 70 + " end"]


def test_a_window_of_one_line_a_first_line_larger_than_the_window_and_a_long_url():
    from mlx_oss.builtin.browser.page import Page, window

    page = Page("https://a.test/" + "p" * 1100, "T", "\n".join(["short"] * 5 + ["x" * 60]))
    one = window(page, 0, 2, 1, len, 100)
    assert one.endswith("\n\nL2: short") and "**viewing lines [2 - 2] of 5**" in one
    assert window(page, 0, 0, 0, len, 12) == window(page, 0, 0, -1, len, 12)  # 0 lines asked: as many as fit
    big = window(page, 0, 5, -1, len, 10)  # its one line is 65 "tokens": shown anyway
    assert big.endswith("\n\nL5: " + "x" * 60)
    assert big.split("\n", 1)[0] == f"[0] T (https://a.test/{'p' * (1024 - len('https://a.test/'))})"  # URL cut at 1024


def test_the_search_api_is_reached_where_pages_on_private_addresses_are_refused(web):
    """The search endpoint is the operator's (a local SearXNG, say), never a page the model chose: it is called
    without the private-address check that every page's URL gets; a result's title cannot forge a cursor mark."""
    from mlx_oss.builtin.browser import FetchLimits, Fetcher, SearchResult

    seen = []

    class Local:
        name = "local"

        def search(self, query, topn, client):
            seen.append(client.get(web.url("/page")).status_code)  # the backend's own request, to 127.0.0.1
            return [SearchResult("A † title", web.url("/page"), "snippet")]

    b = Browser(Local(), fetcher=Fetcher(FetchLimits(timeout_s=5.0)))  # private addresses refused
    s = call(b, "search", query="q")
    assert not s.error and seen == [200]
    assert "【0†A ‡ title†127.0.0.1:" in s.text
    assert call(b, "open", id=0).error  # the page itself is on a private address: refused


def test_a_restore_of_nothing_empties_the_stack_and_windows_with_gaps_keep_their_line_numbers():
    from mlx_oss.builtin.browser.page import Page, window

    a = Page("https://a.test/a", "A", "\n".join(f"a {i}" for i in range(10)))
    browser = Browser(NoSearch())
    browser.restore([window(a, 0, 0, 2, len, 100)])
    assert len(browser.stack) == 1
    browser.restore([])  # a chat whose browser results were all deleted
    assert browser.stack == []
    s1, s2 = Page("", "first query", "# Search Results\n\n* one"), Page("", "second query", "# Search Results\n\n* two")
    browser.restore([window(a, 0, 0, 2, len, 100), window(s1, 1, 0, 3, len, 100), window(a, 2, 6, 2, len, 100),
                     window(s2, 3, 0, 3, len, 100)])  # fmt: skip
    assert browser.stack[0] is browser.stack[2]  # one page shown twice: its lines together, the gap empty
    assert browser.stack[0].lines == ["a 0", "a 1", "", "", "", "", "a 6", "a 7", "", ""]
    assert [p.title for p in browser.stack[1::2]] == ["first query", "second query"]  # each search page its own


@pytest.mark.parametrize("path, expect", [("/status/400", "HTTP 400 Bad Request"), ("/status/404", "HTTP 404 Not Found"),
                                          ("/status/599", "HTTP 599")])  # fmt: skip
def test_every_status_from_400_is_an_error_named_by_its_code_and_reason(web, path, expect):
    a = call(browser(web), "open", id=web.url(path))
    assert a.error and a.text.endswith(expect) and not a.text.endswith(" ")
    assert not call(browser(web), "open", id=web.url("/status/299")).error  # below 400: a page


def test_a_page_without_a_content_type_is_read_as_html_and_its_source_as_text(web):
    b = browser(web)
    shown = call(b, "open", id=web.url("/notype"))
    assert not shown.error and "Untyped" in shown.text and "<h1>" not in shown.text
    source = call(b, "open", id=web.url("/notype"), view_source=True)
    assert not source.error and "<h1>Untyped</h1>" in source.text


def test_a_page_is_decoded_by_its_charset_and_bad_bytes_are_replaced(web):
    b = browser(web)
    assert "café crème" in call(b, "open", id=web.url("/latin1")).text
    bad = call(b, "open", id=web.url("/badbytes"))
    assert not bad.error and "ok \ufffd\ufffd end" in bad.text


def test_the_browsers_defaults(monkeypatch):
    for var in ("EXA_API_KEY", "YDC_API_KEY", "SEARXNG_URL"):
        monkeypatch.delenv(var, raising=False)
    b = Browser()
    assert (b.backend.name, b.view_tokens, b.max_results) == ("none", 1024, 10)


def test_arguments_empty_or_of_the_wrong_kind(web):
    b = browser(web)
    call(b, "open", id=web.url("/page"))
    again = b.call("open", "")  # no arguments at all: the current page again
    assert not again.error and again.text.startswith("[1] MLX Release Notes")
    wrong = call(b, "open", loc="three")
    assert wrong.error and wrong.text == "browser.open: `loc` has the wrong type (str)"
    extra = call(b, "find", pattern="x", nope=1)
    assert extra.error and extra.text == "browser.find has no argument 'nope' (it takes pattern, cursor)"
    at = call(b, "open", cursor=0, loc=4.0, num_lines=2.0)  # whole floats are read as integers
    assert not at.error and shown_lines(at.text) == [4, 5]


def test_a_redirect_to_another_scheme_is_refused_by_name_and_pages_are_asked_for_as_the_browser(web):
    from mlx_oss.builtin.browser.fetch import USER_AGENT

    b = browser(web)
    hop = call(b, "open", id=web.url("/goto?to=ftp://x.org/a"))
    assert hop.error and hop.text.endswith("only http and https URLs can be opened, not ftp:")
    call(b, "open", id=web.url("/other"))
    assert web.agents[-1] == USER_AGENT


def test_a_text_page_is_titled_by_its_file_name(web):
    b = browser(web)
    shown = call(b, "open", id=web.url("/plain.txt"))
    assert shown.text.startswith(f"[0] plain.txt ({web.url('/plain.txt')})")
    assert (b.stack[0].url, b.stack[0].title) == (web.url("/plain.txt"), "plain.txt")
