"""The flags several subcommands share (generate, chat, bench, serve), defined and validated once.

Values are checked by argparse at parse time, so a bad value exits 2 with argparse's one-line usage
error for every command alike; `sampling_config(a)` turns the parsed sampling flags into the
`SamplingConfig` every command passes on.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from mlx_oss.harmony import ReasoningEffort

DTYPES = ("float32", "bfloat16", "float16")
EFFORTS = tuple(e.value for e in ReasoningEffort)


INSTRUCTIONS_HELP = "developer instructions (the usual 'system prompt'); @FILE reads them from FILE, @@ starts a literal @"


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `lo` (else argparse's usage error, exit 2)."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
context_int = int_at_least(2)


def instructions_arg(value: str) -> str:
    """`-s/--instructions`: TEXT, @FILE (read as UTF-8; a missing or unreadable file is an argument
    error), or @@TEXT for text that starts with @."""
    if value.startswith("@@"):
        return value[1:]
    if not value.startswith("@"):
        return value
    p = Path(value[1:]).expanduser()
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise argparse.ArgumentTypeError(f"cannot read the instructions file {str(p)!r} ({why})") from None


def int_list(s: str) -> list[int]:
    """argparse type: comma-separated integers, e.g. `512,2048`."""
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def float_in(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], float]:
    """argparse type: a number in [lo, hi] (or (lo, hi] with `lo_open`)."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not ((lo < v if lo_open else lo <= v) and v <= hi):
            raise argparse.ArgumentTypeError(f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v:g}")
        return v

    return parse


def add_model(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--model/-m: a Hub id, checkpoint folder or converted folder (default gpt-oss-20b)."""
    from mlx_oss.store import DEFAULT_MODEL

    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=help or f"Hub id, checkpoint folder or converted folder, converted once (default {DEFAULT_MODEL})")  # fmt: skip


def add_dtype(p: argparse.ArgumentParser, help: str = "compute dtype (default: bf16 on Metal, f32 on CPU)") -> None:
    p.add_argument("--dtype", choices=DTYPES, default=None, help=help)


def add_hosts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hosts", metavar="HOSTFILE", default=None,
        help="run tensor-parallel over the machines of an mlx.launch hostfile (JSON; this process is rank 0). "
             "Also works when started by `mlx.launch --hostfile HOSTFILE -- mlx-oss ...`. See docs/DISTRIBUTED.md",
    )  # fmt: skip


def add_effort(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--reasoning-effort/-r, choices from `ReasoningEffort`."""
    p.add_argument("--reasoning-effort", "-r", choices=EFFORTS, default=ReasoningEffort.MEDIUM.value, help=help)


def add_instructions(p: argparse.ArgumentParser) -> None:
    """--instructions/--system/-s TEXT | @FILE | @@TEXT."""
    p.add_argument("--instructions", "--system", "-s", dest="instructions", default=None, metavar="TEXT",
                   type=instructions_arg, help=INSTRUCTIONS_HELP)  # fmt: skip


def add_sampling(p: argparse.ArgumentParser) -> None:
    """--temperature --top-p --top-k --min-p --seed (defaults: OpenAI's recommendation, temperature 1, top-p 1)."""
    p.add_argument("--temperature", "--temp", type=float_in(0, 100), default=1.0,
                   help="sampling temperature (default 1.0, OpenAI's recommendation; 0 = greedy)")  # fmt: skip
    p.add_argument("--top-p", type=float_in(0, 1, lo_open=True), default=1.0, help="nucleus sampling (default 1.0 = off)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="top-k sampling (default 0 = off)")
    p.add_argument("--min-p", type=float_in(0, 1), default=0.0, help="min-p sampling (default 0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible replies")


def add_limits(p: argparse.ArgumentParser, max_context_help: str = "context limit in tokens (default: the model's)") -> None:
    """--max-tokens (per reply) and --max-context."""
    p.add_argument("--max-tokens", type=positive_int, default=None, help="maximum tokens per reply (default: until the model stops or the context is full)")
    p.add_argument("--max-context", type=context_int, default=None, help=max_context_help)


def add_kv_cache(p: argparse.ArgumentParser) -> None:
    """--kv-bits 8|4 and --kv-group-size 32|64|128 -> `load(..., kv_bits=, kv_group_size=)`: every cache of
    the loaded model quantized (docs/MODEL.md, "Quantized KV cache"); `a.kv_bits` None when not given."""
    from mlx_oss.config import KV_BITS, KV_GROUP_SIZES

    p.add_argument("--kv-bits", type=int, choices=sorted(KV_BITS, reverse=True), default=None,
                   help="quantize the KV cache to 8 or 4 bits: ~0.53x / ~0.28x its bfloat16 bytes, so longer "
                        "contexts fit (default: not quantized; docs/MODEL.md)")  # fmt: skip
    p.add_argument("--kv-group-size", type=int, choices=KV_GROUP_SIZES, default=64,
                   help="values per scale and bias of the quantized KV cache (default 64)")


def kv_cache_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """`load(...)` keyword arguments for the parsed `add_kv_cache` flags."""
    return {"kv_bits": a.kv_bits, "kv_group_size": a.kv_group_size}


MAX_REASONING_HELP = ("reasoning (analysis) tokens per reply: then the reasoning is closed and the answer begins "
                      "(default: no limit; 0: answer at once)")


def add_reasoning_budget(p: argparse.ArgumentParser, help: str = MAX_REASONING_HELP) -> None:
    """--max-reasoning-tokens N -> `a.max_reasoning_tokens`, passed on as `Chat(max_reasoning_tokens=N)`
    (None when not given: no limit)."""
    p.add_argument("--max-reasoning-tokens", type=non_negative_int, default=None, metavar="N", help=help)


def sampling_config(a: argparse.Namespace) -> Any:
    """The `SamplingConfig` of the parsed `add_sampling` flags."""
    from mlx_oss.sampling import SamplingConfig

    return SamplingConfig(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, min_p=a.min_p, seed=a.seed)


def add_browser_flags(g: Any) -> None:
    """--search-backend, --searxng-url and the fetch limits (--fetch-timeout, --fetch-max-bytes)."""
    from mlx_oss.builtin.browser.fetch import FetchLimits
    from mlx_oss.builtin.browser.search import SEARCH_BACKENDS

    g.add_argument("--search-backend", choices=SEARCH_BACKENDS, default="auto",
                   help="auto: Exa if EXA_API_KEY is set, else You.com if YDC_API_KEY, else SearXNG if SEARXNG_URL, "
                        "else none (open pages by URL only)")  # fmt: skip
    g.add_argument("--searxng-url", metavar="URL", default=None, help="a SearXNG instance (with format=json enabled)")
    g.add_argument("--fetch-timeout", type=float_in(0, 3600, lo_open=True), default=FetchLimits.timeout_s, metavar="S",
                   help=f"seconds one page fetch may take, redirects and body included (default {FetchLimits.timeout_s:g})")  # fmt: skip
    g.add_argument("--fetch-max-bytes", type=positive_int, default=FetchLimits.max_bytes, metavar="N",
                   help=f"largest page body read, in bytes (default {FetchLimits.max_bytes}); bigger pages are refused")  # fmt: skip


def add_python_flags(g: Any) -> None:
    """--python-backend and --python-timeout."""
    from mlx_oss.builtin.python.tool import PYTHON_BACKENDS

    g.add_argument("--python-backend", choices=PYTHON_BACKENDS, default="jupyter",
                   help="jupyter: a local kernel in its own process (not a sandbox); docker: a fresh container per call, "
                        "no network, memory/CPU limits")  # fmt: skip
    g.add_argument("--python-timeout", type=float_in(0, 86400, lo_open=True), default=120.0, metavar="S",
                   help="seconds before a run is stopped (default 120, what the model was trained with)")  # fmt: skip


def add_builtin_tools(p: argparse.ArgumentParser) -> None:
    """--browser, --search-backend, --searxng-url, fetch limits, --python and its options (README "Built-in tools")."""
    g = p.add_argument_group("built-in tools (see README 'Built-in tools')")
    g.add_argument("--browser", action="store_true", help="let the model search and read web pages (browser tool)")
    add_browser_flags(g)
    g.add_argument("--python", action="store_true",
                   help="let the model run Python (off by default; every call is shown and must be approved)")  # fmt: skip
    add_python_flags(g)
    g.add_argument("--python-dir", metavar="DIR", default=None, help="the working folder the code sees as /mnt/data")
    g.add_argument("--approve-python", choices=["ask", "always", "never"], default="ask",
                   help="ask before each run (default), run without asking, or refuse every run")  # fmt: skip


def make_browser(a: argparse.Namespace, count_tokens: Callable[[str], int] | None = None) -> Any:
    """The `Browser` of the parsed `add_browser_flags` (a UsageError for a backend that cannot work)."""
    from mlx_oss.builtin.browser import Browser, FetchLimits, Fetcher, make_search_backend
    from mlx_oss.errors import UsageError

    try:
        backend = make_search_backend(a.search_backend, url=a.searxng_url)
    except ValueError as e:
        raise UsageError(f"--search-backend: {e}") from None
    limits = FetchLimits(timeout_s=a.fetch_timeout, max_bytes=a.fetch_max_bytes)
    return Browser(backend, fetcher=Fetcher(limits), count_tokens=count_tokens)


def check_builtin_args(a: argparse.Namespace) -> None:
    """UsageError (exit 2) for flag values that cannot work, before anything loads."""
    if a.browser:
        make_browser(a)


def builtin_chat_kwargs(a: argparse.Namespace, approve: Callable[[Any], bool] | None) -> dict[str, Any]:
    """`Chat(...)` keyword arguments for the flags (an empty dict when no built-in tool is on)."""
    from mlx_oss.builtin.python.tool import PythonTool

    check_builtin_args(a)
    names = [n for n in ("browser", "python") if getattr(a, n, False)]
    if not names:
        return {}
    kw: dict[str, Any] = {"builtin_tools": tuple(names)}
    if a.browser:
        kw["browser_backend"] = make_browser(a)
    if a.python:
        kw["python_backend"] = PythonTool(a.python_backend, approve=approve, workdir=a.python_dir, timeout_s=a.python_timeout)
        kw["approve"] = approve
    return kw
