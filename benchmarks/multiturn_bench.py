#!/usr/bin/env python
"""Time to first token over a 10-turn chat: mlx-oss's cross-turn cache reuse vs mlx-lm's prompt cache.

    python -m mlx_oss.convert.synthetic /tmp/bench/20b-slice --preset 20b-slice --layout hf    # once
    mlx-oss convert /tmp/bench/20b-slice /tmp/bench/20b-slice-mlx                      # once
    python benchmarks/multiturn_bench.py --ours /tmp/bench/20b-slice-mlx --peer /tmp/bench/20b-slice

Every turn has the same size: a user message of --user tokens, a reply of --analysis reasoning tokens
and --answer answer tokens. Random weights never write harmony, so replies are forced token by token
(the model still runs every forward pass); both sides get identical prompts and replies, rendered by
mlx-oss's harmony renderer (token-exact with openai-harmony), with earlier turns' reasoning dropped as
OpenAI prescribes.

- mlx-oss: `Chat.send()`; TTFT = from the call to the first sampled token.
- mlx-lm: its server's chat path: `LRUPromptCache.fetch_nearest_cache` (common prefix, trim when the
  cache allows it), `generate_step` on the rest, `insert_cache` of prompt + reply. TTFT = from the
  cache lookup to the first token of `generate_step`.

The proof the issue asks for: TTFT of turn 10 within 1.5x of turn 2 (printed as PASS/FAIL).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import mlx.core as mx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_oss import tokenizer as tk  # noqa: E402
from mlx_oss.bench.multiturn import text_of as bench_text_of  # noqa: E402
from mlx_oss.harmony import Message, SystemContent, prune_analysis, render_conversation_for_completion  # noqa: E402

def text_of(enc, n: int, seed: int) -> str:
    """Plain text that encodes to exactly n tokens (the bench module's generator, checked here)."""
    text = bench_text_of(enc, n, seed)
    assert len(enc.encode_ordinary(text)) == n, (n, text)
    return text


def conversation(enc, turns: int, u: int, a: int, f: int) -> list[tuple[str, str, str]]:
    return [(text_of(enc, u, 100 * k), text_of(enc, a, 100 * k + 31), text_of(enc, f, 100 * k + 57)) for k in range(turns)]


def reply_tokens(enc, analysis: str, final: str) -> list[int]:
    return enc.encode(f"<|channel|>analysis<|message|>{analysis}<|end|><|start|>assistant<|channel|>final<|message|>"
                      f"{final}<|return|>", allowed_special="all")  # fmt: skip


def prompt_of(history: list[Message], effort: str) -> list[int]:
    conv = [Message.system(SystemContent(reasoning_effort=effort))] + prune_analysis(history)
    return render_conversation_for_completion(conv)


def progress(who: str, rows: list[dict]) -> None:
    r = rows[-1]
    print(f"  {who} turn {len(rows)}: prompt {r['prompt']}, prefilled {r['prefilled']}, ttft {r['ttft']:.3f} s",
          file=sys.stderr, flush=True)  # fmt: skip


def run_ours(path: str, dtype: str, turns) -> list[dict]:
    import mlx_oss
    from mlx_oss.sampling import SamplingConfig, ScriptedTokens

    model, enc = mlx_oss.load(path, dtype)
    warm = mlx_oss.Chat(model, enc, reasoning_effort="low", max_tokens=4)
    warm.ask(turns[0][0])  # compile / first-touch outside the measurement
    del warm
    chat = mlx_oss.Chat(model, enc, reasoning_effort="low")
    rows = []
    for user, analysis, final in turns:
        script = reply_tokens(enc, analysis, final)
        chat.sampling = SamplingConfig(logits_processors=(ScriptedTokens(script),))
        expected_prompt = prompt_of(chat.history + [Message.user(user)], "low")
        t0 = time.perf_counter()
        stream = chat.send(user)
        t_send = time.perf_counter() - t0
        done = [ev for ev in stream][-1]
        s = done.stats
        assert done.reply.answer == final and s.stop_reason == "stop", (done.reply.answer[:40], s.stop_reason)
        assert s.prompt_tokens == len(expected_prompt)
        rows.append(dict(prompt=s.prompt_tokens, prefilled=s.prefilled_tokens, ttft=t_send + s.ttft_s,
                         decode_tps=s.decode_tps))  # fmt: skip
        progress("mlx-oss", rows)
    del chat, model
    return rows


def run_mlx_lm(path: str, dtype: str, enc, turns) -> list[dict]:
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path))
    model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())

    def forced(script):
        it = iter(script)

        def proc(tokens, logits):  # the token depends on the logits, so MLX must run the forward pass
            t = next(it, tk.RETURN)
            zero = mx.minimum(mx.abs(mx.max(logits, axis=-1, keepdims=True)), 0.0)
            return mx.where(mx.arange(logits.shape[-1]) == t, zero, -mx.inf).astype(logits.dtype)

        return proc

    def greedy(logprobs):
        return mx.argmax(logprobs, axis=-1)

    def turn(lru, prompt, script):
        t0 = time.perf_counter()
        cache, rest = lru.fetch_nearest_cache("m", prompt)
        if cache is None:
            cache = make_prompt_cache(model)
        gen = generate_step(mx.array(rest), model, max_tokens=len(script), sampler=greedy,
                            logits_processors=[forced(script)], prompt_cache=cache)  # fmt: skip
        out = [int(next(gen)[0])]
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        out += [int(t) for t, _ in gen]
        tps = (len(out) - 1) / (time.perf_counter() - t1)
        assert out == script, "mlx-lm did not follow the forced reply"
        lru.insert_cache("m", prompt + out, cache)
        return len(rest), ttft, tps

    turn(LRUPromptCache(), prompt_of([Message.user(turns[0][0])], "low"), reply_tokens(enc, "a", "b"))  # warm-up
    lru = LRUPromptCache()
    history: list[Message] = []
    rows = []
    for user, analysis, final in turns:
        history.append(Message.user(user))
        prompt = prompt_of(history, "low")
        prefilled, ttft, tps = turn(lru, prompt, reply_tokens(enc, analysis, final))
        history += [Message.assistant(analysis, channel="analysis"), Message.assistant(final)]
        rows.append(dict(prompt=len(prompt), prefilled=prefilled, ttft=ttft, decode_tps=tps))
        progress("mlx-lm", rows)
    del model
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", default="/tmp/bench/20b-slice-mlx", help="converted mlx-oss folder")
    ap.add_argument("--peer", default="/tmp/bench/20b-slice", help="the same checkpoint in HF layout (for mlx-lm)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--user", type=int, default=32, help="user message tokens per turn")
    ap.add_argument("--analysis", type=int, default=16, help="reasoning tokens per reply")
    ap.add_argument("--answer", type=int, default=8, help="answer tokens per reply")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on Metal, float32 on the CPU backend (where bf16 matmuls are ~10x slower)")
    ap.add_argument("--skip-peer", action="store_true")
    a = ap.parse_args(argv)

    if a.dtype is None:
        from mlx_oss.backend.device import default_dtype

        a.dtype = default_dtype()
    enc = tk.load_tokenizer()
    turns = conversation(enc, a.turns, a.user, a.analysis, a.answer)
    print(f"device {mx.default_device()}, {a.dtype}; {a.turns} turns of {a.user} user + {a.analysis} reasoning + "
          f"{a.answer} answer tokens; model {a.ours}", flush=True)  # fmt: skip
    ours = run_ours(a.ours, a.dtype, turns)
    gc.collect()
    mx.clear_cache()
    peer = None if a.skip_peer else run_mlx_lm(a.peer, a.dtype, enc, turns)

    print("\n| turn | prompt tokens | mlx-oss prefilled | mlx-oss TTFT (s) | mlx-lm prefilled | mlx-lm TTFT (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, o in enumerate(ours):
        p = peer[i] if peer else None
        print(f"| {i + 1} | {o['prompt']} | {o['prefilled']} | {o['ttft']:.3f} | "
              f"{p['prefilled'] if p else '-'} | {p['ttft']:.3f} |" if p else
              f"| {i + 1} | {o['prompt']} | {o['prefilled']} | {o['ttft']:.3f} | - | - |")  # fmt: skip
    ok = True
    if a.turns >= 10:
        r = ours[9]["ttft"] / ours[1]["ttft"]
        ok = r <= 1.5
        line = f"\nTTFT turn 10 / turn 2: mlx-oss {r:.2f}x"
        if peer:
            line += f", mlx-lm {peer[9]['ttft'] / peer[1]['ttft']:.2f}x"
        print(line + f"  -> {'PASS' if ok else 'FAIL'} (mlx-oss within 1.5x)")
    med = lambda rows: sorted(r["decode_tps"] for r in rows)[len(rows) // 2]  # noqa: E731
    print(f"decode tok/s (median over turns): mlx-oss {med(ours):.1f}" + (f", mlx-lm {med(peer):.1f}" if peer else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
