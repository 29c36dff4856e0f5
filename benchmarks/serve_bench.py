#!/usr/bin/env python
"""A 10-turn agent loop over HTTP: `mlx-oss serve` vs `mlx_lm.server` on the same checkpoint, in one run.

    python -m mlx_oss.convert.synthetic /tmp/sb/src --preset tiny-chat --layout hf     # once
    mlx-oss convert /tmp/sb/src /tmp/sb/ours                                             # once
    mlx-oss convert /tmp/sb/src /tmp/sb/peer --to mlx-lm                                 # once
    python benchmarks/serve_bench.py --ours /tmp/sb/ours --peer /tmp/sb/peer --repeats 5

Each turn: a user message, the assistant calls a tool, the client sends the tool result, the assistant
answers. The client is stateless, like Codex or an SDK agent: every request resends the whole
conversation (Chat Completions, streaming). Both servers get byte-identical requests; the assistant
turns in the conversation are the benchmark's own (random weights never write harmony), and each
server generates exactly --reply tokens per request (ours: that many forced harmony tokens through the
app's sampling hook, the model running every forward pass; mlx-lm: max_tokens).

- Both get the same requests: the tool in `tools`, the call as an assistant `tool_calls` message, the
  result as a `tool` message; the chat template `mlx-oss convert --to mlx-lm` exports renders them as
  harmony, token for token what our server renders (tests/test_mlx_lm_interop.py).
- ours: the app `mlx-oss serve` runs (`mlx_oss.server.app.create_app`) under uvicorn on 127.0.0.1, in this
  process so the benchmark can pass the forcing hook; mlx-lm: `python -m mlx_lm.server` subprocess.
  Both are up for the whole run; the loop runs `--repeats` times, ours then mlx-lm's each time (a new
  conversation each repetition, the same one for both), so both see the same machine load.
- TTFT: request sent -> first streamed token (a delta of content, reasoning or tool-call arguments);
  the table shows the median over the repetitions of each (turn, step).
- prefilled: prompt_tokens - cached_tokens from each server's own usage report.
- HTTP+SSE overhead per token: after each of our answer requests, the same request is replayed twice
  (order alternating), once over HTTP and once in-process through the function the server's worker
  runs (`run_generation`: the engine and the harmony stream parser, what `Chat` runs per token) on
  the same engine state, prompt tokens and forced reply: same context, same tokens.
  The overhead is the work HTTP adds: everything of it (reading and validating the request, the SSE
  chunks, JSON, socket writes, the asyncio hops) runs on the server's event-loop thread, so it is
  that thread's CPU time over the request per generated token, as a share of the in-process decode
  time per token (wall). The worker thread's only extra is one `call_soon_threadsafe` per event.
  The paired wall difference (HTTP minus in-process per token, between first and last delta) is
  printed too: on 2 shared cores it swings by +-20% with the load, so it says little here.

`--api messages` drives our server over Anthropic's Messages API instead (`POST /v1/messages`,
`anthropic-version: 2023-06-01`, streaming): the same conversation in Anthropic's shape, the system
prompt as top-level `system`, the call turn as an assistant message of [`thinking` (with --reasoning;
unsigned, taken as it is), `tool_use` (`toolu_<k>`, the parsed arguments as `input`)], the result as a
user message of one `tool_result` block, the answer as [`thinking`, `text`], the tool with
`input_schema`. TTFT runs to the first `content_block_delta` (text, thinking or input JSON); prompt =
`input_tokens + cache_read_input_tokens`, cached = `cache_read_input_tokens`, completion =
`output_tokens`, from the final `message_delta`'s usage. mlx_lm.server has no Messages API: --peer is
left out (one line says so), and so is the overhead replay (its in-process half parses Chat
Completions): --overhead-turns is 0.

Targets (issue 13): our turn-10 TTFT <= 1.5x turn 2, while mlx-lm's grows; overhead < 5% of decode.
Issue 29: over /v1/messages too, prefilled tokens per turn constant from turn 2 on, as on Chat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import mlx_oss  # noqa: E402
from mlx_oss.bench.multiturn import text_of  # noqa: E402
from mlx_oss.sampling import SamplingConfig, ScriptedTokens  # noqa: E402
from mlx_oss.server import chat_completions  # noqa: E402
from mlx_oss.server.generation import ItemDelta, run_generation  # noqa: E402
from server_harness import free_port, running_server  # noqa: E402

TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look a fact up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}  # fmt: skip
ANTHROPIC_TOOL = {"name": "lookup", "description": TOOL["function"]["description"],
                  "input_schema": TOOL["function"]["parameters"]}  # fmt: skip
ANTHROPIC_VERSION = "2023-06-01"
CHAT_DELTAS = ("content", "reasoning", "tool_calls")  # delta fields that carry generated tokens
TOKEN_DELTAS = ("text_delta", "thinking_delta", "input_json_delta")  # Anthropic's deltas of generated tokens


def chat_body(model: str, system: str, msgs: list[dict], n: int) -> dict:
    return {"model": model, "messages": [{"role": "system", "content": system}, *msgs], "tools": [TOOL],
            "stream": True, "max_tokens": n, "stream_options": {"include_usage": True}, "temperature": 0}  # fmt: skip


def chat_call(k: int, args: str, thought: str, result: str) -> list[dict]:
    """The assistant's tool call and the tool's result, as Chat Completions messages."""
    cid = f"call_{k}"
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": cid, "type": "function", "function": {"name": "lookup", "arguments": args}}]}  # fmt: skip
    if thought:
        call["reasoning"] = thought
    return [call, {"role": "tool", "tool_call_id": cid, "content": result}]


def chat_answer(text: str, thought: str) -> dict:
    return {"role": "assistant", "content": text, **({"reasoning": thought} if thought else {})}


def chat_event(ch: dict) -> tuple[int, dict | None]:
    """One Chat Completions chunk -> (token deltas in it, usage as {prompt, cached, completion} or None)."""
    n = sum(1 for c in ch.get("choices") or [] if any(map((c.get("delta") or {}).get, CHAT_DELTAS)))
    u = ch.get("usage")
    if not u:
        return n, None
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
    return n, {"prompt": u.get("prompt_tokens"), "cached": cached, "completion": u.get("completion_tokens")}


def messages_body(model: str, system: str, msgs: list[dict], n: int) -> dict:
    return {"model": model, "system": system, "messages": msgs, "tools": [ANTHROPIC_TOOL], "max_tokens": n,
            "stream": True, "temperature": 0}  # fmt: skip


def _thinking(thought: str) -> list[dict]:
    return [{"type": "thinking", "thinking": thought}] if thought else []  # unsigned: taken as it is


def messages_call(k: int, args: str, thought: str, result: str) -> list[dict]:
    """The assistant's tool call and the tool's result, as Anthropic messages."""
    cid = f"toolu_{k}"
    call = {"type": "tool_use", "id": cid, "name": "lookup", "input": json.loads(args)}
    return [{"role": "assistant", "content": [*_thinking(thought), call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": cid, "content": result}]}]  # fmt: skip


def messages_answer(text: str, thought: str) -> dict:
    return {"role": "assistant", "content": [*_thinking(thought), {"type": "text", "text": text}]}


def messages_event(ev: dict) -> tuple[int, dict | None]:
    """One Anthropic stream event -> (token deltas in it, usage or None): the usage of the final
    message_delta, prompt = input_tokens + cache_read_input_tokens (input_tokens are the uncached ones)."""
    kind = ev.get("type")
    if kind == "error":
        raise SystemExit(f"/v1/messages stream error: {json.dumps(ev)[:300]}")
    if kind == "content_block_delta":
        return int((ev.get("delta") or {}).get("type") in TOKEN_DELTAS), None
    if kind != "message_delta" or not ev.get("usage"):
        return 0, None
    u = ev["usage"]
    inp, cached = u.get("input_tokens"), u.get("cache_read_input_tokens")
    prompt = None if inp is None or cached is None else inp + cached
    return 0, {"prompt": prompt, "cached": cached, "completion": u.get("output_tokens")}


class Api(NamedTuple):
    """How the agent loop speaks to a server: where it posts, the request body (model, system prompt,
    messages, max_tokens), the messages of a call turn (k, arguments JSON, reasoning, tool result)
    and of an answer (text, reasoning), and what one stream event (its JSON) says."""

    path: str
    headers: dict
    body: Callable[[str, str, list, int], dict]
    call: Callable[[int, str, str, str], list[dict]]
    answer: Callable[[str, str], dict]
    event: Callable[[dict], tuple[int, dict | None]]


APIS = {"chat": Api("chat/completions", {}, chat_body, chat_call, chat_answer, chat_event),
        "messages": Api("messages", {"anthropic-version": ANTHROPIC_VERSION}, messages_body, messages_call, messages_answer,
                        messages_event)}  # fmt: skip


def forced(enc, n: int, seed: int, call: bool, reasoning: int = 0) -> tuple[list[int], str, str]:
    """Exactly n harmony tokens after `<|start|>assistant` (plus `reasoning` tokens of analysis before
    them, when asked): a tool call or a final answer; -> (tokens, text, reasoning text)."""
    head = "<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>" if call else "<|channel|>final<|message|>"
    end = "<|call|>" if call else "<|return|>"
    fixed = len(enc.encode(head + end, allowed_special="all")) + (len(enc.encode_ordinary('{"q": ""}')) if call else 0)
    body = text_of(enc, max(1, n - fixed), seed)
    text = json.dumps({"q": body}) if call else body
    toks = enc.encode(head + text + end, allowed_special="all")
    thought = ""
    if reasoning:
        a_head, a_end = "<|channel|>analysis<|message|>", "<|end|><|start|>assistant"
        a_fixed = len(enc.encode(a_head + a_end, allowed_special="all"))
        thought = text_of(enc, max(1, reasoning - a_fixed), seed + 500)
        toks = enc.encode(a_head + thought + a_end, allowed_special="all") + toks
    return toks, text, thought


class Hook:
    """The app's sampling hook: the reply for each request, queued by the loop."""

    def __init__(self) -> None:
        self.next: list[int] = []

    def __call__(self, body):
        return [ScriptedTokens(self.next)]


def thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds `thread` has used so far (0 without one)."""
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident)) if thread is not None else 0.0


def stream_request(client: httpx.Client, body: dict, loop_thread: threading.Thread | None = None,
                   keep_times: bool = False, api: Api = APIS["chat"]) -> dict:  # fmt: skip
    """One streamed request of `api` on the client's kept-alive connection (a new
    `httpx.Client` per request would cost ~50 ms of TLS-context setup in every TTFT, even for
    http://); with `loop_thread` (our server's event-loop thread, in this process) also that
    thread's CPU seconds over the whole request; with `keep_times` also the send time `t0`, the
    arrival time of every token delta (`times`) and the end of the stream (`end`), perf_counter.
    prompt, cached, completion: read by `api.event` from the server's last usage (`usage`, as sent)."""
    c0 = thread_cpu(loop_thread)
    t0 = time.perf_counter()
    first = last = None
    n = 0
    times: list[float] = []
    usage = raw = None
    with client.stream("POST", api.path, json=body, headers=api.headers) as r:
        if r.status_code != 200:
            raise SystemExit(f"{client.base_url}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue  # Anthropic's `event:` lines too: the data repeats the name as `type`
            ev = json.loads(line[6:])
            deltas, u = api.event(ev)
            if u:
                usage, raw = u, ev["usage"]
            for _ in range(deltas):
                first = first or time.perf_counter()
                last = time.perf_counter()
                n += 1
                times.append(last)
    loop_cpu = thread_cpu(loop_thread) - c0
    prompt, cached, completion = ((usage or {}).get(key) for key in ("prompt", "cached", "completion"))
    kept = {"t0": t0, "times": times, "end": time.perf_counter()} if keep_times else {}
    return {**kept, "ttft": (first if first else time.perf_counter()) - t0, "prompt": prompt, "cached": cached,
            "prefilled": None if prompt is None or cached is None else prompt - cached, "completion": completion,
            "usage": raw,  # as the server sent it
            "per_token": (last - first) / (n - 1) if n > 1 else None,  # wall, first to last delta
            "loop_cpu_per_token": loop_cpu / completion if loop_thread is not None and completion else None}  # fmt: skip


def in_process(app, enc, body: dict, toks: list[int]) -> dict:
    """The request run in this process by the worker's own function on the server's engine (the
    server is idle between requests): wall seconds per token between the first and the last delta."""
    backend = app.state.backend
    req = chat_completions.parse_request(body, SamplingConfig(logits_processors=(ScriptedTokens(toks),)))
    prompt, boundaries = backend.prompt(req.turn)
    times: list[float] = []

    def emit(ev) -> None:
        if isinstance(ev, ItemDelta):
            times.append(time.perf_counter())

    run_generation(backend.engine, backend.pool, enc, prompt, boundaries, req.turn.sampling, len(toks), (),
                   threading.Event(), emit, turn=None, tools=None, max_calls=0, grammars=None)  # fmt: skip
    n = len(times)
    return {"per_token": (times[-1] - times[0]) / (n - 1) if n > 1 else None}


def agent_loop(client: httpx.Client, enc, turns: int, user: int, reply: int, model: str, seed: int, *, reasoning: int = 0,
               hook: Hook | None = None, app=None, overhead: list | None = None, loop_thread: threading.Thread | None = None,
               api: str = "chat") -> list[dict]:  # fmt: skip
    """One conversation of `turns` turns over `api` (APIS: chat, messages). Ours (hook given): forced
    replies, and with `overhead` (Chat only) the paired HTTP / in-process replays of each answer
    request appended to it. With
    `reasoning`, every reply starts with that many tokens of analysis, and the client sends it back
    as `reasoning` on the assistant messages, as agents do: harmony keeps it while the tool call is
    continued and drops it once the turn has a final answer, so from turn 2 on the conversation a
    server holds no longer extends the one it is sent (the earlier turn's analysis is gone)."""
    ours = hook is not None
    wire = APIS[api]
    if overhead is not None and api != "chat":
        raise ValueError("the overhead replay parses Chat Completions requests: api must be 'chat'")
    system = f"You are a helpful agent (session {seed}). Use the lookup tool before answering."
    msgs: list[dict] = []
    rows = []
    for k in range(turns):
        msgs.append({"role": "user", "content": text_of(enc, user, seed + 1000 + k)})
        call_toks, args, call_thought = forced(enc, reply, seed + 2000 + k, True, reasoning)
        answer_toks, answer, answer_thought = forced(enc, reply, seed + 3000 + k, False, reasoning)
        for step, toks in (("call", call_toks), ("answer", answer_toks)):
            if ours:
                hook.next = toks
            body = wire.body(model, system, msgs, len(toks))
            row = stream_request(client, body, api=wire)
            rows.append({"turn": k + 1, "step": step, **row})
            if ours and overhead is not None and step == "answer":
                pair = {}
                for how in (("http", "local") if k % 2 else ("local", "http")):
                    r = stream_request(client, body, loop_thread) if how == "http" else in_process(app, enc, body, toks)
                    pair[how] = r["per_token"]
                    if how == "http":
                        pair["loop_cpu"] = r["loop_cpu_per_token"]
                overhead.append({"turn": k + 1, **pair})
            if step == "call":
                msgs += wire.call(k, args, call_thought, text_of(enc, user, seed + 4000 + k))
            else:
                msgs.append(wire.answer(answer, answer_thought))
    return rows


def start_peer(folder: str, port: int) -> subprocess.Popen:
    """`python -m mlx_lm.server` on `folder`, once it answers /v1/models."""
    p = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", folder, "--host", "127.0.0.1",
                          "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return wait_up(p, port, f"mlx_lm.server on {folder}")


def wait_up(p: subprocess.Popen, port: int, what: str, timeout: float = 600) -> subprocess.Popen:
    """Wait until the server process `p` answers GET /v1/models on 127.0.0.1:`port`; -> p."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
            return p
        except httpx.HTTPError:
            if p.poll() is not None:
                raise SystemExit(f"{what} exited with {p.returncode} while loading")
            time.sleep(0.5)
    p.kill()
    raise SystemExit(f"{what} did not start")


def medians(runs: list[list[dict]]) -> list[dict]:
    """Per (turn, step) over the repetitions: median TTFT (and its min, max), tokens of the first run
    (they are the same every repetition: same lengths, same cache behaviour)."""
    out = []
    for i, r in enumerate(runs[0]):
        ttfts = [run[i]["ttft"] for run in runs]
        pre = sorted({run[i]["prefilled"] for run in runs}, key=lambda x: -1 if x is None else x)
        out.append({"turn": r["turn"], "step": r["step"], "prompt": r["prompt"], "cached": r["cached"],
                    "prefilled": r["prefilled"], "prefilled_all": pre, "ttft": statistics.median(ttfts),
                    "ttft_min": min(ttfts), "ttft_max": max(ttfts)})  # fmt: skip
    return out


def _cell(r: dict | None) -> str:
    if r is None:
        return f"{'':>7} {'':>9} {'':>8}"
    pre = r["prefilled"] if r["prefilled"] is not None else "-"
    if len(r["prefilled_all"]) > 1:
        pre = "/".join("-" if x is None else str(x) for x in r["prefilled_all"])
    return f"{r['prompt'] or '-':>7} {pre:>9} {r['ttft'] * 1e3:>8.1f}"


def table(ours: list[dict], theirs: list[dict] | None, repeats: int) -> None:
    print(f"\nTTFT: median of {repeats} run(s), ms; prefilled = prompt - cached, from each server's usage")
    print(f"{'':>11} {'mlx-oss serve':>26}   {'mlx_lm.server':>26}")
    print(f"{'turn':>4} {'step':>6} {'prompt':>7} {'prefilled':>9} {'TTFT':>8}   {'prompt':>7} {'prefilled':>9} {'TTFT':>8}")
    for i, r in enumerate(ours):
        print(f"{r['turn']:>4} {r['step']:>6} {_cell(r)}   {_cell(theirs[i] if theirs else None)}")


def ratio(rows: list[dict], turns: int, step: str) -> float:
    t = {r["turn"]: r["ttft"] for r in rows if r["step"] == step}
    return t[turns] / t[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="mlx-oss folder")
    ap.add_argument("--api", choices=sorted(APIS), default="chat",
                    help="chat: Chat Completions; messages: Anthropic's Messages API (ours only, no overhead replay)")  # fmt: skip
    ap.add_argument("--peer", help="mlx-lm folder of the same checkpoint (mlx-oss convert --to mlx-lm); omit to skip")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--user", type=int, default=64, help="tokens per user message and per tool result")
    ap.add_argument("--reply", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--reasoning", type=int, default=0,
                    help="tokens of analysis before every reply, sent back as `reasoning` (harmony drops it after the answer)")
    ap.add_argument("--repeats", type=int, default=3, help="agent loops per server (new conversation each); TTFT = median")
    ap.add_argument("--overhead-turns", type=int, default=None,
                    help="turns of the extra loop that replays each answer over HTTP and in-process (default --turns; 0: skip)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    if a.turns < 2 or a.repeats < 1:
        ap.error("--turns must be at least 2 and --repeats at least 1")
    if a.api != "chat":
        if a.peer:
            print(f"--api {a.api}: mlx_lm.server has no Messages API, --peer left out", flush=True)
            a.peer = None
        print(f"--api {a.api}: no HTTP+SSE overhead replay (its in-process half parses Chat Completions)", flush=True)
        a.overhead_turns = 0

    print(f"load at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min), {os.cpu_count()} CPUs", flush=True)
    model, enc = mlx_oss.load(a.ours, a.dtype)
    hook = Hook()
    peer = None
    ours_runs, peer_runs, ours_wall, peer_wall, overhead = [], [], [], [], []
    try:
        if a.peer:
            port = free_port()
            peer = start_peer(a.peer, port)
            peer_url = f"http://127.0.0.1:{port}/v1"
        with running_server(model, enc, hook) as (url, app), httpx.Client(base_url=url + "/", timeout=3600) as ours_c, \
                httpx.Client(base_url=(peer_url if peer else url) + "/", timeout=3600) as peer_c:
            agent_loop(ours_c, enc, 1, a.user, a.reply, "gpt-oss-tiny", 0, reasoning=a.reasoning, hook=hook, api=a.api)  # warm-up (compiles, allocates)
            if peer:
                agent_loop(peer_c, enc, 1, a.user, a.reply, a.peer, 0, reasoning=a.reasoning)
            for rep in range(a.repeats):
                seed = rep + 1  # a new conversation: the session number differs from the first message on
                t0 = time.perf_counter()
                ours_runs.append(agent_loop(ours_c, enc, a.turns, a.user, a.reply, "gpt-oss-tiny", seed, reasoning=a.reasoning, hook=hook,
                                            api=a.api))  # fmt: skip
                ours_wall.append(time.perf_counter() - t0)
                print(f"run {rep + 1}/{a.repeats}: mlx-oss {ours_wall[-1]:.1f} s", end="", flush=True)
                if peer:
                    t0 = time.perf_counter()
                    peer_runs.append(agent_loop(peer_c, enc, a.turns, a.user, a.reply, a.peer, seed, reasoning=a.reasoning))
                    peer_wall.append(time.perf_counter() - t0)
                    print(f", mlx-lm {peer_wall[-1]:.1f} s", end="", flush=True)
                print(flush=True)
            # HTTP+SSE overhead: one more of our loops, each answer replayed over HTTP and in-process
            oturns = a.turns if a.overhead_turns is None else a.overhead_turns
            if oturns:
                # uvicorn's thread (server_harness starts `server.run` in a thread of its own): its event
                # loop does all the HTTP and SSE work
                loop_thread = next(t for t in threading.enumerate() if t.name.endswith("(run)"))
                agent_loop(ours_c, enc, oturns, a.user, a.reply, "gpt-oss-tiny", a.repeats + 1, reasoning=a.reasoning, hook=hook, app=app,
                           overhead=overhead, loop_thread=loop_thread)  # fmt: skip
    finally:
        if peer is not None:
            peer.terminate()
            peer.wait(60)
    print(f"load at end:   {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    ours, theirs = medians(ours_runs), medians(peer_runs) if peer_runs else None
    print(f"API: {'POST /v1/messages (Anthropic)' if a.api == 'messages' else 'POST /v1/chat/completions'}")
    table(ours, theirs, a.repeats)
    results = {"args": vars(a), "ours": ours, "ours_runs": ours_runs, "ours_wall_s": ours_wall, "overhead": overhead}
    print(f"\nwhole loop (median): mlx-oss {statistics.median(ours_wall):.2f} s"
          + (f", mlx-lm {statistics.median(peer_wall):.2f} s" if peer_wall else ""))  # fmt: skip
    for step in ("call", "answer"):
        r = ratio(ours, a.turns, step)
        line = f"turn {a.turns} / turn 2 TTFT ({step}): mlx-oss {r:.2f}x ({'PASS' if r <= 1.5 else 'FAIL'} <= 1.5x)"
        if theirs:
            line += f", mlx-lm {ratio(theirs, a.turns, step):.2f}x"
        print(line)
    pairs = [p for p in overhead if p.get("http") and p.get("local")]
    if pairs:
        med = lambda key: statistics.median(p[key] for p in pairs)  # noqa: E731
        diff = statistics.median(p["http"] - p["local"] for p in pairs)
        over = diff / med("local")
        loop = med("loop_cpu")
        share = loop / med("local")
        print(f"HTTP+SSE overhead per token, {len(pairs)} paired replays of an answer (same context, same tokens):")
        print(f"  server event-loop CPU: {loop * 1e3:.3f} ms per token = {share * 100:.1f}% of the in-process decode "
              f"time per token ({med('local') * 1e3:.2f} ms) ({'PASS' if share < 0.05 else 'FAIL'} < 5%)")  # fmt: skip
        print(f"  wall, paired: HTTP {med('http') * 1e3:.2f} ms vs in-process {med('local') * 1e3:.2f} ms per token: "
              f"{diff * 1e3:+.2f} ms = {over * 100:+.1f}% (moves with the machine's load)")  # fmt: skip
        results.update(http_s_per_token=med("http"), local_s_per_token=med("local"), wall_overhead_share=over,
                       loop_cpu_s_per_token=loop, overhead_share=share)  # fmt: skip
    if theirs:
        results.update(peer=theirs, peer_runs=peer_runs, peer_wall_s=peer_wall)
    if a.json:
        tmp = Path(a.json + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
