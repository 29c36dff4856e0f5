"""benchmarks/serve_bench.py end to end on the tiny chat model, both servers, so the benchmark the
README quotes keeps running: the requests both servers get, the figures it reads from their usage,
the paired overhead replays. Its speed figures are not asserted (timing belongs to the benchmark)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mlx_oss.convert.export_mlx_lm import export_mlx_lm
from mlx_oss.convert.synthetic import preset, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "benchmarks" / "serve_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_serve_bench_runs_both_servers_and_reports_what_they_did(tiny_chat_converted, tmp_path, capsys):
    src = write_checkpoint(tmp_path / "src", preset("tiny-chat"), "hf", seed=0)
    peer = tmp_path / "peer"
    export_mlx_lm(src, peer, progress=False)
    out = tmp_path / "rows.json"
    turns, user, reply = 3, 16, 8
    # with reasoning: every reply starts with analysis, sent back as `reasoning`, dropped by harmony
    # once its turn is answered, so each request diverges from the conversation the server last saw
    assert _bench().main(["--ours", str(tiny_chat_converted), "--peer", str(peer), "--turns", str(turns),
                          "--user", str(user), "--reply", str(reply), "--reasoning", "8", "--repeats", "1",
                          "--json", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    ours, theirs = res["ours"], res["peer"]
    assert [(r["turn"], r["step"]) for r in ours] == [(k, s) for k in range(1, turns + 1) for s in ("call", "answer")]
    assert [(r["turn"], r["step"]) for r in theirs] == [(r["turn"], r["step"]) for r in ours]
    # the conversation grows by what each step adds; ours prefills the same number of tokens every
    # turn from turn 2 on (the cache pool restores the state from before the dropped analysis)
    for rows in (ours, theirs):
        prompts = [r["prompt"] for r in rows]
        assert all(b > a for a, b in zip(prompts, prompts[1:]))
        assert all(r["ttft"] > 0 for r in rows)
    assert len({r["prefilled"] for r in ours[2:] if r["step"] == "call"}) == 1
    assert len({r["prefilled"] for r in ours[2:] if r["step"] == "answer"}) == 1
    assert all(r["cached"] > 0 for r in ours[1:]) and ours[-2]["prefilled"] < ours[-2]["prompt"] // 2
    # both servers were sent the same tool conversation, rendered by the same harmony: prompt sizes
    # differ by a constant at most (mlx-lm's template writes its own system-message date)
    offsets = {t["prompt"] - o["prompt"] for o, t in zip(ours, theirs)}
    assert len(offsets) == 1, offsets
    # one paired replay per answer of the overhead loop, each with the event-loop CPU measured
    assert len(res["overhead"]) == turns
    assert all(p["http"] > 0 and p["local"] > 0 and p["loop_cpu"] > 0 for p in res["overhead"])
    assert 0 < res["overhead_share"] == pytest.approx(res["loop_cpu_s_per_token"] / res["local_s_per_token"])
    text = capsys.readouterr().out
    assert f"turn {turns} / turn 2 TTFT (call): mlx-oss" in text and ", mlx-lm " in text
    assert "server event-loop CPU:" in text and "% of the in-process decode time per token" in text


@pytest.mark.slow
def test_serve_bench_over_messages_prefills_only_what_is_new_as_over_chat(tiny_chat_converted, tmp_path, capsys):
    """issue 29: the same agent loop over `POST /v1/messages` (Anthropic's shape: top-level system,
    thinking + tool_use, tool_result, thinking + text) prefills per turn what it does over Chat
    Completions: the prompt-cache pool serves Messages requests the same way."""
    bench = _bench()
    turns, user, reply = 3, 16, 8
    common = ["--ours", str(tiny_chat_converted), "--turns", str(turns), "--user", str(user), "--reply", str(reply),
              "--reasoning", "8", "--repeats", "1"]  # fmt: skip
    out = {api: tmp_path / f"{api}.json" for api in ("chat", "messages")}
    assert bench.main([*common, "--api", "chat", "--overhead-turns", "0", "--json", str(out["chat"])]) == 0
    capsys.readouterr()
    # mlx_lm.server has no Messages API: the peer is left out (before anything loads it), as is the overhead replay
    no_peer = ["--peer", str(tmp_path / "no-peer")]
    assert bench.main([*common, "--api", "messages", *no_peer, "--json", str(out["messages"])]) == 0
    text = capsys.readouterr().out
    chat, msgs = (json.loads(out[api].read_text()) for api in ("chat", "messages"))
    assert "mlx_lm.server has no Messages API" in text and "peer" not in msgs and msgs["overhead"] == []
    assert "API: POST /v1/messages" in text and f"turn {turns} / turn 2 TTFT (call): mlx-oss " in text
    assert f"turn {turns} / turn 2 TTFT (answer): mlx-oss " in text and ", mlx-lm" not in text
    c, m = chat["ours_runs"][0], msgs["ours_runs"][0]
    assert [(r["turn"], r["step"]) for r in m] == [(k, s) for k in range(1, turns + 1) for s in ("call", "answer")]
    # prompt, cached, completion are the server's own usage (the final message_delta's), Anthropic's way:
    # input_tokens are the uncached ones
    for r in m:
        u = r["usage"]
        assert set(u) >= {"input_tokens", "cache_read_input_tokens", "output_tokens"}, u
        assert r["prompt"] == u["input_tokens"] + u["cache_read_input_tokens"]
        assert r["cached"] == u["cache_read_input_tokens"]
        assert r["prefilled"] == u["input_tokens"] and r["completion"] == u["output_tokens"] and r["ttft"] > 0
    assert [r["completion"] for r in m] == [r["completion"] for r in c]
    # the same conversation: Messages renders a tool_use's input as compact JSON where Chat keeps the
    # client's arguments string (`{"q": "…"}`), so its prompt is shorter by `d` tokens per call in it
    d = c[1]["prompt"] - m[1]["prompt"]  # turn 1's answer: one call in the prompt
    assert d >= 0
    assert [cr["prompt"] - mr["prompt"] for cr, mr in zip(c, m)] == [d * (r["turn"] - (r["step"] == "call")) for r in m]
    # from turn 2 on every request prefills what is new since the server's cached prefix: with the
    # analysis harmony drops, that span holds exactly one call (the previous turn's call re-rendered
    # without its analysis / the call just made), so Messages prefills Chat's count less that call's `d`;
    # a server that stopped reusing the cache for /v1/messages would prefill the whole, growing prompt
    assert [r["prefilled"] for r in m[2:]] == [r["prefilled"] - d for r in c[2:]]
    assert len({r["prefilled"] for r in m[2:] if r["step"] == "call"}) == 1
    assert len({r["prefilled"] for r in m[2:] if r["step"] == "answer"}) == 1
    assert all(r["cached"] > 0 for r in m[1:]) and m[-2]["prefilled"] < m[-2]["prompt"] // 2
