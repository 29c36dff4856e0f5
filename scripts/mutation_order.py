"""pytest plugin used by scripts/mutation.sh: run a mutant's tests fastest first.

mutmut runs the tests that reached the mutated function with `-x`, so the first failure ends the run;
putting the quickest tests first (mutmut's recorded durations, mutants/mutmut-stats.json) makes a
killed mutant cheap. Outside a mutation run (no stats file) it changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items) -> None:
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, KeyError, ValueError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
