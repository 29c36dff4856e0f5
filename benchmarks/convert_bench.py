"""Conversion benchmark: mlx-oss convert vs mlx-lm's conversion path, same input, same run.

    python benchmarks/convert_bench.py [--preset 20b-slice] [--data /tmp/mlx-oss-bench]

Generates the synthetic checkpoint once (HF layout, real gpt-oss-20b layer dimensions, 4 layers), then
converts it with each engine in its own child process and reports wall time, input GB/s and the
child's peak RSS (from wait4, so nothing else in this process is counted). mlx-lm's path is what
`mlx_lm.convert` runs minus the tokenizer copy: `load_model(lazy=True)` (its gpt_oss `sanitize`
splits gate/up) then `save_model`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OURS = """
import sys
from mlx_oss.convert.convert import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], progress=False)
"""

MLX_LM = """
import sys
from pathlib import Path
from mlx_lm.utils import load_model, save_model, save_config
model, config = load_model(Path(sys.argv[1]), lazy=True)
save_model(sys.argv[2], model, donate_model=True)
save_config(config, config_path=Path(sys.argv[2]) / "config.json")
"""


def _run(code: str, src: Path, dst: Path) -> tuple[float, int]:
    """Run `code` in a child; -> (wall seconds, peak RSS bytes of that child)."""
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst)], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed with status {status}")
    return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="20b-slice")
    ap.add_argument("--data", default="/tmp/mlx-oss-bench", help="where the synthetic checkpoint is kept")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    src = Path(a.data) / a.preset
    if not (src / "model.safetensors.index.json").is_file():
        t0 = time.perf_counter()
        write_checkpoint(src, preset(a.preset), "hf", seed=0)
        print(f"generated {src} in {time.perf_counter() - t0:.0f} s")
    in_bytes = _dir_bytes(src)
    print(f"input: {a.preset}, {in_bytes / 1e9:.2f} GB (HF layout)\n")
    rows = []
    for name, code in (("mlx-oss convert", OURS), ("mlx-lm load+save", MLX_LM)):
        for _ in range(a.repeat):
            dst = Path(a.data) / f"out-{name.split()[0]}"
            wall, rss = _run(code, src, dst)
            rows.append((name, wall, in_bytes / wall / 1e9, rss / 1e9, _dir_bytes(dst) / 1e9))
            shutil.rmtree(dst, ignore_errors=True)
    print(f"{'engine':<18}{'wall s':>8}{'GB/s':>8}{'peak RSS GB':>13}{'output GB':>11}")
    for r in rows:
        print(f"{r[0]:<18}{r[1]:>8.1f}{r[2]:>8.2f}{r[3]:>13.2f}{r[4]:>11.2f}")
    ours, theirs = rows[0], rows[-1]
    print(f"\nmlx-oss vs mlx-lm: {theirs[1] / ours[1]:.2f}x faster, peak RSS {ours[3] / theirs[3]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
