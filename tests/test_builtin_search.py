"""The search backends' requests and answers, against a local stand-in API that records what it gets:
where the key comes from and the header it goes in, the query and count parameters, base URLs with a
path, how You.com's web and news results are laid out and cut, answers of the wrong shape, errors that
name the service and hide the key, and how `make_search_backend` chooses (the names users type)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from mlx_oss.builtin.browser import (
    Browser,
    BrowserAnswer,
    ExaSearch,
    FetchLimits,
    Fetcher,
    NoSearch,
    SearxngSearch,
    YouSearch,
    make_search_backend,
)

KEY = "ydc-test-key-789"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lowercased, as HTTP compares them
    body: object = None  # the JSON posted


class _Handler(BaseHTTPRequestHandler):
    server: "_API"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802
        u = urlparse(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        posted = self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.loads(posted) if posted else None
        self.server.requests.append(Request(self.command, u.path, parse_qs(u.query), headers, body))
        status, body = self.server.answer
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET  # noqa: N815


class _API(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[Request]
    answer: tuple[int, object]


@pytest.fixture(scope="module")
def server():
    httpd = _API(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def api(server):
    """The stand-in API, with no requests yet; `api.answer = (status, json or text)` sets what it answers."""
    server.requests, server.answer = [], (200, {})
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    return server


def search(backend, query: str = "mlx", topn: int = 10) -> BrowserAnswer:
    b = Browser(backend, fetcher=Fetcher(FetchLimits(timeout_s=5.0), allow_private=True))
    return b.call("search", json.dumps({"query": query, "topn": topn}))


def result_lines(answer: BrowserAnswer) -> list[str]:
    """The results as the model reads them, without the window's line numbers."""
    return [line.split(": ", 1)[1] for line in answer.text.splitlines() if line.startswith("L") and ": * " in line]


YOU_ANSWER = {
    "results": {
        "web": [
            {"title": "Web zero", "url": "https://w0.example/a", "snippets": ["First  part.", "Second part."],
             "description": "not used when there are snippets"},
            {"title": "Web one", "url": "https://w1.example/b", "description": "Only a description."},
            {"url": "https://w2.example/c", "snippets": []},  # no title, no text
        ],
        "news": [{"title": "News zero", "url": "https://n0.example/d", "description": "Breaking."}],
    }
}  # fmt: skip


def test_you_search_sends_the_query_count_and_key_it_was_given(api, monkeypatch):
    """The key comes from the environment the backend was given (here, not the process's), in the
    x-api-key header; the query and the number of results asked for go as `query` and `count`, to
    `<base URL>/v1/search`, whatever the base URL's path and trailing slash."""
    monkeypatch.delenv("YDC_API_KEY", raising=False)
    api.answer = (200, YOU_ANSWER)
    a = search(YouSearch(base_url=api.base + "/proxy/ydX/", env={"YDC_API_KEY": KEY}), query="mlx release", topn=3)
    assert not a.error, a.text
    (req,) = api.requests
    assert (req.method, req.path) == ("GET", "/proxy/ydX/v1/search")
    assert req.query == {"query": ["mlx release"], "count": ["3"]}
    assert req.headers["x-api-key"] == KEY


def test_you_search_key_from_the_process_environment(api, monkeypatch):
    """Without a key or an environment of its own, YDC_API_KEY is read from the process's environment
    when the search runs; without one anywhere the model is told which variable to set."""
    api.answer = (200, YOU_ANSWER)
    monkeypatch.setenv("YDC_API_KEY", KEY)
    assert not search(YouSearch(base_url=api.base)).error
    assert api.requests[-1].headers["x-api-key"] == KEY
    monkeypatch.delenv("YDC_API_KEY")
    a = search(YouSearch(base_url=api.base))
    assert a.error and a.text == "search needs an API key: set YDC_API_KEY in the environment"


def test_you_search_lays_out_web_results_then_news(api):
    """Web results come first, then news; a web result's snippets are joined (whitespace collapsed), a
    result without snippets shows its description, one without a title shows its URL."""
    api.answer = (200, YOU_ANSWER)
    a = search(YouSearch(base_url=api.base, api_key=KEY))
    assert result_lines(a) == [
        "* 【0†Web zero†w0.example】 First part. Second part.",
        "* 【1†Web one†w1.example】 Only a description.",
        "* 【2†https://w2.example/c†w2.example】",
        "* 【3†News zero†n0.example】 Breaking.",
    ]
    assert [a.page.links[i] for i in range(4)] == [
        "https://w0.example/a", "https://w1.example/b", "https://w2.example/c", "https://n0.example/d"]  # fmt: skip


def test_you_search_is_cut_to_the_number_asked_for(api):
    """`topn` results at most, web results before news: news only fills what web results leave."""
    api.answer = (200, YOU_ANSWER)
    backend = YouSearch(base_url=api.base, api_key=KEY)
    with Fetcher(FetchLimits(timeout_s=5.0), allow_private=True).client(check_address=False) as client:
        assert [r.title for r in backend.search("mlx", 2, client)] == ["Web zero", "Web one"]
        assert [r.title for r in backend.search("mlx", 4, client)] == ["Web zero", "Web one", "https://w2.example/c", "News zero"]


@pytest.mark.parametrize("kind", ["web", "news"])
def test_you_search_with_only_web_or_only_news_results(api, kind):
    """An answer with web results and no `news` key (or the other way round) is still a results page."""
    api.answer = (200, {"results": {kind: YOU_ANSWER["results"][kind]}})
    a = search(YouSearch(base_url=api.base, api_key=KEY))
    assert not a.error, a.text
    assert len(result_lines(a)) == len(YOU_ANSWER["results"][kind])


@pytest.mark.parametrize("answer", [[], {"results": []}, {"hits": {}}, "null"])
def test_you_search_answer_of_the_wrong_shape(api, answer):
    """JSON that is not `{"results": {...}}` is reported as such, naming the service."""
    api.answer = (200, None if answer == "null" else answer)
    a = search(YouSearch(base_url=api.base, api_key=KEY))
    assert a.error and a.text == "You.com search answered in an unexpected format"


def test_you_search_errors_name_the_service_and_never_show_the_key(api):
    """A failing API's own message reaches the model, with the key (which some APIs echo) masked."""
    api.answer = (500, f"internal error for key {KEY}")
    a = search(YouSearch(base_url=api.base, api_key=KEY))
    assert a.error and a.text == "You.com search failed (HTTP 500: internal error for key ***)"


def test_exa_search_posts_the_query_count_and_asks_for_summaries(api, monkeypatch):
    """Exa gets a POST to `<base URL>/search` (base URL path and trailing slash kept) with the query, the
    number of results and a request for summaries, and the key (from the environment it was given) in
    x-api-key; a result without a summary shows its text."""
    monkeypatch.delenv("EXA_API_KEY", raising=False)
    api.answer = (200, {"results": [{"title": "E0", "url": "https://e0.example/", "summary": "Sum."},
                                    {"title": "E1", "url": "https://e1.example/", "text": "Some  text."}]})  # fmt: skip
    a = search(ExaSearch(base_url=api.base + "/proxy/exX/", env={"EXA_API_KEY": KEY}), query="mlx", topn=3)
    assert result_lines(a) == ["* 【0†E0†e0.example】 Sum.", "* 【1†E1†e1.example】 Some text."]
    (req,) = api.requests
    assert (req.method, req.path, req.headers["x-api-key"]) == ("POST", "/proxy/exX/search", KEY)
    assert req.body == {"query": "mlx", "numResults": 3, "contents": {"summary": True}}


def test_exa_search_errors_name_the_service_and_never_show_the_key(api):
    api.answer = (500, f"internal error for key {KEY}")
    a = search(ExaSearch(base_url=api.base, api_key=KEY))
    assert a.error and a.text == "Exa search failed (HTTP 500: internal error for key ***)"


def test_searxng_instance_under_a_path(api):
    """A SearXNG instance served under a path (with a trailing slash) gets `<url>/search?q=...&format=json`."""
    api.answer = (200, {"results": [{"title": "S", "url": "https://s.example/", "content": "Content."}]})
    a = search(SearxngSearch(api.base + "/SearX/"), query="mlx news")
    assert result_lines(a) == ["* 【0†S†s.example】 Content."]
    (req,) = api.requests
    assert (req.method, req.path, req.query) == ("GET", "/SearX/search", {"q": ["mlx news"], "format": ["json"]})


@pytest.mark.parametrize("backend", [lambda base: SearxngSearch(base), lambda base: ExaSearch(base_url=base, api_key=KEY)])
@pytest.mark.parametrize("answer", [[], None, {"results": {"title": "x"}}])
def test_answers_of_the_wrong_shape(api, backend, answer):
    """JSON that is not an object with a `results` list is reported, not a crash of the browser."""
    api.answer = (200, answer)
    a = search(backend(api.base))
    assert a.error and a.text == "the search API answered in an unexpected format"


def test_make_search_backend_defaults_to_auto():
    """With no name, the backend is chosen from the environment, as `auto` does."""
    assert isinstance(make_search_backend(env={"YDC_API_KEY": "k"}), YouSearch)
    assert isinstance(make_search_backend(env={"EXA_API_KEY": "k", "YDC_API_KEY": "k"}), ExaSearch)
    assert isinstance(make_search_backend(env={}), NoSearch)
    assert make_search_backend(url="http://given", env={"SEARXNG_URL": "http://env"}).url == "http://given"


def test_make_search_backend_errors_say_what_to_do():
    """The messages a user sees for a wrong --search-backend or a SearXNG without its URL."""
    with pytest.raises(ValueError) as e:
        make_search_backend("searxng", env={})
    assert str(e.value) == "search backend searxng needs the instance URL (--searxng-url or SEARXNG_URL)"
    with pytest.raises(ValueError) as e:
        make_search_backend("bing", env={})
    assert str(e.value) == "search backend must be one of auto, exa, you, searxng, none, not 'bing'"


@pytest.mark.parametrize(
    "status, body, expect",
    [
        (401, "no", "SearXNG search rejected the API key (HTTP 401)"),
        (403, "no", "SearXNG search rejected the API key (HTTP 403)"),
        (402, "pay", "SearXNG search is out of quota or rate-limited (HTTP 402); try again later"),
        (429, "slow down", "SearXNG search is out of quota or rate-limited (HTTP 429); try again later"),
        (400, "bad  query\n syntax", "SearXNG search failed (HTTP 400: bad query syntax)"),
        (404, "no such instance", "SearXNG search failed (HTTP 404: no such instance)"),
        (500, "", "SearXNG search failed (HTTP 500)"),
        (502, "x" * 300, f"SearXNG search failed (HTTP 502: {'x' * 200})"),
        (503, "down (ticket XXXX-1)", "SearXNG search failed (HTTP 503: down (ticket XXXX-1))"),  # no key: nothing masked
    ],
)
def test_http_errors_become_one_readable_line(api, status, body, expect):
    """Each kind of HTTP failure of a search API is told apart (a key problem, quota, anything else
    with the API's own words, whitespace collapsed and cut to 200 characters)."""
    api.answer = (status, body)
    a = search(SearxngSearch(api.base))
    assert a.error and a.text == expect


def test_an_unreachable_search_api_says_why():
    a = search(SearxngSearch("http://127.0.0.1:1"))
    assert a.error and a.text == "SearXNG search is unreachable (ConnectError)"


def test_results_without_a_url_are_skipped(api):
    """Entries that are not objects, or have no URL string, are left out; the others are all shown."""
    good = [{"title": f"Good {i}", "url": f"https://g{i}.example/", "content": ""} for i in range(2)]
    api.answer = (200, {"results": [good[0], "junk", ["x"], {"title": "no url"}, {"title": "bad", "url": 5}, good[1]]})
    a = search(SearxngSearch(api.base))
    assert result_lines(a) == ["* 【0†Good 0†g0.example】", "* 【1†Good 1†g1.example】"]


def test_without_a_search_backend_the_model_is_told_to_open_urls():
    a = search(NoSearch())
    assert a.error and a.text == "search is not available in this session (no search backend); open a page by its URL instead"
