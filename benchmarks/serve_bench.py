#!/usr/bin/env python
"""A 10-turn agent loop over HTTP: `mlx-oss serve` vs `mlx_lm.server` on the same checkpoint, in one run.

    python -m mlx_oss.convert.synthetic /tmp/sb/src --preset tiny-chat --layout hf     # once
    mlx-oss convert /tmp/sb/src /tmp/sb/ours                                             # once
    mlx-oss convert /tmp/sb/src /tmp/sb/peer --to mlx-lm                                 # once
    python benchmarks/serve_bench.py --ours /tmp/sb/ours --peer /tmp/sb/peer

Each turn: a user message, the assistant calls a tool, the client sends the tool result, the assistant
answers. The client is stateless, like Codex or an SDK agent: every request resends the whole
conversation (Chat Completions, streaming). Both servers get byte-identical requests; the assistant
turns in the conversation are the benchmark's own (random weights never write harmony), and each
server generates exactly --reply tokens per request (ours: that many forced harmony tokens through the
app's sampling hook, the model running every forward pass; mlx-lm: max_tokens).

- mlx-lm gets the same turns with the tool call as assistant text and the result as user text: the
  chat template of an exported folder has no tool roles (and mlx-lm would not stop at `<|call|>`).
- ours: the app `mlx-oss serve` runs (`mlx_oss.server.create_app`) under uvicorn on 127.0.0.1, in this
  process so the benchmark can pass the forcing hook; mlx-lm: `python -m mlx_lm.server` subprocess.
- TTFT: request sent -> first streamed token (a delta of content, reasoning or tool-call arguments).
- prefilled: prompt_tokens - cached_tokens from each server's own usage report.
- HTTP overhead per token: our streamed inter-token time over HTTP+SSE vs in-process `Chat` decode
  of the same forced reply on the same model (same engine), as a share of decode time.

Targets (issue 13): our turn-10 TTFT <= 1.5x turn 2, while mlx-lm's grows; overhead < 5% of decode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import mlx_oss  # noqa: E402
from mlx_oss.bench.multiturn import text_of  # noqa: E402
from mlx_oss.chat import Chat  # noqa: E402
from mlx_oss.events import Done  # noqa: E402
from mlx_oss.sampling import SamplingConfig, ScriptedTokens  # noqa: E402
from server_harness import free_port, running_server  # noqa: E402

TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look a fact up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}  # fmt: skip


def forced(enc, n: int, seed: int, call: bool) -> tuple[list[int], str]:
    """Exactly n harmony tokens after `<|start|>assistant`: a tool call or a final answer; -> (tokens, text)."""
    head = "<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>" if call else "<|channel|>final<|message|>"
    end = "<|call|>" if call else "<|return|>"
    fixed = len(enc.encode(head + end, allowed_special="all")) + (len(enc.encode_ordinary('{"q": ""}')) if call else 0)
    body = text_of(enc, max(1, n - fixed), seed)
    text = json.dumps({"q": body}) if call else body
    toks = enc.encode(head + text + end, allowed_special="all")
    return toks, text


class Hook:
    """The app's sampling hook: the reply for each request, queued by the loop."""

    def __init__(self) -> None:
        self.next: list[int] = []

    def __call__(self, body):
        return [ScriptedTokens(self.next)]


def stream_request(url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first = last = None
    n = 0
    usage = None
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise SystemExit(f"{url}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ch = json.loads(line[6:])
            usage = ch.get("usage") or usage
            for c in ch.get("choices") or []:
                d = c.get("delta") or {}
                if d.get("content") or d.get("reasoning") or d.get("tool_calls"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    n += 1
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    prompt = (usage or {}).get("prompt_tokens")
    return {"ttft": (first or time.perf_counter()) - t0, "prompt": prompt, "cached": cached,
            "prefilled": None if prompt is None or cached is None else prompt - cached,
            "deltas": n, "stream_s": (last - first) if first and last else 0.0}  # fmt: skip


def plain(msgs: list[dict]) -> list[dict]:
    """The conversation without tool roles, for an mlx-lm folder whose chat template has none (the
    template `mlx-oss convert --to mlx-lm` writes today): calls become assistant text, results user text."""
    out = []
    for m in msgs:
        if m.get("tool_calls"):
            out.append({"role": "assistant", "content": m["tool_calls"][0]["function"]["arguments"]})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": m["content"]})
        else:
            out.append(m)
    return out


def agent_loop(url: str, enc, turns: int, user: int, reply: int, hook: Hook | None, model: str,
               tools_in_template: bool = True) -> list[dict]:  # fmt: skip
    msgs = [{"role": "system", "content": "You are a helpful agent. Use the lookup tool before answering."}]
    rows = []
    for k in range(turns):
        msgs.append({"role": "user", "content": text_of(enc, user, 1000 + k)})
        call_toks, args = forced(enc, reply, 2000 + k, True)
        answer_toks, answer = forced(enc, reply, 3000 + k, False)
        for step, toks in (("call", call_toks), ("answer", answer_toks)):
            if hook is not None:
                hook.next = toks
            body = {"model": model, "messages": msgs if tools_in_template else plain(msgs), "stream": True,
                    "max_tokens": len(toks), "stream_options": {"include_usage": True}, "temperature": 0}  # fmt: skip
            if tools_in_template:
                body["tools"] = [TOOL]
            row = stream_request(url, body)
            rows.append({"turn": k + 1, "step": step, **row})
            if step == "call":
                cid = f"call_{k}"
                msgs.append({"role": "assistant", "content": None, "tool_calls": [
                    {"id": cid, "type": "function", "function": {"name": "lookup", "arguments": args}}]})  # fmt: skip
                msgs.append({"role": "tool", "tool_call_id": cid, "content": text_of(enc, user, 4000 + k)})
            else:
                msgs.append({"role": "assistant", "content": answer})
    return rows


def chat_decode_per_token(model, enc, reply: int) -> float:
    """In-process Chat: seconds per decoded token for a forced reply of `reply` tokens (median of 3)."""
    out = []
    for seed in range(3):
        toks, _ = forced(enc, reply, 5000 + seed, False)
        chat = Chat(model, enc, sampling=SamplingConfig(logits_processors=(ScriptedTokens(toks),)))
        done = [e for e in chat.send(text_of(enc, 64, 6000 + seed)) if isinstance(e, Done)][0]
        out.append(done.stats.decode_s / max(1, done.stats.generated_tokens - 1))
    return statistics.median(out)


def start_peer(folder: str, port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", folder, "--host", "127.0.0.1",
                          "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
            return p
        except httpx.HTTPError:
            time.sleep(0.5)
    p.kill()
    raise SystemExit("mlx_lm.server did not start")


def table(name: str, rows: list[dict]) -> None:
    print(f"\n{name}")
    print(f"{'turn':>4} {'step':>6} {'prompt':>7} {'cached':>7} {'prefilled':>9} {'TTFT ms':>8}")
    for r in rows:
        print(f"{r['turn']:>4} {r['step']:>6} {r['prompt'] or '-':>7} {r['cached'] if r['cached'] is not None else '-':>7} "
              f"{r['prefilled'] if r['prefilled'] is not None else '-':>9} {r['ttft'] * 1e3:>8.1f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="mlx-oss folder")
    ap.add_argument("--peer", help="mlx-lm folder of the same checkpoint (mlx-oss convert --to mlx-lm); omit to skip")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--user", type=int, default=64, help="tokens per user message and per tool result")
    ap.add_argument("--reply", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)

    model, enc = mlx_oss.load(a.ours, a.dtype)
    hook = Hook()
    t0 = time.perf_counter()
    with running_server(model, enc, hook) as (url, _app):
        agent_loop(url, enc, 1, a.user, a.reply, hook, "gpt-oss-tiny")  # warm-up (compiles, allocates)
        t0 = time.perf_counter()
        ours = agent_loop(url, enc, a.turns, a.user, a.reply, hook, "gpt-oss-tiny")
        ours_wall = time.perf_counter() - t0
    http_tok = statistics.median(r["stream_s"] / max(1, r["deltas"] - 1) for r in ours if r["step"] == "answer")
    chat_tok = chat_decode_per_token(model, enc, a.reply)
    table("mlx-oss serve", ours)
    print(f"wall {ours_wall:.2f} s")
    results = {"ours": ours, "ours_wall_s": ours_wall, "http_s_per_token": http_tok, "chat_s_per_token": chat_tok}
    t2 = next(r["ttft"] for r in ours if r["turn"] == 2 and r["step"] == "call")
    t10 = next(r["ttft"] for r in ours if r["turn"] == a.turns and r["step"] == "call")
    print(f"turn {a.turns} / turn 2 TTFT: {t10 / t2:.2f}x ({'PASS' if t10 <= 1.5 * t2 else 'FAIL'} <= 1.5x)")
    over = (http_tok - chat_tok) / chat_tok
    print(f"HTTP+SSE per token {http_tok * 1e3:.2f} ms vs in-process Chat {chat_tok * 1e3:.2f} ms: "
          f"overhead {over * 100:+.1f}% of decode ({'PASS' if over < 0.05 else 'FAIL'} < 5%)")  # fmt: skip
    if a.peer:
        port = free_port()
        peer = start_peer(a.peer, port)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            agent_loop(url, enc, 1, a.user, a.reply, None, a.peer, False)
            t0 = time.perf_counter()
            theirs = agent_loop(url, enc, a.turns, a.user, a.reply, None, a.peer, False)
            wall = time.perf_counter() - t0
        finally:
            peer.terminate()
            peer.wait(30)
        table("mlx_lm.server", theirs)
        p2 = next(r["ttft"] for r in theirs if r["turn"] == 2 and r["step"] == "call")
        p10 = next(r["ttft"] for r in theirs if r["turn"] == a.turns and r["step"] == "call")
        print(f"wall {wall:.2f} s; turn {a.turns} / turn 2 TTFT: {p10 / p2:.2f}x")
        results.update(peer=theirs, peer_wall_s=wall)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
