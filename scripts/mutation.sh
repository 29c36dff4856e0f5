#!/usr/bin/env bash
# Mutation testing with mutmut 3, one core module at a time, each against the tests that cover it.
# Slow (minutes per module): run it by hand, not in CI.  See docs/TESTING.md.
#
#   scripts/mutation.sh                 # every module below
#   scripts/mutation.sh engine cache    # some of them
#   RESUME=1 scripts/mutation.sh engine # keep the verdicts so far, add the tests written since
#   MUTANTS='mlx_oss.chat.xǁChatǁ_round__mutmut_*' scripts/mutation.sh chat
#                                       # only these mutants (mutmut's names, globs): the functions a change touched
#
# Each module is mutated in a scratch copy of the repository (/tmp/mlx-oss-mutation/<module>), so
# the working tree is never touched; the summary line per module is "killed/total (survived,
# timeouts, no tests)".  `cd /tmp/mlx-oss-mutation/<module> && mutmut results` / `mutmut show NAME`
# list and show the survivors.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python}
WORK=${MUTATION_DIR:-/tmp/mlx-oss-mutation}
NICE=${NICE:-15}

# module -> "file(s) to mutate|tests that cover it"; a group of files shares one stats pass (minutes for
# the server tests) and its summary has a line per file
declare -A MODULES=(
  # engine: plus the batch, which drives its prefill chunk by chunk (`prefill_steps`, issue 28)
  [engine]="mlx_oss/engine.py|tests/test_engine.py tests/test_batch.py"
  # cache: plus the quantized caches (issue 30: codes, ring order, snapshots; the long fidelity case is ~30 s)
  [cache]="mlx_oss/nn/cache.py|tests/test_cache.py tests/test_kv_quant.py"
  [chat]="mlx_oss/chat.py|tests/test_chat.py tests/test_chat_history.py tests/test_unparsed.py tests/test_builtin_chat.py --deselect tests/test_builtin_chat.py::test_scripted_chat_searches_opens_finds_runs_code_and_cites --deselect tests/test_builtin_chat.py::test_refused_python_and_bad_browser_calls_are_results_and_the_chat_goes_on"
  [harmony_parser]="mlx_oss/harmony/parser.py|tests/test_harmony.py tests/test_harmony_properties.py tests/test_harmony_oracle.py"
  [harmony_render]="mlx_oss/harmony/render.py|tests/test_harmony.py tests/test_harmony_oracle.py"
  [cli_main]="mlx_oss/cli/main.py|tests/test_cli_main.py tests/test_cli_info.py tests/test_generate_cli.py"
  [cli_args]="mlx_oss/cli/args.py|tests/test_cli_args.py tests/test_tui_cli.py tests/test_generate_cli.py"
  [cli_generate]="mlx_oss/cli/generate.py|tests/test_generate_cli.py tests/test_unparsed.py"
  [tui_cli]="tui/cli.py|tests/test_tui_cli.py"
  # tui_session: test_tui_session.py is the fast one (each piece alone, ms per test); the app and real-engine
  # tests stay in for the behaviour over those pieces
  [tui_session]="tui/session.py|tests/test_tui_session.py tests/test_tui_cli.py tests/test_tui_engine.py"
  # convert: plus the one test that converts an mlx-lm folder (its per-module quantization is carried over)
  [convert]="convert/convert.py|tests/test_convert.py tests/test_mlx_lm_interop.py::test_convert_mlx_lm_folder_to_ours_keeps_per_module_quantization"
  # the chat database and the keeper: their own fast tests (a real SQLite file each, no model); the app's
  # chat-list tests (test_tui_chats.py) cover the same calls through the TUI, at seconds per test
  [tui_storage]="tui/storage.py|tests/test_chat_store.py tests/test_storage_search.py tests/test_keeper.py"
  [tui_keeper]="tui/keeper.py|tests/test_keeper.py"
  # the reply constraint and the grammars (issue 27): the processor over random logits (ms per test), then
  # Chat on the random-weight model, where only the constraint makes a reply valid
  [constraint]="mlx_oss/constraint.py|tests/test_constraint.py tests/test_structured.py"
  [grammar]="mlx_oss/grammar.py|tests/test_structured.py tests/test_constraint.py"
  # watchdog: real sockets, a second process and timeouts of 1-2 s (a mutant that never reports a hung
  # peer fails within 3x the limit); the multi-process group tests of test_distributed.py stay out
  [watchdog]="mlx_oss/distributed/watchdog.py|tests/test_watchdog.py"
  # the server (issue 25/31): each module against the server tests that reach it (a real uvicorn per test module)
  [server_guard]="mlx_oss/server/guard.py|tests/test_server_security.py"
  [server_request_body]="mlx_oss/server/request_body.py|tests/test_server_security.py tests/test_server.py tests/test_server_fuzz.py"
  [server_app]="mlx_oss/server/app.py|tests/test_server.py tests/test_server_features.py tests/test_server_security.py tests/test_server_settings.py tests/test_server_builtin.py"
  [server_responses]="mlx_oss/server/responses.py|tests/test_server.py tests/test_server_security.py tests/test_server_builtin.py tests/test_server_features.py"
  [server_chat]="mlx_oss/server/chat_completions.py|tests/test_server.py tests/test_server_features.py tests/test_server_security.py"
  [server_conversation]="mlx_oss/server/conversation.py|tests/test_server.py tests/test_server_features.py tests/test_server_security.py"
  [server_cli]="mlx_oss/server/cli.py|tests/test_server_cli.py tests/test_server_security.py tests/test_server_cli_flags.py"
  [server_access_log]="mlx_oss/server/access_log.py|tests/test_server_access_log.py"
  # the rest of the server (issue 31), in two groups over the server tests
  [server_core]="mlx_oss/server/cache_pool.py mlx_oss/server/worker.py mlx_oss/server/generation.py mlx_oss/server/token_output.py mlx_oss/server/sse.py mlx_oss/server/errors.py mlx_oss/server/settings.py mlx_oss/server/backend.py|tests/test_cache_pool.py tests/test_cache_pool_branches.py tests/test_server.py tests/test_server_features.py tests/test_server_paths.py tests/test_server_settings.py tests/test_server_security.py tests/test_server_builtin.py tests/test_readme_server.py tests/test_token_output.py tests/test_server_errors.py tests/test_server_sse.py tests/test_worker.py tests/test_stop_matcher.py tests/test_server_batch.py tests/test_batch.py tests/test_server_messages.py"
  [server_api]="mlx_oss/server/conversation.py mlx_oss/server/tools.py mlx_oss/server/builtin.py|tests/test_server_conversation.py tests/test_server_tools.py tests/test_cache_pool_branches.py tests/test_server.py tests/test_server_features.py tests/test_server_paths.py tests/test_server_settings.py tests/test_server_security.py tests/test_server_builtin.py tests/test_server_sessions.py tests/test_server_responses_clients.py"
  # the routes (issues 27 and 31): the two APIs' request and response shapes, the app and the serve command
  [server_routes]="mlx_oss/server/app.py mlx_oss/server/responses.py mlx_oss/server/chat_completions.py mlx_oss/server/messages.py mlx_oss/server/cli.py|tests/test_server_messages.py tests/test_responses.py tests/test_chat_completions.py tests/test_server_cli.py tests/test_server_cli_flags.py tests/test_server_errors.py tests/test_server_sse.py tests/test_server.py tests/test_server_features.py tests/test_server_paths.py tests/test_server_settings.py tests/test_server_security.py tests/test_server_structured.py tests/test_server_batch.py tests/test_server_kv_quant.py tests/test_server_max_batch.py tests/test_readme_server.py"
  # the three APIs' request and response shapes against their own fast tests (seconds a mutant, where the
  # routes' group runs the server tests): its survivors are then re-run against server_routes' tests
  [server_shapes]="mlx_oss/server/responses.py mlx_oss/server/chat_completions.py mlx_oss/server/messages.py|tests/test_responses.py tests/test_chat_completions.py tests/test_server_messages.py tests/test_server_errors.py tests/test_server_sse.py"
  # the request core (the API-independent request, tools, built-in sessions) against its fast tests; its
  # survivors are then re-run against server_api's tests
  [server_request]="mlx_oss/server/conversation.py mlx_oss/server/tools.py mlx_oss/server/builtin.py|tests/test_server_conversation.py tests/test_server_tools.py tests/test_server_sessions.py tests/test_responses.py tests/test_chat_completions.py tests/test_server_messages.py"
  # one request's generation logic driven by scripted tokens (no model), and the server's parts that have
  # their own fast tests; their survivors are then re-run against server_core's tests
  [server_generation]="mlx_oss/server/generation.py|tests/test_generation.py tests/test_stop_matcher.py tests/test_token_output.py tests/test_generation_drivers.py"
  [server_parts]="mlx_oss/server/cache_pool.py mlx_oss/server/worker.py mlx_oss/server/token_output.py mlx_oss/server/sse.py mlx_oss/server/errors.py mlx_oss/server/backend.py|tests/test_cache_pool.py tests/test_cache_pool_branches.py tests/test_token_output.py tests/test_server_errors.py tests/test_server_sse.py tests/test_worker.py tests/test_backend.py"
  # batched decode (issue 28): exact per sequence against solo runs
  [batch]="mlx_oss/batch.py|tests/test_batch.py tests/test_server_batch.py"
  # the built-in tools (issues 25 and 31), one group: a local web server, a real kernel per python test
  [builtin]="mlx_oss/builtin/registry.py mlx_oss/builtin/browser/tool.py mlx_oss/builtin/browser/page.py mlx_oss/builtin/browser/fetch.py mlx_oss/builtin/browser/net.py mlx_oss/builtin/browser/html.py mlx_oss/builtin/browser/search.py mlx_oss/builtin/python/tool.py mlx_oss/builtin/python/kernel.py mlx_oss/builtin/python/docker.py|tests/test_builtin_registry.py tests/test_builtin_search.py tests/test_builtin_safety.py tests/test_builtin_browser.py tests/test_builtin_python.py tests/test_builtin_page_store.py tests/test_builtin_chat.py tests/test_server_builtin.py"
  # the browser and the registry against their own fast tests (a local web server; no kernel, no model): the
  # `builtin` group's web half at seconds a mutant
  [builtin_web]="mlx_oss/builtin/registry.py mlx_oss/builtin/browser/tool.py mlx_oss/builtin/browser/page.py mlx_oss/builtin/browser/fetch.py mlx_oss/builtin/browser/net.py mlx_oss/builtin/browser/html.py mlx_oss/builtin/browser/search.py|tests/test_builtin_registry.py tests/test_builtin_search.py tests/test_builtin_safety.py tests/test_builtin_browser.py tests/test_builtin_page_store.py"
  # the two-Mac group but its watchdog (above): the in-process tests (ranks as threads over an in-memory
  # mx.distributed, what mutmut sees), and the ranks the slow tests start (the script's PYTHONPATH puts the
  # mutated package first there too)
  [distributed]="mlx_oss/distributed/plan.py mlx_oss/distributed/hosts.py mlx_oss/distributed/layers.py mlx_oss/distributed/load.py mlx_oss/distributed/mirror.py mlx_oss/distributed/session.py mlx_oss/distributed/launch.py mlx_oss/distributed/cli.py mlx_oss/distributed/engine.py|tests/test_distributed_inprocess.py tests/test_distributed.py"
  # what may be removed or replaced, and the config values (issue 25)
  [safe_paths]="convert/safe_paths.py|tests/test_safe_paths.py"
  [config]="mlx_oss/config.py|tests/test_config_validation.py tests/test_convert.py tests/test_kv_quant.py"
  # what fits in memory (issues 30 and 28): `mlx-oss info`'s arithmetic and `serve --max-batch auto`
  [info]="mlx_oss/info.py|tests/test_info.py tests/test_cli_info.py tests/test_server_max_batch.py"
  # the sampler (issue 28: the Gumbel noise drawn by numpy): distributions, seeds, filters, and the batch's
  # per-sequence draws against solo runs
  [sampling]="mlx_oss/sampling.py|tests/test_engine_sampling.py tests/test_batch.py tests/test_constraint.py"
  # the benchmark's measuring (issue 28's `bench --batch`)
  [bench_batch]="mlx_oss/bench/batch.py|tests/test_bench_batch.py"
)
ORDER=(engine cache chat harmony_parser harmony_render cli_args cli_generate cli_main tui_session tui_cli convert)
[ $# -gt 0 ] && ORDER=("$@")

"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut is missing: pip install -e '.[mutation]'" >&2; exit 2; }
MUTMUT="$(dirname "$(command -v "$PY")")/mutmut"

# The synthetic chat model every mutant's session would otherwise write and convert again (seconds each):
# built once, read through MLX_OSS_TEST_TINY_CHAT (tests/conftest.py). Not for convert, whose mutants
# must run in the conversion.
TINY_CHAT=$WORK/tiny-chat
if [ ! -f "$TINY_CHAT/converted/config.json" ]; then
  rm -rf "$TINY_CHAT"
  "$PY" - "$TINY_CHAT" <<'PYEOF'
import sys
from pathlib import Path
from mlx_oss.convert.convert import convert_checkpoint
from mlx_oss.convert.synthetic import preset, write_checkpoint
root = Path(sys.argv[1])
convert_checkpoint(write_checkpoint(root / "src", preset("tiny-chat"), "hf", seed=0), root / "converted", progress=False)
PYEOF
fi

summary=()
for name in "${ORDER[@]}"; do
  spec=${MODULES[$name]:?unknown module $name (choose from ${ORDER[*]})}
  file=${spec%%|*}; tests=${spec#*|}
  dir=$WORK/$name
  if [ -n "${RESUME:-}" ] && [ -d "$dir/mutants" ]; then
    # keep the verdicts so far; bring in the sources and tests as they are now: mutmut mutates the
    # file again and re-runs only the mutants of functions that changed, and runs its stats for new tests
    rm -rf "$dir/tests" "$dir/mutants/tests"
    git ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$dir")
    # the whole folder (test files git does not track yet too), but not the clients' node_modules
    (cd "$ROOT" && tar -c --exclude=node_modules tests) | (cd "$dir/mutants" && tar -x)
  else
    rm -rf "$dir"; mkdir -p "$dir"
    git ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$dir")
  fi
  # convert/ and tui/ install as mlx_oss.convert / mlx_oss.tui (a package-dir mapping in pyproject.toml),
  # which mutmut's copy of mlx_oss/ would not reproduce.  In the scratch copy they become the real
  # subpackages mlx_oss/convert and mlx_oss/tui, so mutants/mlx_oss is the whole package and every import
  # of mlx_oss.* (mutated or not) comes from it, never from the working tree's editable install.
  for sub in convert tui; do
    if [ -d "$dir/$sub" ]; then mkdir -p "$dir/mlx_oss/$sub"; cp -r "$dir/$sub/." "$dir/mlx_oss/$sub/"; rm -rf "$dir/$sub"; fi
  done
  files=""  # a group: several files, one stats pass; convert/ and tui/ live under mlx_oss/ here
  for f in $file; do case $f in convert/*|tui/*) f=mlx_oss/$f;; esac; files="$files $f"; done
  files=${files# }; file=$files
  src_dirs="mlx_oss"
  {
    echo "[mutmut]"
    echo "source_paths = $src_dirs"
    echo "only_mutate = $(echo $files | tr ' ' '\n' | sed 's/^/    /' | sed '1s/^    //')"
    echo "also_copy = tests/"
    echo "    scripts/"  # scripts/mutation_order.py
    echo "    README.md"  # tests/test_readme_*.py run its examples
    echo "    docs/"
    echo "    pyproject.toml"
    echo "pytest_add_cli_args = -p no:cacheprovider -q -x -p scripts.mutation_order"  # fastest tests first
    echo "process_isolation = forkserver"  # MLX is not fork-safe once it has run
    # the limit is CPU seconds: (the tests' recorded time + constant) x multiplier x 2; a mutant that
    # loops forever (a broken `break` in the decode loop) is stopped after a minute or two, not half an hour
    echo "timeout_multiplier = 3"
    echo "timeout_constant = 10"
    echo "pytest_add_cli_args_test_selection = $(echo $tests | tr ' ' '\n' | sed 's/^/    /' | sed '1s/^    //')"
  } > "$dir/setup.cfg"
  echo "== $name: $file against $tests"
  case $file in *mlx_oss/convert/*) prebuilt=;; *) prebuilt=$TINY_CHAT/converted;; esac
  # PYTHONPATH: a process the tests start (a rank, `mlx-oss serve`) imports the mutated package too, and
  # inherits the mutant's name from the environment
  run_mutmut() {
    (cd "$dir" && PYTHONPATH="$dir/mutants${PYTHONPATH:+:$PYTHONPATH}" MLX_OSS_TEST_TINY_CHAT=$prebuilt nice -n "$NICE" "$MUTMUT" run --max-children "${JOBS:-1}" ${MUTANTS:-} > mutmut.log 2>&1) || true
  }
  run_mutmut
  # mutmut 3.8's first stats pass right after generating the mutants sometimes maps no test to any of them
  # ("could not find any test case"); the same command again, on the mutants it just wrote, maps them
  if grep -q "could not find any test case" "$dir/mutmut.log"; then run_mutmut; fi
  (cd "$dir" && "$MUTMUT" results --all true > results.txt 2>&1) || true
  line=$("$PY" - "$dir/results.txt" "$name" $files <<'PYEOF'
import collections, sys
results, name, files = sys.argv[1], sys.argv[2], sys.argv[3:]
modules = {f[:-3].replace("/", "."): f for f in files}  # mutmut names start with the dotted module
counts = {f: collections.Counter() for f in files}
for l in open(results):
    if ":" in l and "__mutmut_" in l:
        mutant, verdict = l.rsplit(":", 1)
        module = max((m for m in modules if mutant.strip().startswith(m + ".")), key=len, default=None)
        if module:
            counts[modules[module]][verdict.strip()] += 1
for f, c in counts.items():
    total = sum(c.values()); killed = c.get("killed", 0)
    pct = 100 * killed / total if total else 0.0
    rest = ", ".join(f"{v} {k}" for k, v in sorted(c.items()) if k != "killed")
    label = name if len(files) == 1 else f"{name}:{f.rsplit('/', 1)[-1]}"
    print(f"{label:16s} killed {killed}/{total} ({pct:.1f}%)" + (f"  [{rest}]" if rest else ""))
PYEOF
)
  echo "$line"; summary+=("$line")
done
echo; echo "== summary (equivalent mutants: docs/TESTING.md)"; printf '%s\n' "${summary[@]}"
