"""Several clients at once (`mlx-oss serve --max-batch N`, issue 28): up to N generations decode together
through one `BatchGenerator` on the worker thread, each request exactly what it gets alone.

A real uvicorn on 127.0.0.1 around the tiny chat model (tests/server_harness.py). Replies are scripted
per request (a key in the request picks its script) or sampled for real (temperature 1, a seed each).
`Hold` keeps a request in flight without blocking the worker (a `Gate` blocks the one thread, hence the
whole batch): a request that completes while another is held proves they run at once."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

import mlx_oss
from mlx_oss.cli import main as cli_main
from server_harness import (
    MODEL_ID,
    Hold,
    Scripts,
    join_all,
    post_json,
    reply,
    running_server,
    stream_chat,
    stream_responses,
    wait_idle,
    wait_until,
)


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


class HeldScripts(Scripts):
    """Scripts, plus requests whose body contains a key of `held` get that `Hold`."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, Hold] = {}

    def __call__(self, body: dict):
        text = json.dumps(body)
        for key, hold in self.held.items():
            if key in text:
                with self.lock:
                    self.bodies.append(body)
                return [hold]
        return super().__call__(body)


def hold(tok) -> Hold:
    return Hold(tok.encode("<|channel|>final<|message|>", allowed_special="all"), tok.encode_ordinary(" la")[0],
                tok.encode(" done<|return|>", allowed_special="all"))  # fmt: skip


def _chat(text: str, **kw) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": text}], **kw}


def _in_threads(fns: dict) -> dict:
    """Run each `fns[name]()` in its own thread at once; -> name -> its result (or the exception it raised)."""
    out: dict = {}

    def run(name, fn):
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - the test reports it
            out[name] = e

    threads = [threading.Thread(target=run, args=(n, f), daemon=True) for n, f in fns.items()]
    for t in threads:
        t.start()
    assert join_all(threads, 240), "a client hung"
    return out


# ----------------------------------------------------------------------------- the four ways in, at once


def _chat_plain(url, key):
    r = post_json(url, "/chat/completions", _chat(f"{key} please"))
    assert r.status_code == 200, r.text
    j = r.json()
    return j["choices"][0]["message"]["content"], j["usage"]["completion_tokens"], j["choices"][0]["finish_reason"]


def _chat_stream(url, key):
    status, chunks, done = stream_chat(url, _chat(f"{key} please", stream=True, stream_options={"include_usage": True}))
    assert status == 200 and done
    text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])
    reason = [c["finish_reason"] for ch in chunks for c in ch["choices"] if c["finish_reason"]]
    return text, chunks[-1]["usage"]["completion_tokens"], reason[0]


def _responses_plain(url, key):
    r = post_json(url, "/responses", {"model": MODEL_ID, "input": f"{key} please"})
    assert r.status_code == 200, r.text
    j = r.json()
    return j["output_text"] if "output_text" in j else _output_text(j), j["usage"]["output_tokens"], j["status"]


def _output_text(resp: dict) -> str:
    return "".join(c["text"] for o in resp["output"] if o["type"] == "message" for c in o["content"]
                   if c["type"] == "output_text")  # fmt: skip


def _responses_stream(url, key):
    status, events = stream_responses(url, {"model": MODEL_ID, "input": f"{key} please", "stream": True})
    assert status == 200
    resp = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == _output_text(resp)
    return text, resp["usage"]["output_tokens"], resp["status"]


def test_four_concurrent_clients_each_get_their_own_reply_and_usage(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    answers = {"alpha": "the first answer", "bravo": "second, longer answer here", "charlie": "third",
               "delta": "a fourth answer with more words in it"}  # fmt: skip
    for key, answer in answers.items():
        scripts.keyed[key] = reply(tok, final=answer)
    ways = {"alpha": _chat_plain, "bravo": _chat_stream, "charlie": _responses_plain, "delta": _responses_stream}
    with running_server(model, tok, scripts, max_context=1024, max_batch=4) as (url, app):
        got = _in_threads({k: (lambda f=f, k=k: f(url, k)) for k, f in ways.items()})
        wait_idle(app)
        assert dict(app.state.backend.outcomes) == {"stop": 4}
    for key, answer in answers.items():
        text, used, end = got[key]
        assert (text, used) == (answer, len(reply(tok, final=answer))), key
        assert end in ("stop", "completed"), key


# ----------------------------------------------------------------------------- exact: batched == alone


SAMPLED = {"one": ("tell me a story about boats", 11), "two": ("why", 22), "three": ("list three fruits, then stop", 33)}


def _sampled(url, name, stream=False):
    text, seed = SAMPLED[name]
    body = _chat(text, temperature=1.0, seed=seed, max_tokens=14)
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
        status, chunks, done = stream_chat(url, body)
        assert status == 200 and done
        return "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"]), chunks[-1]["usage"][
            "completion_tokens"]  # fmt: skip
    r = post_json(url, "/chat/completions", body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"], r.json()["usage"]["completion_tokens"]


def _solo(model, tok) -> dict:
    """Each sampled request alone, on a one-at-a-time server (`--max-batch 1`: the engine)."""
    with running_server(model, tok, Scripts(), max_context=1024) as (url, app):
        return {name: _sampled(url, name) for name in SAMPLED}


def test_seeded_sampling_at_once_equals_each_request_alone(model_tok):
    model, tok = model_tok
    alone = _solo(model, tok)
    assert len({v[0] for v in alone.values()}) == 3  # three different replies
    with running_server(model, tok, Scripts(), max_context=1024, max_batch=4) as (url, app):
        together = _in_threads({n: (lambda n=n: _sampled(url, n, stream=n == "two")) for n in SAMPLED})
    assert together == alone


def test_a_client_that_leaves_mid_stream_ends_only_its_sequence(model_tok):
    model, tok = model_tok
    alone = _solo(model, tok)
    scripts = HeldScripts()
    held = scripts.held["leaver"] = hold(tok)
    with running_server(model, tok, scripts, max_context=4096, max_batch=4) as (url, app):
        backend = app.state.backend
        got_chunks = threading.Event()
        leave = threading.Event()

        def leaver():
            body = _chat("leaver", stream=True, max_tokens=3000)
            with httpx.stream("POST", url + "/chat/completions", json=body, timeout=120) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if i >= 4:
                        got_chunks.set()
                        leave.wait(120)
                        return "left"  # closes the connection mid-stream
            return "ended"  # not expected: the hold never ends by itself

        t = threading.Thread(target=lambda: out.__setitem__("leaver", leaver()), daemon=True)
        out: dict = {}
        t.start()
        wait_until(got_chunks.is_set, "the leaving client reads its first chunks")
        others = {n: (lambda n=n: _sampled(url, n)) for n in SAMPLED}

        def leave_when_all_run():
            wait_until(lambda: backend.worker.running == 4, "all four in the batch")
            leave.set()

        watcher = threading.Thread(target=leave_when_all_run, daemon=True)
        watcher.start()
        together = _in_threads(others)
        assert join_all([t, watcher], 60)
        wait_idle(app)
        assert out["leaver"] == "left" and held.entered.is_set() and not held.release.is_set()
        assert backend.outcomes["cancelled"] == 1 and backend.outcomes["length"] + backend.outcomes["stop"] == 3
    assert together == alone


# ----------------------------------------------------------------------------- concurrency, the queue


def test_a_request_completes_while_another_is_held_in_flight(model_tok):
    model, tok = model_tok
    scripts = HeldScripts()
    held = scripts.held["holdme"] = hold(tok)
    scripts.keyed["quick"] = reply(tok, final="quick answer")
    with running_server(model, tok, scripts, max_context=4096, max_batch=2) as (url, app):
        out: dict = {}
        a = threading.Thread(target=lambda: out.__setitem__("a", _chat_plain(url, "holdme")), daemon=True)
        a.start()
        wait_until(held.entered.is_set, "A in flight")
        assert _chat_plain(url, "quick") == ("quick answer", len(reply(tok, final="quick answer")), "stop")
        assert a.is_alive() and "a" not in out  # impossible one at a time: A never ends unless released
        held.release.set()
        a.join(120)
        text, used, end = out["a"]
        assert end == "stop" and text == " la" * held.held + " done" and used == len(held.head) + held.held + len(held.tail)
        wait_idle(app)


def test_max_queue_counts_beyond_the_batch_and_refuses_the_next(model_tok):
    model, tok = model_tok
    scripts = HeldScripts()
    holds = {k: hold(tok) for k in ("held-a", "held-b", "held-c")}
    scripts.held.update(holds)
    with running_server(model, tok, scripts, max_context=4096, max_batch=2, max_queue=1) as (url, app):
        worker = app.state.backend.worker
        out: dict = {}
        threads = []
        for key in holds:
            t = threading.Thread(target=lambda k=key: out.__setitem__(k, _chat_plain(url, k)), daemon=True)
            t.start()
            threads.append(t)
            if key != "held-c":
                wait_until(holds[key].entered.is_set, f"{key} running")
        wait_until(lambda: worker.waiting == 1, "the third request waits")
        assert worker.running == 2
        r = post_json(url, "/chat/completions", _chat("the fourth"))
        assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        for h in holds.values():
            h.release.set()
        assert join_all(threads, 120)
        assert all(out[k][2] == "stop" and out[k][0].endswith(" done") for k in holds)
        wait_idle(app)


# ----------------------------------------------------------------------------- the prompt cache


def test_a_conversation_continued_after_a_batched_turn_reuses_its_prefix(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    scripts.keyed["opening"] = reply(tok, final="A reply")
    scripts.keyed["other words"] = reply(tok, final="B reply")
    scripts.keyed["A again"] = reply(tok, final="A reply 2")
    a = [{"role": "user", "content": "conversation A opening words"}]
    b = [{"role": "user", "content": "conversation B, other words"}]
    with running_server(model, tok, scripts, max_context=1024, max_batch=2) as (url, app):
        first = _in_threads({n: (lambda m=m: post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": m}))
                             for n, m in (("A1", a), ("B1", b))})  # fmt: skip
        u1 = {n: r.json()["usage"] for n, r in first.items()}
        a2 = a + [{"role": "assistant", "content": "A reply"}, {"role": "user", "content": "A again"}]
        u2 = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": a2}).json()["usage"]
        b2 = b + [{"role": "assistant", "content": "B reply"}, {"role": "user", "content": "A again, for B"}]
        scripts.keyed["for B"] = reply(tok, final="B reply 2")
        u3 = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": b2}).json()["usage"]
    for first_turn, second in ((u1["A1"], u2), (u1["B1"], u3)):
        # the whole first turn but its last token (<|return|>, rendered <|end|> in the history) comes from the cache
        assert second["prompt_tokens_details"]["cached_tokens"] == first_turn["prompt_tokens"] + first_turn[
            "completion_tokens"] - 1  # fmt: skip


# ----------------------------------------------------------------------------- the flag


def test_max_batch_flag_is_a_positive_int_defaulting_to_1(capsys):
    parser = cli_main.build_parser()
    assert parser.parse_args(["serve", "-m", "x"]).max_batch == 1
    assert parser.parse_args(["serve", "-m", "x", "--max-batch", "4"]).max_batch == 4
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["serve", "-m", "x", "--max-batch", bad])
        assert e.value.code == 2
    capsys.readouterr()


def test_max_batch_with_hosts_is_a_one_line_usage_error(tmp_path, capsys):
    hosts = tmp_path / "hosts.json"
    hosts.write_text('[{"ssh": "a"}, {"ssh": "b"}]')
    assert cli_main.main(["serve", "-m", str(tmp_path), "--max-batch", "2", "--hosts", str(hosts)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-batch" in err and "--hosts" in err, err


def test_create_app_refuses_max_batch_with_a_leader_engine(model_tok):
    from mlx_oss.distributed.engine import LeaderEngine
    from mlx_oss.server.backend import Backend

    model, tok = model_tok
    with pytest.raises(ValueError, match="max_batch"):
        Backend(model, tok, max_batch=2, engine_class=LeaderEngine)


# ----------------------------------------------------------------------------- built-in tool rounds


def _builtin_round(tok, call=None, final=None) -> list[int]:
    parts = ["<|channel|>analysis<|message|>Let me look.<|end|>"]
    if call is not None:
        parts.append(f"<|channel|>analysis to={call[0]} code<|message|>{call[1]}<|call|>")
    if final is not None:
        parts.append(f"<|channel|>final<|message|>{final}<|return|>")
    return tok.encode("<|start|>assistant".join(parts), allowed_special="all")


def test_builtin_tool_rounds_run_in_the_batch_as_alone(model_tok):
    """Two responses with a browser call each (the server runs it: each round a new `add`, the second from
    the first's state in the pool) and a chat request, at once: the same items and token counts as alone."""
    model, tok = model_tok
    search = ("browser.search", '{"query": "mlx"}')  # the default server browser has no search: an error result
    finals = {"search boats": "No boats.", "search trains, fast": "No trains here, sorry."}
    scripts = Scripts()
    for key, final in finals.items():
        scripts.keyed[key] = _builtin_round(tok, call=search) + _builtin_round(tok, final=final)
    scripts.keyed["plain chat"] = reply(tok, final="plain")

    def ask(url, key):
        body = {"model": MODEL_ID, "input": key, "tools": [{"type": "web_search"}], "store": False}
        r = post_json(url, "/responses", body)
        assert r.status_code == 200, r.text
        j = r.json()
        u = j["usage"]
        return ([o["type"] for o in j["output"]], _output_text(j), u["input_tokens"], u["output_tokens"],
                u["input_tokens_details"]["cached_tokens"])  # fmt: skip

    alone = {}
    for key in finals:  # each on a fresh one-at-a-time server: nothing cached before its first round
        with running_server(model, tok, scripts, max_context=2048) as (url, app):
            alone[key] = ask(url, key)
    with running_server(model, tok, scripts, max_context=2048, max_batch=3) as (url, app):
        fns = {k: (lambda k=k: ask(url, k)) for k in finals}
        fns["plain chat"] = lambda: _chat_plain(url, "plain chat")
        together = _in_threads(fns)
        wait_idle(app)
    assert together["plain chat"][0] == "plain"
    for key, final in finals.items():
        types, text, given, used, cached = together[key]
        assert types == ["reasoning", "web_search_call", "reasoning", "message"] and text == final
        assert (types, text, given, used) == alone[key][:4]
        assert cached >= alone[key][4] > 0  # round 2 resumed round 1 (more if a shared prefix was cached too)
