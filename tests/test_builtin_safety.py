"""Safe by default under attack (issue #25): one deadline for a whole browser fetch, DNS rebinding and
private-address near misses, secrets kept out of the python kernel, and only `True` approving code.

Nothing here leaves 127.0.0.1: name lookups of the test names are answered by a stand-in, and a
connection to any other address is refused by a stand-in `socket.create_connection` (or, for a
"public" address a test routes, sent to the local server)."""

from __future__ import annotations

import ctypes
import gc
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings

import httpcore
import pytest

from mlx_oss.builtin.browser import Browser, BrowserError, FetchLimits, Fetcher, NoSearch, SearxngSearch
from mlx_oss.builtin.browser.net import DeadlineBackend
from mlx_oss.builtin.python import DockerSession, KernelSession, PythonTool
from mlx_oss.builtin.python.kernel import Execution
from mlx_oss.events import ToolCall
from tests.web_fixture import WebServer

LIMIT = FetchLimits(timeout_s=1.0)
BOUND_S = 3.0  # a 1 s limit must end the fetch well before this; a 10x error cannot
PUBLIC_IP = "93.184.216.34"  # global addresses, never reached: the stand-in connect routes PUBLIC_IP
OTHER_PUBLIC_IP = "151.101.1.69"  # to the local server where a test says so, and refuses the rest


@pytest.fixture(scope="module")
def web():
    with WebServer() as w:
        yield w


def port(web) -> int:
    return int(web.base.rsplit(":", 1)[1])


# ---------------------------------------------------------------- 6. one deadline for the whole fetch


@pytest.mark.parametrize("path", ["/trickle-headers", "/trickle-body", "/slow-hops/4"])
def test_a_slow_server_cannot_hold_a_fetch_past_its_time_limit(web, path):
    fetcher = Fetcher(LIMIT, allow_private=True)
    start = time.monotonic()
    with pytest.raises(BrowserError, match="timed out after 1 s"):
        fetcher.fetch(web.url(path))
    assert time.monotonic() - start < BOUND_S


def test_a_slow_search_api_is_held_to_the_same_limit(web):
    b = Browser(SearxngSearch(web.url("/trickle-headers")), fetcher=Fetcher(LIMIT, allow_private=True))
    start = time.monotonic()
    a = b.call("search", json.dumps({"query": "q"}))
    assert a.error and "SearXNG search timed out" in a.text
    assert time.monotonic() - start < BOUND_S


def test_a_slow_name_lookup_is_held_to_the_same_limit(web, monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *args, **kw):
        if host == "slow-dns.test":
            time.sleep(BOUND_S + 1)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    start = time.monotonic()
    with pytest.raises(BrowserError, match="timed out"):
        Fetcher(LIMIT, allow_private=True).fetch(f"http://slow-dns.test:{port(web)}/page")
    assert time.monotonic() - start < BOUND_S


def test_a_read_waits_only_for_the_time_left():
    """Every read gets at most the time left until the deadline, whatever timeout httpx passes for it: a peer
    that accepts and never answers holds a read given 10 s for the 1 s left, not for 10 s."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects (the kernel's backlog), never sends
        backend = DeadlineBackend(time.monotonic() + LIMIT.timeout_s, check_address=False)
        stream = backend.connect_tcp("127.0.0.1", silent.getsockname()[1], timeout=10)
        start = time.monotonic()
        try:
            with pytest.raises(httpcore.ReadTimeout):
                stream.read(1024, timeout=10)
        finally:
            stream.close()
        assert time.monotonic() - start < BOUND_S


def test_a_tls_handshake_waits_only_for_its_timeout_and_the_time_left():
    """A TLS handshake gets the shorter of its own timeout and the time left, like a read: a peer that
    accepts and never answers holds a handshake given 0.5 s (of 30 s left) for 0.5 s (within 3x), and a
    handshake begun after the deadline fails at once as a timeout. (A handshake that ignored both would
    wait until the peer hangs up, BOUND_S later.)"""
    ctx = ssl.create_default_context()
    with socket.create_server(("127.0.0.1", 0)) as silent:
        for left, timeout, bound in ((30, 0.5, 3 * 0.5), (0.3, 10, 0.5)):
            backend = DeadlineBackend(time.monotonic() + left, check_address=False)
            stream = backend.connect_tcp("127.0.0.1", silent.getsockname()[1], timeout=10)
            peer, _ = silent.accept()
            hang_up = threading.Timer(BOUND_S, peer.close)
            hang_up.start()
            try:
                while left < 1 and time.monotonic() <= backend.deadline:  # the short deadline: let it pass
                    time.sleep(0.05)
                start = time.monotonic()
                with pytest.raises(httpcore.ConnectTimeout):
                    stream.start_tls(ctx, "localhost", timeout=timeout)
                assert time.monotonic() - start < bound
            finally:
                hang_up.cancel()
                stream.close()
                peer.close()


def test_waiting_between_retries_never_outlasts_the_deadline():
    """The backend's sleep (httpcore waits with it between connection retries) is cut to the time left:
    nothing at all once the deadline has passed, and a short wait stays as asked."""
    backend = DeadlineBackend(time.monotonic() + 0.5, check_address=False)
    start = time.monotonic()
    backend.sleep(0.05)
    assert 0.05 <= time.monotonic() - start < 0.5
    backend.sleep(30)
    assert time.monotonic() - start < 3 * 0.5  # cut to the deadline, not 30 s
    late = time.monotonic()
    backend.sleep(30)
    assert time.monotonic() - late < 0.3  # past the deadline: no wait (not a second more)


def test_the_browser_backend_opens_no_unix_sockets():
    """A unix-socket connection (httpx's `uds`) is refused, with a message that says so."""
    backend = DeadlineBackend(time.monotonic() + 1, check_address=False)
    with pytest.raises(httpcore.ConnectError) as e:
        backend.connect_unix_socket("/var/run/docker.sock")
    assert str(e.value) == "the browser does not open unix sockets"


def test_a_timed_out_fetch_leaves_no_socket_or_thread_behind(web):
    gc.collect()  # what earlier tests in this process left unclosed is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for url in (web.url("/trickle-headers"), web.url("/trickle-body"), f"http://localhost:{port(web)}/trickle-body"):
            with pytest.raises(BrowserError, match="timed out"):
                Fetcher(LIMIT, allow_private=True).fetch(url)
        gc.collect()
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    lookups = [t for t in threading.enumerate() if t.name.startswith("mlx-oss-browser-dns")]
    for t in lookups:
        t.join(timeout=BOUND_S)  # a lookup that answered ends at once
    assert not [t for t in lookups if t.is_alive()]


# ---------------------------------------------------------------- 7. the address checked is the one connected


class FakeNet:
    """Stand-ins for name lookups and connections. `answers[name]` lists what each lookup of the name
    answers (the last one repeats); `routes` are the public addresses the local server plays."""

    def __init__(self, monkeypatch) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.routes: set[str] = set()
        self.lookups: list[str] = []
        self.connects: list[str] = []
        self._getaddrinfo, self._connect = socket.getaddrinfo, socket.create_connection
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", self.create_connection)

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self._getaddrinfo(host, port, family, type, proto, flags)
        self.lookups.append(name)
        seen = sum(1 for n in self.lookups if n == name)
        ips = self.answers[name][min(seen, len(self.answers[name])) - 1]
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port, 0, 0) if ":" in ip else (ip, port)) for ip in ips]  # fmt: skip

    def create_connection(self, address, timeout=None, source_address=None, **kw):
        host, port = address
        for family, _, _, _, sockaddr in self.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            ip = sockaddr[0]
            self.connects.append(ip)
            if ip in self.routes:  # a "public site" played by the local server
                return self._connect(("127.0.0.1", port), timeout, source_address)
            if ip not in ("127.0.0.1", "::1"):  # nothing leaves this machine
                raise ConnectionRefusedError(f"test network: {ip} is not reachable")
            return self._connect((ip, port), timeout, source_address)
        raise OSError("no address")


@pytest.fixture
def net(monkeypatch):
    return FakeNet(monkeypatch)


def not_public(ip: str) -> bool:
    return not ipaddress.ip_address(ip.split("%")[0]).is_global


def test_a_name_that_rebinds_to_loopback_never_reaches_it(web, net):
    net.answers["rebind.test"] = [[PUBLIC_IP], ["127.0.0.1"]]  # public when checked, loopback after
    before = len(web.hits)
    with pytest.raises(BrowserError):
        Fetcher(LIMIT).fetch(f"http://rebind.test:{port(web)}/page")
    assert len(web.hits) == before  # the loopback page was not requested
    assert not [ip for ip in net.connects if not_public(ip)]  # nor was loopback connected to
    assert net.lookups == ["rebind.test"]  # one lookup: the address checked is the address used


def test_a_name_that_rebinds_after_a_redirect_never_reaches_it(web, net):
    net.routes.add(PUBLIC_IP)
    net.answers["site.test"] = [[PUBLIC_IP]]
    net.answers["rebind.test"] = [[OTHER_PUBLIC_IP], ["127.0.0.1"]]
    before = len(web.hits)
    with pytest.raises(BrowserError):
        Fetcher(LIMIT).fetch(f"http://site.test:{port(web)}/goto?to=http://rebind.test:{port(web)}/page")
    assert web.hits[before:] == [f"/goto?to=http://rebind.test:{port(web)}/page"]  # only the public hop
    assert not [ip for ip in net.connects if not_public(ip)]


def test_a_name_answering_loopback_first_is_refused(web, net):
    net.answers["flip.test"] = [["127.0.0.1"], [PUBLIC_IP]]
    before = len(web.hits)
    with pytest.raises(BrowserError, match="local or private-network address"):
        Fetcher(LIMIT).fetch(f"http://flip.test:{port(web)}/page")
    assert len(web.hits) == before and net.connects == []


NEAR_MISSES = [
    "http://127.0.0.1:{port}/page",
    "http://127.1:{port}/page",
    "http://2130706433:{port}/page",
    "http://0x7f000001:{port}/page",
    "http://localhost:{port}/page",
    "http://[::1]:{port}/page",
    "http://[::ffff:127.0.0.1]:{port}/page",
    "http://[::ffff:7f00:1]:{port}/page",
    "http://[2002:7f00:1::]:{port}/page",  # 6to4 wrapping 127.0.0.1
    "http://[64:ff9b::a00:1]:{port}/page",  # NAT64 wrapping 10.0.0.1
    "http://0.0.0.0:{port}/page",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fc00::1]/",
    "http://[fe80::1]/",
    "http://intranet.test:{port}/page",  # a name for a private address
    "http://mixed.test:{port}/page",  # a name with one public and one loopback address
    "http://zoned.test:{port}/page",  # a link-local IPv6 address with its zone, as getaddrinfo gives it
]


@pytest.fixture
def near_net(net):
    net.answers["intranet.test"] = [["10.1.2.3"]]
    net.answers["mixed.test"] = [[PUBLIC_IP, "127.0.0.1"]]
    net.answers["zoned.test"] = [["fe80::1%2"]]
    return net


@pytest.mark.parametrize("url", NEAR_MISSES)
def test_private_address_near_misses_are_refused(web, near_net, url):
    before = len(web.hits)
    with pytest.raises(BrowserError, match="local or private-network address"):
        Fetcher(LIMIT).fetch(url.format(port=port(web)))
    assert len(web.hits) == before and not [ip for ip in near_net.connects if not_public(ip)]


@pytest.mark.parametrize("url", NEAR_MISSES)
def test_private_address_near_misses_are_refused_after_a_redirect(web, near_net, url):
    near_net.routes.add(PUBLIC_IP)
    near_net.answers["site.test"] = [[PUBLIC_IP]]
    start = f"http://site.test:{port(web)}/goto?to={url.format(port=port(web))}"
    before = len(web.hits)
    with pytest.raises(BrowserError, match="local or private-network address"):
        Fetcher(LIMIT).fetch(start)
    assert len(web.hits) == before + 1  # the public hop only
    assert not [ip for ip in near_net.connects if not_public(ip)]


def test_a_public_site_on_a_checked_address_still_opens(web, net):
    net.routes.add(PUBLIC_IP)
    net.answers["site.test"] = [[PUBLIC_IP]]
    page = Fetcher(LIMIT).fetch(f"http://site.test:{port(web)}/redirect")
    assert page.title == "MLX Release Notes" and page.url == f"http://site.test:{port(web)}/page"


@pytest.mark.parametrize("ip", ["2606:4700:4700::1111", "64:ff9b::5db8:d822", "::ffff:93.184.216.34"],
                         ids=["ipv6", "nat64-of-public-ipv4", "mapped-public-ipv4"])  # fmt: skip
def test_a_public_site_on_an_ipv6_address_still_opens(web, net, ip):
    """Refusing IPv6 forms of private addresses refuses no public site: a global IPv6 address, and the
    NAT64 and IPv4-mapped forms of a public IPv4 address (93.184.216.34), still open."""
    net.routes.add(ip)
    net.answers["v6.test"] = [[ip]]
    page = Fetcher(LIMIT).fetch(f"http://v6.test:{port(web)}/page")
    assert page.title == "MLX Release Notes" and net.connects == [ip]


@pytest.fixture(scope="module")
def tls_web(tmp_path_factory):
    """An https server on 127.0.0.1 whose certificate names only `localhost` (and is its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with WebServer(tls=ctx) as w:
        yield w, cert


def test_tls_still_checks_the_certificate_against_the_name(tls_web, monkeypatch):
    web, cert = tls_web
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    fetcher = Fetcher(LIMIT, allow_private=True)
    page = fetcher.fetch(f"https://localhost:{port(web)}/page")  # connected to the checked 127.0.0.1
    assert page.title == "MLX Release Notes" and page.url == f"https://localhost:{port(web)}/page"
    with pytest.raises(BrowserError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        fetcher.fetch(f"https://127.0.0.1:{port(web)}/page")  # the certificate does not name the address


# ---------------------------------------------------------------- 8. no secrets in the python kernel

SECRETS = {
    "DATABASE_URL": "postgres://app:pw-database-1@db.internal:5432/app",
    "REDIS_URL": "redis://:pw-redis-2@cache.internal:6379/0",
    "MONGODB_URI": "mongodb+srv://app:pw-mongo-3@cluster0.example.net/",
    "HTTPS_PROXY": "http://me:pw-proxy-4@proxy.internal:3128",
    "https_proxy": "http://me:pw-proxy-5@proxy.internal:3128",
    "ALL_PROXY": "socks5://me:pw-proxy-6@proxy.internal:1080",
    "SENTRY_DSN": "https://pw-sentry-7@o1.ingest.sentry.io/1",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/pw-slack-8",
    "GH_PAT": "ghp_pw-github-9",
    "STRIPE_SK": "sk_live_pw-stripe-10",
    "OPENAI_API_KEY": "sk-pw-openai-11",
    "JUPYTER_TOKEN": "pw-jupyter-12",
    "PGPASSWORD": "pw-postgres-13",
    "DOCKER_AUTH_CONFIG": '{"auths": {"x": {"auth": "pw-docker-14"}}}',
}
KEPT = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "TMPDIR": "/tmp"}  # TERM passes too (ipykernel sets its own)


def kernel_environ(session: KernelSession) -> dict[str, str]:
    ex = session.execute("import os, json\nprint(json.dumps(dict(os.environ)))", 60)
    assert ex.status == "ok", ex.text
    return json.loads("".join(ex.text))


def test_the_kernel_starts_from_an_allow_list_environment(tmp_path):
    pytest.importorskip("ipykernel")
    host = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "xterm", **KEPT, **SECRETS}
    session = KernelSession(tmp_path, env=host)
    try:
        inside = kernel_environ(session)
    finally:
        session.close()
    assert not set(SECRETS) & set(inside)
    leaked = [v for v in SECRETS.values() for value in inside.values() if v in value]
    assert leaked == []
    assert inside["PATH"] == os.environ["PATH"] and inside["HOME"] == str(tmp_path)
    assert {k: inside.get(k) for k in KEPT} == KEPT


def test_the_docker_backend_passes_no_host_environment(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    cmd = DockerSession(tmp_path).command("n")
    assert "--env-file" not in cmd and not any(a.startswith(("--env", "-e=")) for a in cmd)
    given = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-e"]
    assert all("=" in e for e in given)  # `-e NAME` alone would copy the host's value
    assert {e.split("=", 1)[0] for e in given} <= {"PYTHONUNBUFFERED", "MPLBACKEND", "HOME"}
    assert not [v for v in SECRETS.values() if any(v in a for a in cmd)]


PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


def prctl(option: int, arg: int = 0) -> int:
    return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


@pytest.fixture
def dumpable():
    """Makes this process dumpable again for the test, and leaves it as it found it."""
    was = prctl(PR_GET_DUMPABLE)
    prctl(PR_SET_DUMPABLE, 1)
    yield
    prctl(PR_SET_DUMPABLE, was)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_DUMPABLE) is Linux only")
def test_starting_a_kernel_hides_the_apps_environment_from_it(tmp_path, dumpable):
    pytest.importorskip("ipykernel")
    session = KernelSession(tmp_path)
    assert prctl(PR_GET_DUMPABLE) == 1  # nothing changes until a kernel actually starts
    try:
        ex = session.execute(f"open('/proc/{os.getpid()}/environ', 'rb').read(); print('read')", 60)
    finally:
        session.close()
    assert prctl(PR_GET_DUMPABLE) == 0
    if os.geteuid() != 0:  # root reads any process's environment whatever the flag
        assert ex.status == "error" and "PermissionError" in "".join(ex.text)


# ---------------------------------------------------------------- 10. only True approves


class RecordingSession:
    """Stands in for the kernel: records what it was asked to run."""

    stateful = True

    def __init__(self) -> None:
        self.ran: list[str] = []

    def execute(self, code, timeout_s, should_stop=lambda: False) -> Execution:
        self.ran.append(code)
        return Execution(text=["ran\n"])

    def close(self) -> None:
        pass


def tool_answering(answer, tmp_path) -> tuple[PythonTool, RecordingSession]:
    t = PythonTool(approve=lambda call: answer, workdir=tmp_path)
    t.session = RecordingSession()
    return t, t.session


@pytest.mark.parametrize("answer", ["no", "yes", "True", 1, 1.0, [], [True], None, object(), False],
                         ids=["no", "yes", "True-str", "1", "1.0", "[]", "[True]", "None", "object", "False"])  # fmt: skip
def test_only_true_approves(tmp_path, answer):
    t, session = tool_answering(answer, tmp_path)
    a = t.call(ToolCall("python", "print(1)", "print(1)", tool="python", recipient="python"))
    assert a.refused and a.error and session.ran == []


def test_true_approves(tmp_path):
    t, session = tool_answering(True, tmp_path)
    a = t.call(ToolCall("python", "print(1)", "print(1)", tool="python", recipient="python"))
    assert not a.refused and a.text == "ran" and session.ran == ["print(1)"]


@pytest.mark.parametrize("host, why", [
    ("a" * 64 + ".example", "encoding with 'idna' codec failed (UnicodeError: "),  # a label past 63 (the rest: Python's words)
    ("nowhere.test", "[Errno -2] Name or service not known"),  # the resolver's answer (faked)
])  # fmt: skip
def test_a_name_that_cannot_be_looked_up_is_said_so(monkeypatch, host, why):
    real = socket.getaddrinfo

    def resolver(name, *a, **kw):
        if name == "nowhere.test":
            raise socket.gaierror(-2, "Name or service not known")
        return real(name, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with pytest.raises(BrowserError) as e:
        Fetcher(FetchLimits(timeout_s=5)).fetch(f"http://{host}/")
    said = f"cannot reach the site (ConnectError: cannot look up {host} ({why}"
    assert str(e.value).startswith(said) and str(e.value).endswith("))") and "\n" not in str(e.value)
    assert why.endswith(": ") or str(e.value) == said + "))"


def test_time_left_is_the_timeout_cut_to_the_deadline_and_an_error_after_it():
    import httpcore

    from mlx_oss.builtin.browser.net import DeadlineBackend

    b = DeadlineBackend(time.monotonic() + 60, check_address=False)
    assert b.time_left(2.0, httpcore.ReadTimeout) == 2.0  # the operation's own timeout, well inside the deadline
    assert 59 < b.time_left(None, httpcore.ReadTimeout) <= 60  # no timeout of its own: what is left
    assert b.time_left(300.0, httpcore.ReadTimeout) <= 60
    past = DeadlineBackend(time.monotonic() - 1, check_address=False)
    with pytest.raises(httpcore.WriteTimeout, match="^the time limit was reached$"):
        past.time_left(5.0, httpcore.WriteTimeout)


def test_a_read_waits_no_longer_than_its_own_timeout_inside_a_long_deadline():
    """A connection's read timeout (httpx's per-operation timeout) holds even when the deadline is far away."""
    import httpcore

    from mlx_oss.builtin.browser.net import DeadlineBackend

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        b = DeadlineBackend(time.monotonic() + 20, check_address=False)
        stream = b.connect_tcp("127.0.0.1", server.getsockname()[1], timeout=5.0)
        conn, _ = server.accept()
        try:
            t0 = time.monotonic()
            with pytest.raises(httpcore.ReadTimeout):
                stream.read(10, timeout=0.3)  # the peer never writes
            assert time.monotonic() - t0 < 3  # its own 0.3 s, not the 20 s left
            stream.write(b"ping", timeout=1.0)
            assert conn.recv(4) == b"ping"
        finally:
            conn.close()
            stream.close()
    finally:
        server.close()


def test_a_name_resolves_to_its_addresses_once_each_and_an_ip_literal_as_itself():
    from mlx_oss.builtin.browser.net import DeadlineBackend

    b = DeadlineBackend(time.monotonic() + 60, check_address=False)
    assert b._resolve("127.0.0.1", 80, 5.0) == ["127.0.0.1"] and b._resolve("::1", 80, 5.0) == ["::1"]
    got = b._resolve("localhost", 8080, 5.0)
    assert got and len(got) == len(set(got)) and set(got) <= {"127.0.0.1", "::1"}
