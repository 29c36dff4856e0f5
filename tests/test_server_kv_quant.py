"""`mlx-oss serve --kv-bits` (issue 30): the prompt-cache pool is sized in the bytes the states really
take, so the same `--cache-bytes` keeps proportionally more conversations warm with a quantized cache,
and the ones it keeps are reused token for token.

A real uvicorn on 127.0.0.1 around tiny-chat at head_dim 64 (tests/server_harness.py; MLX groups a
quantized row by 32, 64 or 128 values), float32 compute, replies scripted."""

from __future__ import annotations

import math

import pytest

import mlx_oss
from mlx_oss.config import slot_bytes
from mlx_oss.nn.cache import KVCache, QuantizedKVCache, RotatingKVCache
from server_harness import MODEL_ID, Scripts, post_json, reply, running_server

ARGS_LAYER_TYPES = ("sliding_attention", "full_attention") * 2  # tiny-chat's
N = 10  # conversations, one request each; the last stays in the engine, the others go to the pool


@pytest.fixture(scope="module")
def folder(tiny_chat_hd64_converted):
    return tiny_chat_hd64_converted


def _load(folder, bits):
    return mlx_oss.load(folder, dtype="float32", kv_bits=bits)


def _opening(i: int) -> list[dict]:
    return [{"role": "user", "content": f"conversation {chr(65 + i)} opens with its own words"}]


def _answer(i: int) -> str:
    return f"reply {chr(65 + i)}"


def _converse(url, tok, scripts, i: int) -> dict:
    scripts.push(reply(tok, final=_answer(i)))
    r = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": _opening(i)})
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def _again(url, tok, scripts, i: int) -> dict:
    """Conversation i's second request (its first reply sent back, one more user message)."""
    scripts.push(reply(tok, final="again"))
    msgs = _opening(i) + [{"role": "assistant", "content": _answer(i)}, {"role": "user", "content": "and then?"}]
    r = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": msgs})
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def _cached(u: dict) -> int:
    return u["prompt_tokens_details"]["cached_tokens"]


def _full_layers_bytes(entry) -> int:
    return sum(c.nbytes for c, t in zip(entry.state.cache, ARGS_LAYER_TYPES) if t == "full_attention")


def _state_bytes(folder) -> tuple[int, int]:
    """Bytes of one conversation's unquantized state in the pool (room for all of them), and of its
    full-attention layers' caches (what `--kv-bits` quantizes)."""
    model, tok = _load(folder, None)
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, cache_bytes=1 << 40) as (url, app):
        for i in range(3):
            _converse(url, tok, scripts, i)
        sizes = {(e.nbytes, _full_layers_bytes(e)) for e in app.state.backend.pool._entries}
    assert len(sizes) == 1
    return sizes.pop()


def test_the_same_cache_bytes_keep_more_conversations_quantized_and_reuse_them(folder):
    plain, plain_full = _state_bytes(folder)
    budget = int(2.5 * plain)
    args = mlx_oss.load(folder, dtype="float32")[0].args
    per_slot = {b: slot_bytes(args.num_key_value_heads, args.head_dim, 4, b, 64) for b in (None, 8, 4)}
    for bits, expected_ratio in ((None, 1.0), (8, 288 / 1024), (4, 160 / 1024)):
        model, tok = _load(folder, bits)
        scripts = Scripts()
        with running_server(model, tok, scripts, max_context=1024, cache_bytes=budget) as (url, app):
            engine = app.state.backend.engine
            kinds = [type(c) for c in engine.cache]  # the window stays in full precision
            assert kinds == [RotatingKVCache, KVCache if bits is None else QuantizedKVCache] * 2
            usages = [_converse(url, tok, scripts, i) for i in range(N)]
            pool = app.state.backend.pool
            sizes = {e.nbytes for e in pool._entries}
            assert len(sizes) == 1  # alike conversations, the same slots allocated
            each = sizes.pop()
            # the pool counts the bytes the states take: the full layers at the formula's ratio (float32
            # scales and biases), the sliding window's fixed slots in full precision
            assert per_slot[bits] / per_slot[None] == expected_ratio
            assert each == plain - plain_full + plain_full * expected_ratio
            kept = len(pool)
            assert kept == min(N - 1, math.floor(budget / each)) and pool.nbytes <= budget
            assert kept == {None: 2, 8: 6, 4: 9}[bits]  # 2.5 plain states' bytes: 2, 2.5 / 0.36, all
            # the least recently used went first; a kept one is reused whole, an evicted one only in
            # what every conversation shares (the system message)
            newest_evicted, oldest_kept = N - 2 - kept, N - 1 - kept
            u = _again(url, tok, scripts, oldest_kept)
            assert _cached(u) == usages[oldest_kept]["prompt_tokens"] + usages[oldest_kept]["completion_tokens"] - 1
            if newest_evicted >= 0:
                u = _again(url, tok, scripts, newest_evicted)
                assert 0 < _cached(u) < usages[newest_evicted]["prompt_tokens"]
