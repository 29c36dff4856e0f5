"""Hostfiles: the JSON `mlx.launch --hostfile` reads, and the ring list MLX's ring backend reads.

mlx.launch format: `{"backend": "ring", "hosts": [{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, ...]}`
(or just the list of hosts). Rank r is the r-th host. For the ring backend MLX wants, in the file
named by MLX_HOSTFILE, one list of "ip:port" per rank; rank r listens on `base_port + r`.
Our liveness channel (watchdog.py) listens on rank 0's first IP at `base_port + size`.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlx_oss.errors import UserError

DEFAULT_PORT = 32323  # mlx.launch's --starting-port default
LOCAL = ("127.0.0.1", "localhost", "::1")


class HostfileError(UserError):
    """A hostfile that cannot be used (one line naming the file and the field)."""


@dataclass(frozen=True)
class Host:
    ssh: str
    ip: str

    @property
    def local(self) -> bool:
        return self.ssh in LOCAL


def read_hostfile(path: str | Path) -> tuple[list[Host], str]:
    """-> (hosts in rank order, backend name; "ring" unless the file says otherwise)."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise HostfileError(f"{p}: cannot read hostfile ({e.strerror or e})") from None
    except ValueError as e:
        raise HostfileError(f"{p}: not JSON ({e})") from None
    backend = "ring"
    if isinstance(data, dict):
        backend = data.get("backend") or "ring"
        data = data.get("hosts")
    if not isinstance(data, list) or len(data) < 1:
        raise HostfileError(f"{p}: expected a list of hosts (or {{\"hosts\": [...]}}), one per rank")
    hosts = []
    for i, h in enumerate(data):
        if not isinstance(h, dict) or not isinstance(h.get("ssh"), str) or not h["ssh"]:
            raise HostfileError(f"{p}: hosts[{i}] needs an \"ssh\" host name")
        ips = h.get("ips") or []
        ip = ips[0] if ips else h["ssh"]
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise HostfileError(f"{p}: hosts[{i}] needs \"ips\": the ring backend connects to IP addresses, not {ip!r}") from None
        hosts.append(Host(h["ssh"], ip))
    if backend not in ("ring", "jaccl", "jaccl-ring", "any"):
        raise HostfileError(f"{p}: backend {backend!r} is not supported (ring, jaccl, jaccl-ring)")
    return hosts, backend


def ring_addresses(hosts: list[Host], base_port: int = DEFAULT_PORT) -> list[list[str]]:
    """MLX_HOSTFILE content for the ring backend."""
    return [[f"{h.ip}:{base_port + r}"] for r, h in enumerate(hosts)]


def control_address(ring: list[list[str]]) -> tuple[str, int]:
    """Where rank 0 listens for the other ranks' liveness connections: its first IP, one port above
    the highest ring port (so an `mlx.launch`-made ring file gives the same answer on every rank)."""
    ip = ring[0][0].rsplit(":", 1)[0].strip("[]")
    top = max(int(a.rsplit(":", 1)[1]) for node in ring for a in node)
    return ip, top + 1


def ring_from_env(env: dict | None = None) -> list[list[str]] | None:
    """The ring list this process was started with (MLX_HOSTFILE), or None."""
    env = os.environ if env is None else env
    f = env.get("MLX_HOSTFILE")
    if not f:
        return None
    try:
        ring = json.loads(Path(f).read_text())
    except (OSError, ValueError) as e:
        raise HostfileError(f"MLX_HOSTFILE={f}: cannot read the ring list ({e})") from None
    if not isinstance(ring, list) or not all(isinstance(n, list) and n for n in ring):
        raise HostfileError(f"MLX_HOSTFILE={f}: expected one list of \"ip:port\" per rank")
    return ring
