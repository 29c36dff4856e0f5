"""The shared CLI flags (mlx_oss/cli/args.py) on a bare parser: each type's bounds and one-line errors, each
flag's default and destination, and what the built-in tool flags turn into. No model is loaded."""

from __future__ import annotations

import argparse

import pytest

from mlx_oss.cli import args
from mlx_oss.errors import UsageError
from mlx_oss.sampling import SamplingConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    for add in (args.add_model, args.add_dtype, args.add_hosts, args.add_effort, args.add_instructions,
                args.add_sampling, args.add_limits, args.add_builtin_tools):  # fmt: skip
        add(p)
    return p


def test_defaults():
    from mlx_oss.store import DEFAULT_MODEL

    a = _parser().parse_args([])
    assert (a.model, a.dtype, a.hosts, a.reasoning_effort, a.instructions) == (DEFAULT_MODEL, None, None, "medium", None)
    assert (a.temperature, a.top_p, a.top_k, a.min_p, a.seed, a.max_tokens, a.max_context) == (1.0, 1.0, 0, 0.0, None, None, None)
    assert (a.browser, a.search_backend, a.searxng_url, a.python, a.python_backend) == (False, "auto", None, False, "jupyter")
    assert (a.python_timeout, a.python_dir, a.approve_python) == (120.0, None, "ask")
    assert args.sampling_config(a) == SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=None)


def test_values_land_where_they_belong():
    a = _parser().parse_args(
        ["-m", "m", "--dtype", "float16", "--hosts", "h.json", "-r", "high", "-s", "be brief", "--temp", "0.5",
         "--top-p", "0.9", "--top-k", "5", "--min-p", "0.1", "--seed", "3", "--max-tokens", "1", "--max-context", "2",
         "--browser", "--search-backend", "none", "--searxng-url", "http://127.0.0.1:1", "--python",
         "--python-backend", "docker", "--python-timeout", "0.5", "--python-dir", "d", "--approve-python", "never"]
    )  # fmt: skip
    assert (a.model, a.dtype, a.hosts, a.reasoning_effort, a.instructions) == ("m", "float16", "h.json", "high", "be brief")
    assert args.sampling_config(a) == SamplingConfig(temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, seed=3)
    assert (a.max_tokens, a.max_context) == (1, 2)
    assert (a.browser, a.search_backend, a.searxng_url) == (True, "none", "http://127.0.0.1:1")
    assert (a.python, a.python_backend, a.python_timeout, a.python_dir, a.approve_python) == (True, "docker", 0.5, "d", "never")
    assert _parser().parse_args(["--system", "x"]).instructions == "x"
    assert _parser().parse_args(["--reasoning-effort", "low", "--temperature", "0"]).reasoning_effort == "low"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top-k", "-1"], "argument --top-k: must be at least 0, got -1"),
        (["--top-k", "x"], "argument --top-k: expected an integer, got 'x'"),
        (["--max-tokens", "0"], "argument --max-tokens: must be at least 1, got 0"),
        (["--max-context", "1"], "argument --max-context: must be at least 2, got 1"),
        (["--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
        (["--top-p", "1.5"], "argument --top-p: must be in (0, 1], got 1.5"),
        (["--min-p", "-0.1"], "argument --min-p: must be in [0, 1], got -0.1"),
        (["--temperature", "101"], "argument --temperature/--temp: must be in [0, 100], got 101"),
        (["--temperature", "hot"], "argument --temperature/--temp: expected a number, got 'hot'"),
        (["--python-timeout", "0"], "argument --python-timeout: must be in (0, 86400], got 0"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["-r", "max"], "argument --reasoning-effort/-r: invalid choice: 'max'"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bounds_are_inclusive_where_documented():
    a = _parser().parse_args(["--top-k", "0", "--max-tokens", "1", "--max-context", "2", "--top-p", "1", "--min-p", "1",
                              "--min-p", "0", "--temperature", "100", "--python-timeout", "86400"])  # fmt: skip
    assert (a.top_k, a.max_tokens, a.max_context, a.top_p, a.min_p, a.temperature, a.python_timeout) == (0, 1, 2, 1.0, 0.0, 100.0, 86400.0)
    assert args.float_in(0, 1)("0") == 0.0 and args.float_in(0, 1, lo_open=True)("1e-9") == 1e-9


def test_instructions_text_file_and_literal_at(tmp_path):
    f = tmp_path / "rules.txt"
    f.write_text("Be brief. é\n", encoding="utf-8")
    assert args.instructions_arg("plain") == "plain"
    assert args.instructions_arg(f"@{f}") == "Be brief. é\n"
    assert args.instructions_arg("@@handle") == "@handle"
    with pytest.raises(argparse.ArgumentTypeError) as e:
        args.instructions_arg(f"@{tmp_path / 'missing.txt'}")
    assert str(e.value) == f"cannot read the instructions file {str(tmp_path / 'missing.txt')!r} (No such file or directory)"
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^cannot read the instructions file .*bad\.txt' \(.*utf-8.*\)$"):
        args.instructions_arg(f"@{tmp_path / 'bad.txt'}")


def test_int_list():
    assert args.int_list("512,2048") == [512, 2048]
    assert args.int_list("1,,2, ") == [1, 2]
    with pytest.raises(argparse.ArgumentTypeError) as e:
        args.int_list("1,x")
    assert str(e.value) == "expected comma-separated integers, got '1,x'"


def test_builtin_tool_flags_become_chat_kwargs(tmp_path):
    from mlx_oss.builtin.browser.search import NoSearch, SearxngSearch

    p = _parser()
    assert args.builtin_chat_kwargs(p.parse_args([]), None) == {}
    kw = args.builtin_chat_kwargs(p.parse_args(["--browser", "--search-backend", "searxng",
                                                "--searxng-url", "http://127.0.0.1:9", "--fetch-timeout", "3",
                                                "--fetch-max-bytes", "1000"]), None)  # fmt: skip
    browser = kw["browser_backend"]  # a Browser: the search backend and fetch limits of the flags
    assert kw["builtin_tools"] == ("browser",) and isinstance(browser.backend, SearxngSearch)
    assert browser.backend.url == "http://127.0.0.1:9" and "approve" not in kw
    assert (browser.fetcher.limits.timeout_s, browser.fetcher.limits.max_bytes) == (3.0, 1000)

    def approve(call) -> bool:
        return True

    kw = args.builtin_chat_kwargs(p.parse_args(["--python", "--python-timeout", "7", "--python-dir", str(tmp_path),
                                                "--browser", "--search-backend", "none"]), approve)  # fmt: skip
    assert kw["builtin_tools"] == ("browser", "python") and isinstance(kw["browser_backend"].backend, NoSearch)
    tool = kw["python_backend"]
    assert (tool.backend, tool.approve, tool.workdir, tool.timeout_s, kw["approve"]) == ("jupyter", approve, tmp_path, 7.0, approve)
    kw = args.builtin_chat_kwargs(p.parse_args(["--python"]), None)
    assert kw["builtin_tools"] == ("python",) and "browser_backend" not in kw


def test_a_search_backend_that_cannot_work_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("SEARXNG_URL", raising=False)
    a = _parser().parse_args(["--browser", "--search-backend", "searxng"])
    with pytest.raises(UsageError) as e:
        args.check_builtin_args(a)
    assert str(e.value).startswith("--search-backend: search backend searxng needs the instance URL")
    args.check_builtin_args(_parser().parse_args(["--search-backend", "searxng"]))  # browser off: not checked


def _help_text(p: argparse.ArgumentParser, monkeypatch) -> str:
    """`--help` as a user reads it, with whitespace collapsed (argparse wraps to the terminal width)."""
    monkeypatch.setenv("COLUMNS", "100")
    return " ".join(p.format_help().split())


def test_help_shows_each_flag_with_its_metavar_and_what_it_does(monkeypatch):
    from mlx_oss.store import DEFAULT_MODEL

    out = _help_text(_parser(), monkeypatch)
    for fragment in (
        f"--model MODEL, -m MODEL Hub id, checkpoint folder or converted folder, converted once (default {DEFAULT_MODEL})",
        "--dtype {float32,bfloat16,float16} compute dtype (default: bf16 on Metal, f32 on CPU)",
        "--hosts HOSTFILE run tensor-parallel over the machines of an mlx.launch hostfile (JSON; this process is "
        "rank 0). Also works when started by `mlx.launch --hostfile HOSTFILE -- mlx-oss ...`. See docs/DISTRIBUTED.md",
        "--reasoning-effort {low,medium,high}, -r {low,medium,high} --instructions",
        "--instructions TEXT, --system TEXT, -s TEXT developer instructions (the usual 'system prompt'); @FILE reads "
        "them from FILE, @@ starts a literal @",
        "--temperature TEMPERATURE, --temp TEMPERATURE sampling temperature (default 1.0, OpenAI's recommendation; 0 = greedy)",
        "--top-p TOP_P nucleus sampling (default 1.0 = off)",
        "--top-k TOP_K top-k sampling (default 0 = off)",
        "--min-p MIN_P min-p sampling (default 0 = off)",
        "--seed SEED random seed for reproducible replies",
        "--max-tokens MAX_TOKENS maximum tokens per reply (default: until the model stops or the context is full)",
        "--max-context MAX_CONTEXT context limit in tokens (default: the model's)",
        "built-in tools (see README 'Built-in tools'): --browser let the model search and read web pages (browser tool)",
        "--search-backend {auto,exa,you,searxng,none} auto: Exa if EXA_API_KEY is set, else You.com if YDC_API_KEY, "
        "else SearXNG if SEARXNG_URL, else none (open pages by URL only)",
        "--searxng-url URL a SearXNG instance (with format=json enabled)",
        "--fetch-timeout S seconds one page fetch may take, redirects and body included (default 20)",
        "--fetch-max-bytes N largest page body read, in bytes (default 5000000); bigger pages are refused",
        "--python let the model run Python (off by default; every call is shown and must be approved)",
        "--python-backend {jupyter,docker} jupyter: a local kernel in its own process (not a sandbox); docker: a "
        "fresh container per call, no network, memory/CPU limits",
        "--python-timeout S seconds before a run is stopped (default 120, what the model was trained with)",
        "--python-dir DIR the working folder the code sees as /mnt/data",
        "--approve-python {ask,always,never} ask before each run (default), run without asking, or refuse every run",
    ):
        assert fragment in out, fragment


def test_a_command_can_word_the_shared_flags_its_own_way(monkeypatch):
    p = argparse.ArgumentParser(prog="t")
    args.add_model(p, help="the model to serve")
    args.add_dtype(p, help="weights dtype")
    args.add_effort(p, help="default effort")
    args.add_limits(p, max_context_help="per-conversation limit")
    out = _help_text(p, monkeypatch)
    for fragment in ("--model MODEL, -m MODEL the model to serve", "--dtype {float32,bfloat16,float16} weights dtype",
                     "--reasoning-effort {low,medium,high}, -r {low,medium,high} default effort",
                     "--max-context MAX_CONTEXT per-conversation limit"):  # fmt: skip
        assert fragment in out, fragment


def test_int_at_least_bounds_and_messages():
    # called here, not through positive_int & co.: those are built once, at import
    at_least_3 = args.int_at_least(3)
    assert at_least_3("3") == 3 and at_least_3(" 4 ") == 4
    for value, message in (("2", "must be at least 3, got 2"), ("3.0", "expected an integer, got '3.0'")):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            at_least_3(value)
        assert str(e.value) == message


def test_the_chosen_python_backend_and_the_browsers_token_count_are_passed_on(tmp_path):
    kw = args.builtin_chat_kwargs(_parser().parse_args(["--python", "--python-backend", "docker",
                                                        "--python-dir", str(tmp_path)]), None)  # fmt: skip
    assert kw["python_backend"].backend == "docker"  # nothing starts before the first call

    def count(text: str) -> int:
        return 7

    browser = args.make_browser(_parser().parse_args(["--search-backend", "none"]), count)
    assert browser.count_tokens is count and browser.counts_exactly


def test_a_command_without_the_python_flag_gets_no_builtin_tools():
    # a front end may offer --browser alone; builtin_chat_kwargs reads --python only when it exists
    assert args.builtin_chat_kwargs(argparse.Namespace(browser=False), None) == {}


def test_fetch_limits_default_to_the_browsers_and_are_bounded(capsys):
    """Without the flags the browser gets FetchLimits' own defaults (never None: no limit); the timeout is
    in (0, 3600] seconds."""
    from mlx_oss.builtin.browser import FetchLimits

    p = _parser()
    limits = args.builtin_chat_kwargs(p.parse_args(["--browser", "--search-backend", "none"]), None)["browser_backend"].fetcher.limits
    assert (limits.timeout_s, limits.max_bytes) == (FetchLimits.timeout_s, FetchLimits.max_bytes)
    for ok in ("0.5", "3600"):
        assert p.parse_args(["--fetch-timeout", ok]).fetch_timeout == float(ok)
    for bad in ("0", "3600.5"):
        with pytest.raises(SystemExit):
            p.parse_args(["--fetch-timeout", bad])
        assert f"argument --fetch-timeout: must be in (0, 3600], got {bad}" in capsys.readouterr().err
