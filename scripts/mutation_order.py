"""pytest plugin used by scripts/mutation.sh: run a mutant's tests fastest first, tokenizer preloaded.

mutmut runs the tests that reached the mutated function with `-x`, so the first failure ends the run;
putting the quickest tests first (mutmut's recorded durations, mutants/mutmut-stats.json) makes a
killed mutant cheap. The o200k_harmony tokenizer of the prebuilt tiny chat model is loaded when the
plugin is (in mutmut's fork server, before any mutant forks), so every mutant finds it in
`load_tokenizer`'s cache instead of reading it again (about a second each). Outside a mutation run
(no stats file, no MLX_OSS_TEST_TINY_CHAT) it changes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def pytest_configure(config) -> None:
    folder = os.environ.get("MLX_OSS_TEST_TINY_CHAT")
    if folder:
        from mlx_oss.tokenizer import load_tokenizer  # tiktoken only: no MLX work before the fork

        try:  # what mlx_oss.load does
            load_tokenizer(folder)
        except ValueError:
            load_tokenizer(None)


def pytest_collection_modifyitems(session, config, items) -> None:
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, KeyError, ValueError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
