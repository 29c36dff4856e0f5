"""One rank of a test group (started by tests/test_distributed.py with MLX_RANK / MLX_HOSTFILE).

argv: MODE FOLDER OUT. Modes: "exact" (logits + two greedy turns through the leader engine),
"chat" (the TUI's loader and model thread: several chats, reopen + warm, greedy turns),
"loop" (rank 0 generates until killed; prints "ready" once every rank has loaded), "load" (join,
checkpoint check, exit)."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_oss.distributed import cli as dist
from mlx_oss.distributed.engine import LeaderEngine, follow
from mlx_oss.sampling import Sampler, SamplingConfig

TOKENS = [1, 5, 9, 100, 200, 300, 7, 7, 2, 511, 0, 44, 3, 18, 250, 77, 5, 9, 12, 301]


def turns(engine, n_gen: int = 6) -> list[dict]:
    """Two greedy turns; the second prompt extends the first conversation (cache reuse)."""
    greedy = Sampler(SamplingConfig(temperature=0))
    out = []
    prompt = TOKENS[:14]
    for extra in ([], [33, 44, 55]):
        prompt = prompt + extra
        g = engine.generate(prompt, greedy, max_tokens=n_gen, stop_tokens=())
        toks = list(g)
        out.append({"tokens": toks, "reused": g.reused_tokens, "prefilled": g.prefilled_tokens})
        prompt = prompt + toks
    # a reply dropped after 2 tokens (a consumer that stops iterating), then a new prompt
    it = iter(engine.generate(prompt + [60], greedy, max_tokens=40, stop_tokens=()))
    next(it), next(it)
    it.close()
    g = engine.generate(TOKENS[:10] + [61, 62], greedy, max_tokens=n_gen, stop_tokens=())
    out.append({"tokens": list(g)})
    return out


def chat_turns(backend) -> dict:
    """What the TUI does with a loaded backend, on its model thread: two chats (two engines) with
    interleaved turns, one of them reopened from JSON and warmed (a prefill), three turns in all for
    the first. -> each turn's stats and text, and the tokens every engine ends up holding."""
    from mlx_oss.events import Done
    from mlx_oss.tui.session import ModelThread, run_send

    thread = ModelThread()
    out: dict = {"turns": [], "tokens": []}

    def turn(chat, text):
        events: list = []
        run_send(chat, text, events.append)
        done = next(e for e in events if isinstance(e, Done))
        s = done.stats
        texts = "".join(getattr(e, "text", "") for e in events if type(e).__name__.endswith("Delta"))
        out["turns"].append([s.prompt_tokens, s.reused_tokens, s.prefilled_tokens, s.generated_tokens, s.stop_reason, texts])

    def script():
        a, b = backend.new_chat(), backend.new_chat()
        turn(a, "hello there")
        turn(b, "a second chat")
        turn(a, "and a second turn")
        c = backend.open_chat(a.to_json())  # a reopened chat: warmed in the background, then a turn
        out["warm"] = c.warm()
        turn(c, "after reopening")
        turn(a, "third turn")
        out["tokens"] = [x.engine.tokens for x in (a, b, c)]
        del b
        gc.collect()  # its engine is dropped on every rank with the next command
        turn(a, "fourth turn")
        out["tokens"].append(a.engine.tokens)
        if backend.close is not None:
            backend.close()

    thread.submit(script).result(timeout=600)
    thread.shutdown()
    thread.join(60)
    return out


def _slow_watchdog(seconds: float) -> None:
    """The race a loaded machine loses now and then, made certain: MLX reports the lost peer in the
    main thread before the watchdog does."""
    import time

    from mlx_oss.distributed.watchdog import Watchdog

    report = Watchdog._exit

    def late(self, msg):
        time.sleep(seconds)
        report(self, msg)

    Watchdog._exit = late


def main() -> int:
    mode, folder, out = sys.argv[1:4]
    if len(sys.argv) > 4:  # a delay (seconds) before the watchdog reports a lost peer
        _slow_watchdog(float(sys.argv[4]))
    from argparse import Namespace

    if mode == "chat":  # rank 0 through the TUI's door, the others as `mlx-oss chat` followers do
        from mlx_oss.sampling import SamplingConfig
        from mlx_oss.tui import session as door

        with door.join_group(Namespace(hosts=None)) as group:
            if door.is_follower():
                return door.follow(group, "float32")
            opts = door.ChatOptions(sampling=SamplingConfig(temperature=0), max_tokens=6, dtype="float32")
            backend = door.model_loader(door.agree_model(group, folder), opts, group)(lambda m: None)
            Path(out + ".json").write_text(json.dumps(chat_turns(backend)))
        return 0
    with dist.group(Namespace(hosts=None)) as session:
        model, _ = dist.load(session, folder, "float32", status=lambda m: None)
        if mode == "load":
            return 0
        logits = model(mx.array([TOKENS], dtype=mx.int32))  # a forward pass on every rank
        mx.eval(logits)
        if session.rank != 0:
            print("ready", flush=True)
            follow(model, session.comm)
            return 0
        if mode == "loop":
            print("ready", flush=True)
            eng = LeaderEngine(model)
            while True:
                turns(eng)
                eng.reset()
        np.save(out + ".npy", np.array(logits))
        eng = LeaderEngine(model)
        result = {"turns": turns(eng), "peak": mx.get_peak_memory()}
        Path(out + ".json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
