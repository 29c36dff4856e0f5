"""The browser's connections (an httpcore network backend): one deadline for everything a client
does, and connections only to addresses that were checked.

httpx's timeouts bound each read, so a server sending a byte at a time can hold a fetch for ever;
here every connect, TLS handshake, read and write gets at most the time left until the deadline, so
the whole fetch (name lookups, every redirect, headers and body) ends by it. A name is looked up
once, every address it answers is checked, and the connection goes to one of those addresses (the
Host header, TLS SNI and the certificate check still use the name): a name that answers a public
address and then a private one (DNS rebinding) cannot reach the private one. Connections are direct:
an HTTP(S)_PROXY from the environment is not used, since the proxy would pick the address.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Iterable

import httpcore
import httpx

__all__ = ["AddressRefused", "DeadlineBackend", "is_public", "transport_through"]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressRefused(Exception):
    """The host is, or resolves to, a local or private-network address."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), which is where it leads."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None


def is_public(address: str) -> bool:
    """True for a globally routable address: not loopback, private, link-local, shared, reserved,
    unspecified (0.0.0.0 reaches this machine), nor an IPv6 form of such an IPv4 address."""
    ip = ipaddress.ip_address(address)  # an IPv6 zone ("fe80::1%eth0", as getaddrinfo gives one) parses too
    if isinstance(ip, ipaddress.IPv6Address) and (v4 := _embedded_ipv4(ip)) is not None:
        return v4.is_global
    return ip.is_global


class DeadlineBackend(httpcore.NetworkBackend):
    """Connections that end by `deadline` (a time.monotonic() value); with `check_address`, only to
    public addresses. One per client: the deadline covers all the client's requests."""

    def __init__(self, deadline: float, *, check_address: bool = True) -> None:
        self.deadline = deadline
        self.check_address = check_address
        self._sync = httpcore.SyncBackend()

    def time_left(self, timeout: float | None, error: type[httpcore.TimeoutException]) -> float:
        """`timeout` cut to the time left; raises `error` when none is."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error("the time limit was reached")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:  # fmt: skip
        addresses = self._resolve(host, port, self.time_left(timeout, httpcore.ConnectTimeout))
        if self.check_address and not all(is_public(a) for a in addresses):
            raise AddressRefused(f"{host} is a local or private-network address; the browser only opens public sites")
        failure: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:  # the checked addresses, never the name again
            try:
                stream = self._sync.connect_tcp(address, port, self.time_left(timeout, httpcore.ConnectTimeout),
                                                local_address, socket_options)  # fmt: skip
                return _DeadlineStream(stream, self)
            except httpcore.ConnectError as e:
                failure = e
        raise failure

    def _resolve(self, host: str, port: int, timeout: float) -> list[str]:
        """The addresses of `host`, in the resolver's order. The lookup runs on a thread of its own so
        that a resolver slower than the deadline cannot hold the fetch (the thread ends when it answers)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-oss-browser-dns")
        try:
            infos = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout)
        except FutureTimeout:
            raise httpcore.ConnectTimeout(f"looking up {host} took too long") from None
        except (OSError, UnicodeError) as e:
            raise httpcore.ConnectError(f"cannot look up {host} ({e})") from None
        finally:
            pool.shutdown(wait=False)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:  # fmt: skip
        raise httpcore.ConnectError("the browser does not open unix sockets")

    def sleep(self, seconds: float) -> None:
        self._sync.sleep(min(seconds, max(0.0, self.deadline - time.monotonic())))


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by its backend's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._stream = stream
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:  # fmt: skip
        left = self._backend.time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left), self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def transport_through(backend: httpcore.NetworkBackend) -> httpx.HTTPTransport:
    """An httpx transport (httpx's own TLS, limits and error mapping) whose connections all go through
    `backend`. httpx takes no network backend argument, so it is set on the transport's pool here;
    if a later httpx moves it, this fails loudly rather than connect without the checks."""
    transport = httpx.HTTPTransport()
    pool = getattr(transport, "_pool", None)
    if not isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):
        raise RuntimeError("this httpx/httpcore version has no pool network backend to set; the browser cannot run safely")
    pool._network_backend = backend
    return transport
