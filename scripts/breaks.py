"""Deliberate breaks, re-run on demand: proof that each test catches a break of the line it guards.

A test that never failed may test nothing. Each entry of `BREAKS` is a one-place change of user-visible
behaviour (an exact `old` snippet, found exactly once in its file, and its `new` replacement) and the tests
that must catch it. For each break the script applies it alone to a scratch copy of the repository, runs
those tests there (`pytest -x`) and restores the file: exit 1 is `caught`, exit 0 is `MISSED`, anything
else (snippet not found, a collection error, a timeout) is `error`. The unbroken copy must pass the same
tests first (`--no-baseline` skips that). The working tree is never touched. The tests import the copy:
convert/ and tui/ (mlx_oss.convert / mlx_oss.tui by a package-dir mapping) become subpackages of its
mlx_oss/, as in scripts/mutation.sh, and PYTHONPATH puts it first. See docs/TESTING.md.

    python scripts/breaks.py                  # every break
    python scripts/breaks.py pool response    # the breaks whose label contains one of these
    python scripts/breaks.py --list           # the table
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CHAT = Path("/tmp/mlx-oss-mutation/tiny-chat/converted")  # built by scripts/mutation.sh
MARKER = ".mlx-oss-breaks"  # in the scratch copy: a folder --dir may replace


@dataclass(frozen=True)
class Break:
    cls: int  # the gap class of issue 31
    label: str
    file: str  # as in the repository (convert/ and tui/ are moved under mlx_oss/ in the scratch copy)
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail


S, BT = "mlx_oss/server/", "mlx_oss/builtin/"


def B(cls: int, label: str, file: str, old: str, new: str, *tests: str) -> Break:
    """A break; `tests` as `module::name` for tests/test_<module>.py::name."""
    return Break(cls, label, file, old, new, tuple("tests/test_{}.py::{}".format(*t.split("::", 1)) for t in tests))


BREAKS: tuple[Break, ...] = (
    # 1. the prompt-cache pool
    B(1, "pool: pooled state handed out, not a fork", S + "cache_pool.py",
      "engine.attach(best.state.fork())", "engine.attach(best.state)",
      "cache_pool_branches::test_a_branch_before_the_end_leaves_the_original_exact",
      "server_paths::test_a_branch_of_an_earlier_conversation_then_its_resume_match_a_fresh_pass"),
    B(1, "pool: live state stashed, not a fork", S + "cache_pool.py",
      "self._stash(state.fork(), self._live_prompt_end)", "self._stash(state, self._live_prompt_end)",
      "cache_pool_branches::test_the_live_conversation_branched_keeps_its_own_cache"),
    B(1, "pool: a tie goes to the least recently used", S + "cache_pool.py",
      "(e.state.reusable(prompt), e.last_used)", "(e.state.reusable(prompt), -e.last_used)",
      "cache_pool_branches::test_a_tie_goes_to_the_most_recently_used_state"),
    B(1, "pool: a fork is not a use", S + "cache_pool.py",
      "best.last_used = self._clock", "pass",
      "cache_pool_branches::test_a_tie_goes_to_the_most_recently_used_state",
      "cache_pool_branches::test_a_full_budget_evicts_the_least_recently_used_state"),
    # 2. every bounded store past its limit (the pool's order is class 1's too)
    B(2, "pool: the most recently used evicted", S + "cache_pool.py",
      "self._entries.pop(0)", "self._entries.pop()",
      "cache_pool_branches::test_a_full_budget_evicts_the_least_recently_used_state"),
    B(2, "stored responses: the newest dropped", S + "responses.py",
      "self._drop(next(iter(self._items)))", "self._drop(next(reversed(self._items)))",
      "server_security::test_stored_responses_unit",
      "server_security::test_the_stored_responses_stay_within_their_bytes"),
    B(2, "stored responses: one over the budget kept", S + "responses.py",
      "        if size > self.max_bytes:\n            return False\n", "",
      "server_security::test_stored_responses_unit"),
    B(2, "sessions: the newest closed", S + "builtin.py",
      "self._items.popitem(last=False)", "self._items.popitem(last=True)",
      "server_builtin::test_sessions_past_their_limit_close_the_oldest"),
    B(2, "sessions: one more kept", S + "builtin.py",
      "len(self._items) - self.max_items)", "len(self._items) - self.max_items - 1)",
      "server_builtin::test_sessions_past_their_limit_close_the_oldest"),
    B(2, "browser pages: never bounded", BT + "browser/tool.py",
      "        self.stack.append(page)\n        self._bound()\n", "        self.stack.append(page)\n",
      "builtin_page_store::test_past_the_limit_the_oldest_pages_lose_their_text_and_keep_their_cursor_url_and_title"),
    B(2, "browser pages: the newest freed first", BT + "browser/tool.py",
      "for page in self.stack[:-1]:", "for page in reversed(self.stack[:-1]):",
      "builtin_page_store::test_past_the_limit_the_oldest_pages_lose_their_text_and_keep_their_cursor_url_and_title"),
    B(2, "browser pages: freed at one cursor only", BT + "browser/tool.py",
      "self.stack = [light if q is page else q for q in self.stack]",
      "self.stack[self.stack.index(page)] = light",
      "builtin_page_store::test_a_page_shown_at_several_cursors_is_freed_at_all_of_them"),
    # 3. the context limit reached while generating
    B(3, "context: chat finish_reason stop", S + "chat_completions.py",
      '"context": "length"', '"context": "stop"',
      "server_paths::test_context_limit_mid_generation_in_every_api"),
    B(3, "context: responses completed", S + "responses.py",
      'if ev.stop_reason in ("length", "context", "cancelled", "tool_limit")',
      'if ev.stop_reason in ("length", "cancelled", "tool_limit")',
      "server_paths::test_context_limit_mid_generation_in_every_api"),
    B(3, "context: responses reason", S + "responses.py",
      '"context": "max_output_tokens"', '"context": "context"',
      "server_paths::test_context_limit_mid_generation_in_every_api"),
    B(3, "context: after a tool round, stop", S + "generation.py",
      'emit(Finished(Usage(*totals), "context"))', 'emit(Finished(Usage(*totals), "stop"))',
      "server_paths::test_context_limit_reached_by_a_builtin_round"),
    B(3, "context: after a tool round, a full prompt fits", S + "generation.py",
      "fits = len(prompt) < engine.max_context", "fits = len(prompt) <= engine.max_context",
      "server_paths::test_context_limit_reached_by_a_builtin_round"),
    B(3, "context: a prompt at the limit accepted", S + "backend.py",
      "if len(tokens) >= self.max_context:", "if len(tokens) > self.max_context:",
      "server_paths::test_a_prompt_at_the_limit_is_refused_and_one_below_generates_one_token"),
    # 4. assistant turns of several parts sent back
    B(4, "turns: chat content beside calls as final", S + "chat_completions.py",
      'channel=COMMENTARY if tool_calls else "final"', 'channel="final"',
      "server_paths::test_chat_assistant_turn_with_content_reasoning_and_parallel_calls_answered_out_of_order"),
    B(4, "turns: chat reasoning sent back dropped", S + "chat_completions.py",
      "reasoning = _reasoning_sent_back(m)", "reasoning = None",
      "server_paths::test_chat_assistant_turn_with_content_reasoning_and_parallel_calls_answered_out_of_order",
      "server_paths::test_chat_two_rounds_of_calls_in_one_turn_keep_both_reasonings"),
    B(4, "turns: chat results addressed to the last call", S + "chat_completions.py",
      "Message.tool_result(FUNCTIONS + calls[call_id],", "Message.tool_result(FUNCTIONS + list(calls.values())[-1],",
      "server_paths::test_chat_assistant_turn_with_content_reasoning_and_parallel_calls_answered_out_of_order"),
    B(4, "turns: responses results addressed to the last call", S + "responses.py",
      "return Message.tool_result(calls[call_id], text)", "return Message.tool_result(list(calls.values())[-1], text)",
      "server_paths::test_responses_items_of_one_turn_with_parallel_calls_answered_out_of_order"),
    B(4, "turns: responses reasoning item dropped", S + "responses.py",
      "            if text:\n                history.append(reasoning_message(text))",
      "            if not text:\n                history.append(reasoning_message(text))",
      "server_paths::test_responses_items_of_one_turn_with_parallel_calls_answered_out_of_order"),
    B(4, "turns: earlier analysis not pruned", S + "conversation.py",
      "head + prune_analysis(history)", "head + history",
      "server_paths::test_an_earlier_turns_reasoning_stays_out_while_a_later_turn_calls_tools"),
    # 5. security near misses
    B(5, "key: a prefix of the key accepted", S + "app.py",
      "hmac.compare_digest(given.encode(), self.api_key.encode())",
      "hmac.compare_digest(given.encode(), self.api_key.encode()[: len(given)])",
      "server_security::test_every_near_miss_of_the_key_is_refused"),
    B(5, "key: compared without case", S + "app.py",
      "hmac.compare_digest(given.encode(), self.api_key.encode())",
      "hmac.compare_digest(given.lower().encode(), self.api_key.lower().encode())",
      "server_security::test_every_near_miss_of_the_key_is_refused"),
    B(5, "key: GET /responses/{id} unchecked", S + "app.py",
      "srv.check_key(request)\n        _, resp = srv.stored.get(", "_, resp = srv.stored.get(",
      "server_security::test_every_near_miss_of_the_key_is_refused"),
    B(5, "key: /health state shown to all", S + "app.py",
      "if not srv.has_key(request):", "if False:",
      "server_security::test_health_shows_state_only_to_the_key_holder"),
    B(5, "address: one public address is enough", BT + "browser/net.py",
      "not all(is_public(a) for a in addresses)", "not any(is_public(a) for a in addresses)",
      "builtin_safety::test_private_address_near_misses_are_refused"),
    B(5, "address: IPv6 forms of IPv4 not unwrapped", BT + "browser/net.py",
      "return v4.is_global", "return ip.is_global",
      "builtin_safety::test_private_address_near_misses_are_refused"),
    B(5, "address: the name connected, not the checked address", BT + "browser/net.py",
      "self._sync.connect_tcp(address, port,", "self._sync.connect_tcp(host, port,",
      "builtin_safety::test_a_name_that_rebinds_to_loopback_never_reaches_it"),
    B(5, "address: only the first connection checked", BT + "browser/net.py",
      "if self.check_address and not all(", 'if self.__dict__.pop("check_address", False) and not all(',
      "builtin_safety::test_private_address_near_misses_are_refused_after_a_redirect"),
    B(5, "kernel: a deny-list instead of the allow-list", BT + "python/kernel.py",
      "if k in _ALLOWED or k.startswith(_ALLOWED_PREFIXES)",
      'if not any(w in k for w in ("KEY", "TOKEN", "SECRET", "PASSWORD"))',
      "builtin_safety::test_the_kernel_starts_from_an_allow_list_environment"),
    B(5, "kernel: proxies allowed", BT + "python/kernel.py",
      '"SSL_CERT_FILE", "SSL_CERT_DIR",', '"SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY",',
      "builtin_safety::test_the_kernel_starts_from_an_allow_list_environment"),
    B(5, "kernel: the app's environment readable", BT + "python/kernel.py",
      "        hide_environment()  # before the kernel exists", "        pass  #",
      "builtin_safety::test_starting_a_kernel_hides_the_apps_environment_from_it"),
    # 6. several requests in the failure paths
    B(6, "worker: cancel_all spares the queued", S + "worker.py",
      "jobs = list(self._waiting) + ([self._running] if self._running else [])",
      "jobs = [self._running] if self._running else []",
      "server_paths::test_cancel_all_ends_the_running_and_every_queued_request[chat stream]",
      "server_paths::test_cancel_all_ends_the_running_and_every_queued_request[responses]"),
    B(6, "worker: shutdown lets the queued run", S + "worker.py",
      "        self.cancel_all()\n        if self._thread is None:",
      "        if self._running:\n            self._running.cancel()\n        if self._thread is None:",
      "server_paths::test_shutdown_ends_the_running_and_every_queued_request"),
    B(6, "worker: a cancelled queued job still runs", S + "worker.py",
      "if not job.cancelled.is_set():\n                    job.fn(", "if True:\n                    job.fn(",
      "server_paths::test_cancel_all_ends_the_running_and_every_queued_request"),
    B(6, "worker: fail_all spares the queued", S + "worker.py",
      "jobs = ([self._running] if self._running else []) + list(self._waiting)",
      "jobs = [self._running] if self._running else []",
      "server_paths::test_fail_all_ends_the_running_and_every_queued_request"),
    B(6, "sessions: python state not carried", S + "builtin.py",
      "python = old.python if old is not None else None", "python = None",
      "server_builtin::test_previous_response_keeps_the_python_state_past_a_refused_request"),
    B(6, "sessions: a refused continuation loses the session", S + "app.py",
      "srv.sessions.put(previous, session)  # the request was refused", "session.tools.close()  #",
      "server_builtin::test_previous_response_keeps_the_python_state_past_a_refused_request"),
    # 7. operator settings
    B(7, "settings: --max-tokens ignored", S + "backend.py",
      "turn.max_tokens or self._max_tokens", "turn.max_tokens",
      "server_settings::test_max_tokens_is_the_cap_of_a_request_that_sets_none"),
    B(7, "settings: --max-tokens over the request's own", S + "backend.py",
      "turn.max_tokens or self._max_tokens", "self._max_tokens or turn.max_tokens",
      "server_settings::test_max_tokens_is_the_cap_of_a_request_that_sets_none"),
    B(7, "settings: --max-queue lets one more wait", S + "worker.py",
      "if waiting >= self.max_queue:", "if waiting > self.max_queue:",
      "server_settings::test_max_queue_lets_exactly_n_wait_and_refuses_the_next_with_retry_after"),
    B(7, "settings: --cache-bytes ignored", S + "backend.py",
      "PromptCachePool(cache_bytes)", "PromptCachePool(8 << 30)",
      "server_settings::test_cache_bytes_zero_keeps_only_the_state_in_use"),
    B(7, "settings: --max-context ignored", S + "backend.py",
      "engine_class(model, max_context=max_context)", "engine_class(model)",
      "server_paths::test_context_limit_mid_generation_in_every_api"),
    B(7, "settings: a request raises the tool-call limit", S + "responses.py",
      'min(first_of(body, "max_tool_calls") or limit, limit)', 'first_of(body, "max_tool_calls") or limit',
      "server_paths::test_a_request_cannot_raise_the_servers_tool_call_limit"),
    B(7, "settings: the tool-call limit one late", S + "generation.py",
      "        if calls >= max_calls:\n", "        if calls > max_calls:\n",
      "server_paths::test_a_request_cannot_raise_the_servers_tool_call_limit",
      "server_builtin::test_call_limit_ends_the_response_incomplete"),
    B(7, "settings: --max-tool-calls ignored", S + "cli.py",
      "max_calls=a.max_tool_calls", "max_calls=8",
      "server_cli::test_builtin_tool_flags_build_the_apps_server_tools"),
    B(7, "settings: --python-timeout ignored", S + "cli.py",
      "timeout_s=a.python_timeout, ", "",
      "server_cli::test_builtin_tool_flags_build_the_apps_server_tools"),
    # 8. accounting over built-in tool rounds; the scope of stop strings
    B(8, "rounds: usage of the last round only", S + "generation.py",
      "totals = [a + b for a, b in zip(totals, r.counts)]", "totals = list(r.counts)",
      "server_paths::test_usage_and_max_output_tokens_add_up_over_builtin_rounds"),
    B(8, "rounds: max_output_tokens per round", S + "generation.py",
      "budget = None if max_tokens is None else max_tokens - totals[2]", "budget = max_tokens",
      "server_paths::test_usage_and_max_output_tokens_add_up_over_builtin_rounds"),
    B(8, "stop strings: reasoning and arguments cut too", S + "generation.py",
      "if open_item.kind == MESSAGE and stops:", "if stops:",
      "server_paths::test_stop_strings_cut_the_answer_only"),
    # 9. timeouts
    B(9, "timeout: python cell x10", BT + "python/kernel.py",
      "deadline = time.monotonic() + timeout_s", "deadline = time.monotonic() + timeout_s * 10",
      "builtin_python::test_infinite_loop_times_out_and_the_session_restarts"),
    B(9, "timeout: browser fetch deadline x10", BT + "browser/fetch.py",
      "DeadlineBackend(time.monotonic() + self.limits.timeout_s,",
      "DeadlineBackend(time.monotonic() + self.limits.timeout_s * 10,",
      "builtin_safety::test_a_slow_server_cannot_hold_a_fetch_past_its_time_limit"),
    B(9, "timeout: each read gets its own timeout", BT + "browser/net.py",
      "return left if timeout is None else min(timeout, left)", "return left if timeout is None else timeout",
      "builtin_safety::test_a_read_waits_only_for_the_time_left"),
)


def scratch_path(file: str) -> str:
    """Where `file` of the repository is in the scratch copy."""
    return "mlx_oss/" + file if file.split("/", 1)[0] in ("convert", "tui") else file


def make_copy(dest: Path) -> None:
    """The tracked files and the untracked ones git does not ignore (new tests), with convert/ and tui/
    as real subpackages of mlx_oss/ (they install as mlx_oss.convert / mlx_oss.tui by a package-dir
    mapping), so that PYTHONPATH=dest imports every mlx_oss module from the copy. An existing `dest` is
    replaced only if it is an earlier copy (it holds MARKER) or empty."""
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        sys.exit(f"{dest} exists and is not a scratch copy of this script (no {MARKER}): choose another --dir")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / MARKER).touch()
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / scratch_path(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / scratch_path(name))


def environment(dest: Path) -> dict[str, str]:
    """The tests' environment: the scratch copy first on the path; COLUMNS wide enough for whole summary
    lines; the prebuilt tiny chat model when there is one (tests/conftest.py)."""
    env = dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1", COLUMNS="300")
    if "MLX_OSS_TEST_TINY_CHAT" not in env and (TINY_CHAT / "config.json").is_file():
        env["MLX_OSS_TEST_TINY_CHAT"] = str(TINY_CHAT)
    return env


def check_imports(dest: Path, env: dict[str, str]) -> None:
    """The scratch copy, not the working tree's editable install, is what the tests import."""
    code = "import mlx_oss, mlx_oss.convert as c, mlx_oss.tui as t; print(mlx_oss.__file__, c.__file__, t.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=dest, env=env, check=True, capture_output=True, text=True)
    files = out.stdout.split()
    print(f"imports: {' '.join(files)}")
    if not all(Path(f).resolve().is_relative_to(dest.resolve()) for f in files):
        sys.exit(f"the scratch copy's mlx_oss is not the one imported: {files}")


def pytest(dest: Path, env: dict[str, str], tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """-> (exit code, or None after `timeout` seconds; the output's tail)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        r = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # its partial output may be bytes even in text mode
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return None, out[-3000:] + f"\n(stopped after {timeout:g} s)"
    return r.returncode, (r.stdout + r.stderr)[-3000:]


def run_break(b: Break, dest: Path, env: dict[str, str], timeout: float) -> tuple[str, str]:
    """Apply `b` alone, run its tests, restore the file. -> (verdict, pytest's output tail)."""
    path = dest / scratch_path(b.file)
    original = path.read_text()
    if original.count(b.old) != 1:
        return "error", f"`old` occurs {original.count(b.old)} times in {b.file}"
    broken = original.replace(b.old, b.new)
    try:
        compile(broken, str(path), "exec")  # a break must change behaviour, not fail to import
    except SyntaxError as e:
        return "error", f"the break is not valid Python: {e}"
    path.write_text(broken)
    try:
        code, out = pytest(dest, env, b.tests, timeout)
    finally:
        path.write_text(original)
    return ("error" if code is None else {1: "caught", 0: "MISSED"}.get(code, "error")), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labels", nargs="*", help="only the breaks whose label contains one of these")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mlx-oss-breaks"), help="the scratch copy (replaced)")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="first run the tests on the unbroken copy, which must pass (default: on)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (then: error)")
    ap.add_argument("--list", action="store_true", help="print the breaks and exit")
    args = ap.parse_args(argv)
    chosen = [b for b in BREAKS if not args.labels or any(s in b.label for s in args.labels)]
    if not chosen:
        print(f"no break's label contains any of {args.labels} (--list shows them)", file=sys.stderr)
        return 2
    if args.list:
        for b in chosen:
            print(f"| {b.cls} | {b.label} | {b.file} | {' '.join(b.tests)} |")
        return 0
    start = time.monotonic()
    make_copy(args.dir)
    env = environment(args.dir)
    check_imports(args.dir, env)
    if args.baseline:
        tests = tuple(dict.fromkeys(t for b in chosen for t in b.tests))
        code, out = pytest(args.dir, env, tests, args.timeout)
        if code != 0:
            print(out)
            print(f"baseline: the unbroken copy fails (exit {code}): no break can be judged")
            return 1
        print(f"baseline: {len(tests)} tests pass unbroken ({time.monotonic() - start:.0f} s)")
    verdicts: dict[str, int] = {}
    for b in chosen:
        t0 = time.monotonic()
        verdict, out = run_break(b, args.dir, env, args.timeout)
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
        if verdict != "caught":
            print(out)
        failed = next((line[7:] for line in out.splitlines() if line.startswith("FAILED ")), "")  # the -ra summary
        took = time.monotonic() - t0
        print(f"| {b.cls} | {b.label} | {b.file} | {verdict} | {took:.0f} s | {failed[:200]} |", flush=True)
    summary = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
    print(f"{len(chosen)} breaks: {summary} in {time.monotonic() - start:.0f} s")
    return 0 if verdicts.get("caught", 0) == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
