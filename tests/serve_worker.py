"""`mlx-oss serve ARGS` as the CLI runs it, plus the test-only sampling hook: every reply starts with a
forced harmony header (`<|channel|>final<|message|>`, `ScriptedTokens`), then the random-weight model
writes freely (greedy), so the answer text is the model's own. argv: the arguments after `mlx-oss`.
With --hosts the other ranks are the real `mlx-oss serve` (launch.py starts them), which need no hook:
rank 0 samples."""

from __future__ import annotations

import sys

from mlx_oss.cli.main import build_parser
from mlx_oss.sampling import ScriptedTokens
from mlx_oss.server.cli import run
from mlx_oss.tokenizer import CHANNEL, MESSAGE, load_tokenizer


def main() -> int:
    a = build_parser().parse_args(sys.argv[1:])
    header = [CHANNEL, *load_tokenizer(None).encode_ordinary("final"), MESSAGE]
    return run(a, processors=lambda body: [ScriptedTokens(header)])


if __name__ == "__main__":
    raise SystemExit(main())
