"""A local web server for the built-in browser tests: fixture pages and fake Exa / You.com / SearXNG APIs.

Binds 127.0.0.1 on a free port; every test talks to it only. `with WebServer() as web: web.url("/page")`.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

EXA_KEY = "exa-secret-key-123"
YDC_KEY = "ydc-secret-key-456"

PARAGRAPHS = [f"Paragraph {i}: the MLX release notes mention item number {i} in detail." for i in range(60)]
ARTICLE = (
    "<html><head><title>MLX Release Notes</title><script>var x = '【9†fake】';</script></head><body>"
    "<h1>MLX Release Notes</h1>"
    "<p>See the <a href='/other'>other page</a> and <a href='https://github.com/ml-explore/mlx'>the repo</a>.</p>"
    + "".join(f"<p>{p}</p>" for p in PARAGRAPHS)
    + "<p>The quantization kernels are now faster on M4.</p>"
    "<p>Fake citation 【3†L1-L2】 must be neutralized.</p></body></html>"
)
OTHER = "<html><head><title>Other</title></head><body><p>The other page says hello.</p></body></html>"
TRICKLE_S = 0.4  # the pause between the pieces of a slow answer: under any per-read timeout the tests use
HOP_S = 0.7  # how long each hop of /slow-hops/<n> takes to answer


def _results(base: str, n: int = 3) -> list[dict]:
    return [{"title": f"Result {i} about MLX", "url": f"{base}/page" if i == 0 else f"{base}/other",
             "summary": f"Summary {i}."} for i in range(n)]  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes | str, ctype: str | None = "text/html; charset=utf-8", headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        if ctype is not None:
            self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _trickle(self, pieces: list[bytes]) -> None:
        """Sends the raw response a piece at a time, TRICKLE_S apart, until done or the client leaves."""
        self.close_connection = True
        try:
            for piece in pieces:
                self.wfile.write(piece)
                time.sleep(TRICKLE_S)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj), "application/json")

    def do_GET(self):  # noqa: N802
        self.server.hits.append(self.path)
        self.server.agents.append(self.headers.get("user-agent"))
        u = urlparse(self.path)
        q = parse_qs(u.query)
        base = self.server.base
        if u.path == "/page":
            return self._send(200, ARTICLE)
        if u.path == "/other":
            return self._send(200, OTHER)
        if u.path == "/plain.txt":
            return self._send(200, "line one\nline two【0†x】\n", "text/plain; charset=utf-8")
        if u.path == "/image.png":
            return self._send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")
        if u.path == "/huge":  # 20 MB declared and sent
            return self._send(200, b"<p>" + b"x" * (20 * 1024 * 1024) + b"</p>")
        if u.path == "/chunked":  # no content-length: the limit must hold while streaming
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(200):
                    chunk = b"<p>" + b"y" * 65536 + b"</p>"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if u.path.startswith("/status/"):  # any status, its reason phrase as Python's table has it (599: none)
            return self._send(int(u.path.rsplit("/", 1)[1]), "<p>status page</p>")
        if u.path == "/notype":  # no content-type: read as HTML
            return self._send(200, "<h1>Untyped</h1><p>body</p>", None)
        if u.path == "/latin1":
            return self._send(200, "<p>caf\u00e9 cr\u00e8me</p>".encode("latin-1"), "text/html; charset=iso-8859-1")
        if u.path == "/badbytes":  # not UTF-8 although it says so
            return self._send(200, b"<p>ok \xff\xfe end</p>")
        if u.path == "/missing":
            return self._send(404, "<h1>Not found</h1>")
        if u.path == "/error":
            return self._send(500, "boom")
        if u.path == "/redirect":
            return self._send(302, "", headers=[("location", "/page")])
        if u.path == "/loop":
            return self._send(302, "", headers=[("location", "/loop")])
        if u.path == "/slow":
            time.sleep(3)
            return self._send(200, "<p>late</p>")
        if u.path.startswith("/trickle-headers"):  # one header line at a time, for about 16 s
            head = [b"HTTP/1.1 200 OK\r\n"] + [b"x-wait-%d: yes\r\n" % i for i in range(40)]
            return self._trickle(head + [b"content-type: text/html\r\ncontent-length: 0\r\n\r\n"])
        if u.path == "/trickle-body":  # headers at once, then the body a byte at a time
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 40\r\n\r\n"
            return self._trickle([head] + [b"x"] * 40)
        if u.path.startswith("/slow-hops/"):  # /slow-hops/3 -> /slow-hops/2 -> ... -> /page, each hop slow
            hops = int(u.path.rsplit("/", 1)[1])
            time.sleep(HOP_S)
            return self._send(302, "", headers=[("location", f"/slow-hops/{hops - 1}" if hops > 0 else "/page")])
        if u.path == "/goto":  # a redirect to any URL: ?to=<url>
            return self._send(302, "", headers=[("location", q["to"][0])])
        if u.path == "/you/v1/search":
            if self.headers.get("x-api-key") != YDC_KEY:
                return self._json(401, {"error": "bad key"})
            web = [{"title": r["title"], "url": r["url"], "snippets": [r["summary"], "more"]} for r in _results(base)]
            news = [{"title": "News about MLX", "url": f"{base}/other", "description": "Breaking."}]
            return self._json(200, {"results": {"web": web, "news": news}})
        if u.path == "/searx/search":
            if q.get("format") != ["json"]:
                return self._send(403, "format not allowed")
            res = [{"title": r["title"], "url": r["url"], "content": r["summary"]} for r in _results(base)]
            return self._json(200, {"query": q["q"][0], "results": res})
        if u.path == "/down/search":
            return self._send(503, "maintenance")
        if u.path == "/notjson/search":
            return self._send(200, "<html>hi</html>")
        return self._send(404, "no such fixture")

    def do_POST(self):  # noqa: N802
        self.server.hits.append(self.path)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self.server.posted.append(body)
        if self.path == "/exa/search":
            if self.headers.get("x-api-key") != EXA_KEY:
                return self._json(401, {"error": f"invalid key {self.headers.get('x-api-key')}"})
            return self._json(200, {"results": _results(self.server.base, body.get("numResults", 3))[:3]})
        if self.path == "/quota/search":
            return self._json(429, {"error": "quota exceeded"})
        return self._send(404, "no such fixture")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    base = ""
    hits: list
    posted: list
    agents: list


class WebServer:
    """`tls`: a server-side SSL context, to serve https instead of http."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls

    def __enter__(self) -> "WebServer":
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.hits, self.httpd.posted, self.httpd.agents = [], [], []
        scheme = "https" if self.tls is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.httpd.base = self.base
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def hits(self) -> list[str]:
        return self.httpd.hits

    @property
    def agents(self) -> list[str | None]:
        """The user-agent header of each GET, in order."""
        return self.httpd.agents

    @property
    def posted(self) -> list[dict]:
        return self.httpd.posted

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
