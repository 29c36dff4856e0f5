"""`mlx-oss serve --max-batch auto` (the default, issue 28): as many sequences at the full context as fit
the memory beside the weights and the prompt-cache pool's budget, 1 to 8; with --hosts, 1."""

from __future__ import annotations

import argparse

import pytest

from mlx_oss.cli import main as cli_main
from mlx_oss.info import AUTO_BATCH_CAP, auto_batch_size, describe
from mlx_oss.server.cli import check_max_batch, resolve_max_batch

G = 2**30


@pytest.mark.parametrize("limit, weights, cache, per, want", [
    (48 * G, 13 * G, 8 * G, 3 * G, 8),           # 64 GB Mac, 20b at 131k tokens (3.2 GiB each): capped at 8
    (21 * G, 13 * G, 8 * G, 3 * G, 1),           # 32 GB Mac: nothing left beside weights and pool: one at a time
    (27 * G, 13 * G, 8 * G, 3 * G // 4, 8),      # 36 GB Mac, --max-context 32768: 6 GiB / 0.8 GiB
    (27 * G, 13 * G, 8 * G, 3 * G, 2),           # ... at 131k: 6 GiB / 3 GiB
    (27 * G, 13 * G, 8 * G, 3 * G + 1, 1),       # one byte over two sequences
    (16 * G, 13 * G, 8 * G, 1 * G, 1),           # more promised than there is: still 1, never 0 or less
])  # fmt: skip
def test_auto_batch_size_rule(limit, weights, cache, per, want):
    assert auto_batch_size(limit, weights, cache, per) == want
    assert auto_batch_size(10**15, 0, 0, 1) == AUTO_BATCH_CAP == 8
    assert auto_batch_size(105, 100, 0, 1) == auto_batch_size(105, 100, 0, 0) == 5  # no KV cache: 1 byte each


def _args(*argv: str) -> argparse.Namespace:
    return cli_main.build_parser().parse_args(["serve", "-m", "x", *argv])


def test_resolve_reads_the_checkpoint_and_says_why(tiny_chat_hd64_converted):
    """The tiny model's numbers through the real formula (`describe`): the KV cache of one sequence at
    the context, the weights at the CPU backend's float32; the line on stderr names each term."""
    info = describe(tiny_chat_hd64_converted)
    per = info.kv_bytes(4096, "float32")
    weights = info.weight_bytes_at("float32")
    said: list[str] = []
    a = _args("--cache-bytes", "1M", "--dtype", "float32")
    limit = weights + (1 << 20) + 3 * per + per // 2  # room for 3.5 sequences
    assert resolve_max_batch(a, tiny_chat_hd64_converted, 4096, said.append, limit=limit) == 3
    assert len(said) == 1 and said[0].startswith("mlx-oss serve: --max-batch auto: 3 (") and "4096 tokens" in said[0]
    a8 = _args("--cache-bytes", "1M", "--dtype", "float32", "--kv-bits", "8")
    per8 = info.kv_bytes(4096, "float32", 8, 64)
    assert per8 < per and resolve_max_batch(a8, tiny_chat_hd64_converted, 4096, said.append, limit=limit) == min(8, (limit - weights - (1 << 20)) // per8)
    assert resolve_max_batch(_args("--max-batch", "2"), tiny_chat_hd64_converted, 4096, said.append, limit=1) == 2  # a number stays


def test_auto_is_one_in_a_group_and_a_number_above_one_is_refused():
    a = _args("--hosts", "h.json")
    check_max_batch(a)
    assert a.max_batch == 1
    a = _args()
    check_max_batch(a, group=True)
    assert a.max_batch == 1
    a = _args()
    check_max_batch(a)
    assert a.max_batch == "auto"  # alone: sized after the model loads


def test_the_memory_limit_is_metals_working_set_or_the_ram():
    import os

    from mlx_oss.backend import device

    assert device.memory_limit({"max_recommended_working_set_size": 48 * G}) == 48 * G
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert device.memory_limit({"memory_size": 64 * G}) == ram  # no working set known: the RAM

