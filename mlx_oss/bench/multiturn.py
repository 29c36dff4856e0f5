"""The multi-turn scenario of `mlx-oss bench`: N chat turns through the real harmony/engine path.

Ours: `Chat.send()` (harmony rendering, earlier reasoning pruned, cross-turn cache reuse in `Engine`).
Random-weight checkpoints never write harmony, so each reply is forced token by token with
`ScriptedTokens` (the model still runs every forward pass). mlx-lm then replays exactly the same
prompts and replies through its server's chat path (`LRUPromptCache`: nearest cached prefix, trimmed
when its caches allow, the rest through `generate_step`); benchmarks/multiturn_bench.py runs the same
two functions standalone.
TTFT is from the call to the first sampled token.

The per-effort run asks one question at each reasoning effort and reports the reasoning and answer
tokens the parser counted (a real checkpoint reasons longer at "high"; a random slice does not).
"""

from __future__ import annotations

import time
from typing import Callable

import mlx.core as mx

from mlx_oss import tokenizer as tk
from mlx_oss.cli.args import EFFORTS

Progress = Callable[[str], None]

WORDS = ("light scatter blue red wave sky sun air molecule color angle evening photon energy short long "
         "atmosphere dust cloud ocean reflect spectrum violet orange yellow green path density").split()  # fmt: skip


def text_of(enc, n: int, seed: int) -> str:
    """Plain text of exactly n tokens (deterministic per seed)."""
    words, i = [], seed
    while len(enc.encode_ordinary(" ".join(words))) < n - 1:
        words.append(WORDS[(i * 7 + 3) % len(WORDS)])
        i += 1
    text = " ".join(words)
    while len(enc.encode_ordinary(text)) < n:
        text += " a"
    return text


def reply_tokens(enc, analysis: str, final: str) -> list[int]:
    """A harmony reply: reasoning on the analysis channel, then the final answer."""
    return enc.encode(
        f"<|channel|>analysis<|message|>{analysis}<|end|><|start|>assistant<|channel|>final<|message|>{final}<|return|>",
        allowed_special="all",
    )


def script(enc, turns: int, user: int, analysis: int, answer: int) -> list[tuple[str, str, str]]:
    """(user text, reasoning, answer) per turn, of the given token sizes."""
    return [(text_of(enc, user, 100 * k), text_of(enc, analysis, 100 * k + 31), text_of(enc, answer, 100 * k + 57))
            for k in range(turns)]  # fmt: skip


def run_ours(model, enc, turns: list[tuple[str, str, str]], progress: Progress | None = None) -> list[dict]:
    """-> per turn: prompt tokens, reused, prefilled, TTFT, plus the exact prompt and reply tokens."""
    from mlx_oss.chat import Chat
    from mlx_oss.harmony import Message
    from mlx_oss.sampling import SamplingConfig, ScriptedTokens

    say = progress or (lambda _m: None)
    Chat(model, enc, reasoning_effort="low", max_tokens=2).ask(turns[0][0])  # warm-up
    chat = Chat(model, enc, reasoning_effort="low")
    rows = []
    for i, (user, analysis, final) in enumerate(turns):
        reply = reply_tokens(enc, analysis, final)
        chat.sampling = SamplingConfig(logits_processors=(ScriptedTokens(reply),))
        prompt = chat.prompt_tokens(chat.history + [Message.user(user)])
        t0 = time.perf_counter()
        stream = chat.send(user)
        t_send = time.perf_counter() - t0
        done = list(stream)[-1]
        s = done.stats
        if done.reply.answer != final or s.stop_reason != "stop":
            raise RuntimeError(f"multi-turn: turn {i + 1} did not follow the scripted reply ({s.stop_reason})")
        rows.append(dict(turn=i + 1, prompt=s.prompt_tokens, reused=s.reused_tokens, prefilled=s.prefilled_tokens,
                         ttft_s=t_send + s.ttft_s, decode_tps=s.decode_tps, peak=s.peak_memory_bytes, tokens=prompt,
                         reply=reply))  # fmt: skip
        say(f"mlx-oss: turn {i + 1}/{len(turns)}: {s.prefilled_tokens} of {s.prompt_tokens} prompt tokens prefilled, "
            f"TTFT {rows[-1]['ttft_s']:.2f} s")  # fmt: skip
    return rows


def run_mlx_lm(model, turns: list[dict], progress: Progress | None = None) -> list[dict]:
    """Replay ours' prompts and replies (from `run_ours`) through mlx-lm's server chat path."""
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache

    say = progress or (lambda _m: None)

    def forced(reply: list[int]):
        it = iter(reply)

        def proc(tokens, logits):
            t = next(it, tk.RETURN)
            return mx.where(mx.arange(logits.shape[-1]) == t, 0.0, -mx.inf).astype(logits.dtype)[None]

        return proc

    def turn(lru, prompt: list[int], reply: list[int]) -> tuple[int, float, float]:
        t0 = time.perf_counter()
        cache, rest = lru.fetch_nearest_cache("m", prompt)
        if cache is None:
            cache = make_prompt_cache(model)
        gen = generate_step(mx.array(rest), model, max_tokens=len(reply), sampler=lambda lp: mx.argmax(lp, axis=-1),
                            logits_processors=[forced(reply)], prompt_cache=cache)  # fmt: skip
        out = [int(next(gen)[0])]
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        out += [int(t) for t, _ in gen]
        tps = (len(out) - 1) / max(time.perf_counter() - t1, 1e-9)
        if out != reply:
            raise RuntimeError("mlx-lm did not follow the scripted reply")
        lru.insert_cache("m", prompt + out, cache)
        return len(rest), ttft, tps

    turn(LRUPromptCache(), turns[0]["tokens"], turns[0]["reply"][:2])  # warm-up
    lru = LRUPromptCache()
    rows = []
    for t in turns:
        prefilled, ttft, tps = turn(lru, t["tokens"], t["reply"])
        rows.append(dict(turn=t["turn"], prompt=len(t["tokens"]), reused=len(t["tokens"]) - prefilled,
                         prefilled=prefilled, ttft_s=ttft, decode_tps=tps))  # fmt: skip
        say(f"mlx-lm: turn {t['turn']}/{len(turns)}: {prefilled} of {len(t['tokens'])} prompt tokens prefilled, TTFT {ttft:.2f} s")
    return rows


def run_efforts(model, enc, question: str, max_tokens: int, progress: Progress | None = None) -> list[dict]:
    """One question per reasoning effort, sampled greedily: reasoning and answer tokens per effort."""
    from mlx_oss.chat import Chat
    from mlx_oss.sampling import SamplingConfig

    say = progress or (lambda _m: None)
    rows = []
    for effort in EFFORTS:
        chat = Chat(model, enc, reasoning_effort=effort, max_tokens=max_tokens, sampling=SamplingConfig(temperature=0.0))
        s = chat.ask(question).stats
        rows.append(dict(effort=effort, prompt=s.prompt_tokens, generated=s.generated_tokens, reasoning=s.reasoning_tokens,
                         answer=s.answer_tokens, ttft_s=s.ttft_s, decode_tps=s.decode_tps, stop=s.stop_reason))  # fmt: skip
        say(f"mlx-oss: effort {effort}: {s.reasoning_tokens} reasoning + {s.answer_tokens} answer tokens ({s.stop_reason})")
    return rows


def strip_tokens(rows: list[dict]) -> list[dict]:
    """Rows without the token lists (for reports)."""
    return [{k: v for k, v in r.items() if k not in ("tokens", "reply")} for r in rows]
