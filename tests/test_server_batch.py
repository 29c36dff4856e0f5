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
import jsonschema
import pytest

import mlx_oss
from mlx_oss.cli import main as cli_main
from server_harness import (
    MODEL_ID,
    Gate,
    Hold,
    Scripts,
    join_all,
    post_json,
    reply,
    running_server,
    sdk_client,
    stream_chat,
    stream_responses,
    wait_idle,
    wait_until,
)
from test_server_structured import BUDGET, LIMIT, PARAMS, TOOL_R, USER, WEATHER, Weather, _valid


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


def test_a_conversation_continued_after_a_batched_turn_reuses_its_prefix(model_tok, monkeypatch):
    """`cached_tokens` as reported, and as done: the prompt tokens the model is fed for the second turn are
    only those past the cached prefix (the pool's state goes into the batch, not just its length)."""
    model, tok = model_tok
    fed: list[int] = []
    real = type(model).__call__
    monkeypatch.setattr(type(model), "__call__", lambda self, x, cache, **kw: (fed.append(x.shape[1]), real(self, x, cache, **kw))[1])
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
        fed.clear()
        u2 = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": a2}).json()["usage"]
        assert sum(fed) == u2["prompt_tokens"] - u2["prompt_tokens_details"]["cached_tokens"], fed
        b2 = b + [{"role": "assistant", "content": "B reply"}, {"role": "user", "content": "A again, for B"}]
        scripts.keyed["for B"] = reply(tok, final="B reply 2")
        u3 = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": b2}).json()["usage"]
    for first_turn, second in ((u1["A1"], u2), (u1["B1"], u3)):
        # the whole first turn but its last token (<|return|>, rendered <|end|> in the history) comes from the cache
        assert second["prompt_tokens_details"]["cached_tokens"] == first_turn["prompt_tokens"] + first_turn[
            "completion_tokens"] - 1  # fmt: skip


def test_a_new_conversation_with_the_same_instructions_reuses_them_after_a_batched_turn(model_tok):
    """The instructions' end is a snapshot boundary in a batch too (`BatchRunner` hands the turn's boundaries to
    the batch): a new conversation with the same system message, after one served in a batch, starts from the
    cache at the instructions' end (past the 8-token sliding window, so only a ring snapshot there allows it),
    exactly as one at a time."""
    model, tok = model_tok
    system = {"role": "system", "content": "Shared instructions, long enough to pass the sliding window of eight."}
    cached = {}
    for max_batch in (1, 2):
        scripts = Scripts()
        scripts.keyed["first"] = reply(tok, final="one")
        scripts.keyed["second"] = reply(tok, final="two")
        with running_server(model, tok, scripts, max_context=1024, max_batch=max_batch) as (url, app):
            for text in ("the first question", "the second question, another one"):
                body = {"model": MODEL_ID, "messages": [system, {"role": "user", "content": text}]}
                usage = post_json(url, "/chat/completions", body).json()["usage"]
        cached[max_batch] = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached[2] == cached[1] and cached[1] > 20, cached


# ----------------------------------------------------------------------------- the flag


def test_max_batch_flag_is_a_positive_int_or_auto_by_default(capsys):
    parser = cli_main.build_parser()
    assert parser.parse_args(["serve", "-m", "x"]).max_batch == "auto"
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
    with pytest.raises(ValueError) as e:
        Backend(model, tok, max_batch=2, engine_class=LeaderEngine)
    assert str(e.value) == "batched generation (max_batch > 1) is not supported in a group (--hosts) yet"


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


# ----------------------------------------------------------------------------- constraints and logprobs, at once


class _Seen:
    """A logits processor that changes nothing and logs (name, jobs running on the worker) at every sampling
    step of its request: two requests whose steps interleave in the log decoded at the same time."""

    def __init__(self, log: list, name: str, app_of) -> None:
        self.log, self.name, self.app_of = log, name, app_of

    def __call__(self, context, logits):
        self.log.append((self.name, self.app_of().state.backend.worker.running))
        return logits


LOGPROB_ANSWER = "Each of us gets what is ours, token by token"
CLIENTS = {"strict-answer": 7, "strict-tool": 8, "with-logprobs": 9}  # the user's words, and the seed of each


def _sdk_clients(client) -> dict:
    """Three openai SDK clients, each streaming: a strict JSON-schema answer (chat, `response_format` from a
    pydantic model), a call to a named strict function tool (responses), logprobs of a scripted answer (chat)."""

    def strict_answer():
        with client.chat.completions.stream(model=MODEL_ID, messages=[{"role": "user", "content": "strict-answer"}],
                                            response_format=Weather, seed=CLIENTS["strict-answer"],
                                            max_completion_tokens=LIMIT, extra_body={"reasoning": BUDGET},
                                            stream_options={"include_usage": True}) as s:  # fmt: skip
            deltas = "".join(ev.delta for ev in s if ev.type == "content.delta")
            r = s.get_final_completion()
        c = r.choices[0]
        assert deltas == c.message.content
        return c.finish_reason, c.message.content, c.message.parsed, r.usage.completion_tokens

    def strict_tool():
        events = list(client.responses.create(model=MODEL_ID, input="strict-tool", tools=[TOOL_R], reasoning=BUDGET,
                                              tool_choice={"type": "function", "name": "get_weather"},
                                              max_output_tokens=LIMIT, stream=True,
                                              extra_body={"seed": CLIENTS["strict-tool"]}))  # fmt: skip
        assert events[-1].type == "response.completed", events[-1]
        r = events[-1].response
        calls = [(it.name, it.arguments) for it in r.output if it.type == "function_call"]
        streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert len(calls) == 1 and calls[0][1] == streamed
        return r.status, calls[0], [it.type for it in r.output], r.usage.output_tokens

    def with_logprobs():
        text, entries, reason = "", [], None
        for chunk in client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "with-logprobs"}],
                                                    logprobs=True, top_logprobs=2, stream=True, temperature=1.0,
                                                    seed=CLIENTS["with-logprobs"], max_tokens=60,
                                                    stream_options={"include_usage": True}):  # fmt: skip
            for c in chunk.choices:
                text += c.delta.content or ""
                entries += [e.model_dump() for e in (c.logprobs.content if c.logprobs else None) or []]
                reason = c.finish_reason or reason
        return reason, text, entries

    return {"strict-answer": strict_answer, "strict-tool": strict_tool, "with-logprobs": with_logprobs}


def _clients_hook(tok, log: list, app_of, gate=None):
    """The sampling hook of the three clients: each gets a `_Seen` (the logprobs one then its scripted answer);
    a request with "blocker" in it gets `gate`, then a short scripted reply."""
    from mlx_oss.sampling import ScriptedTokens

    def hook(body):
        text = json.dumps(body)
        if "blocker" in text:
            return [gate, ScriptedTokens(reply(tok, final="blocker"))]
        name = next(n for n in CLIENTS if n in text)
        seen = _Seen(log, name, app_of)
        if name == "with-logprobs":
            return [seen, ScriptedTokens(reply(tok, analysis="hm", final=LOGPROB_ANSWER))]
        return [seen]

    return hook


def test_sdk_clients_with_different_constraints_decode_together_each_as_alone(model_tok):
    """A strict answer schema, a named strict tool and logprobs, streamed by three SDK clients in one batch:
    each reply is its own (the schema valid, the call's arguments valid, the logprobs' tokens its text) and
    equal to what the same request gets alone. Guards that each sequence keeps its own `Sampler.extra`
    (generation.py `generation_program`: a fresh `turn.constraint` per request), its own logprob records
    (`_RoundOutput.feed` / `TokenOutput`) and its own row of the batch's logits (batch.py `step`: `logits[b]`)."""
    model, tok = model_tok
    alone_log: list = []
    holder: dict = {}
    solo_hook = _clients_hook(tok, alone_log, lambda: holder["solo"])
    with running_server(model, tok, solo_hook, max_context=1024) as (url, app):
        holder["solo"] = app
        fns = _sdk_clients(sdk_client((url,)))
        alone = {name: fn() for name, fn in fns.items()}  # one after another, on the one-at-a-time engine
    log: list = []
    gate = Gate()
    with running_server(model, tok, _clients_hook(tok, log, lambda: holder["batch"], gate), max_context=1024,
                        max_batch=4) as (url, app):  # fmt: skip
        holder["batch"] = app
        worker = app.state.backend.worker
        blocker = threading.Thread(target=lambda: post_json(url, "/chat/completions", _chat("blocker")), daemon=True)
        blocker.start()
        wait_until(gate.entered.is_set, "the blocker holds the worker")  # so the three join the batch at once
        fns = _sdk_clients(sdk_client((url,)))
        queued: list = []

        def release_when_queued():
            try:
                wait_until(lambda: worker.waiting == 3, "the three queued", 30)
                queued.append(worker.running)
            finally:
                gate.release.set()

        threading.Thread(target=release_when_queued, daemon=True).start()
        together = _in_threads(fns)
        assert queued == [1]  # the three waited together while the blocker held the worker
        assert join_all([blocker], 60)
        wait_idle(app)
        assert app.state.backend.outcomes == {"stop": 3, "tool_call": 1}
    for name, got in together.items():
        assert not isinstance(got, Exception), (name, got)
    # they decoded at once: each one's steps lie between the others' first and last (alone: one after another)
    steps = {n: [i for i, (m, _) in enumerate(log) if m == n] for n in CLIENTS}
    for a in CLIENTS:
        for b in CLIENTS:
            assert steps[a][0] < steps[b][-1], (a, b)
        assert max(r for m, r in log if m == a) >= 3, a
    assert all(r == 1 for _, r in alone_log)
    reason, content, parsed, _ = together["strict-answer"]
    # random weights: only the constraint can make it valid
    assert reason == "stop" and isinstance(parsed, Weather), content
    status, (fn_name, arguments), kinds, _ = together["strict-tool"]
    assert status == "completed" and fn_name == "get_weather" and kinds[-1] == "function_call"
    jsonschema.validate(json.loads(arguments), PARAMS)
    reason, text, entries = together["with-logprobs"]
    assert reason == "stop" and text == LOGPROB_ANSWER and "".join(e["token"] for e in entries) == text
    assert together["strict-answer"] == alone["strict-answer"] and together["strict-tool"] == alone["strict-tool"]
    assert alone["with-logprobs"][:2] == (reason, text)
    _same_logprobs(entries, alone["with-logprobs"][2])


def _same_logprobs(entries: list[dict], alone: list[dict]) -> None:
    """Logprob entries (tokens, top tokens) equal to those of the same request alone, their values up to rounding."""
    assert [(e["token"], [t["token"] for t in e["top_logprobs"]]) for e in entries] == [
        (a["token"], [t["token"] for t in a["top_logprobs"]]) for a in alone
    ]
    for e, a in zip(entries, alone):
        assert e["logprob"] == pytest.approx(a["logprob"], abs=1e-3)
        tops = [t["logprob"] for t in e["top_logprobs"]]
        assert tops == pytest.approx([t["logprob"] for t in a["top_logprobs"]], abs=1e-3)


# ----------------------------------------------------------------------------- a client leaves a full batch


def _held_stream(url: str, key: str) -> tuple:
    """A streamed chat request (its `Hold` keeps it going) with logprobs: (text, logprob entries, reason, usage)."""
    body = _chat(key, stream=True, stream_options={"include_usage": True}, logprobs=True, top_logprobs=2)
    status, chunks, done = stream_chat(url, body)
    assert status == 200 and done
    text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])
    entries = [e for ch in chunks for c in ch["choices"] for e in ((c.get("logprobs") or {}).get("content") or [])]
    reason = [c["finish_reason"] for ch in chunks for c in ch["choices"] if c["finish_reason"]]
    return text, entries, reason, chunks[-1]["usage"]["completion_tokens"]


def test_a_client_leaving_a_full_batch_frees_its_place_for_the_queue_and_the_other_goes_on_as_alone(model_tok):
    """`--max-batch 2`, both places held (the leaver, the stayer) and a third request queued: the leaver drops
    its stream and the queued request runs in its place and completes while the stayer is still held; the
    stayer then ends with exactly the tokens and logprobs it gets alone. Guards the cancel path of a batched
    sequence: generation.py `BatchRunner.step` (`should_stop` -> `batch.cancel`, the ended program leaves the
    runner), worker.py `_serve_batch` (a place freed is taken from the queue) and batch.py `step` (a sequence
    leaving does not shift the others' caches or logits rows)."""
    model, tok = model_tok
    scripts = HeldScripts()
    leaving, staying = scripts.held["leaver"], scripts.held["stayer"] = hold(tok), hold(tok)
    scripts.keyed["queued"] = reply(tok, final="my turn now")
    with running_server(model, tok, scripts, max_context=8192, max_batch=2) as (url, app):
        backend, worker = app.state.backend, app.state.backend.worker
        read, leave = threading.Event(), threading.Event()
        out: dict = {}

        def leaver():
            with httpx.stream("POST", url + "/chat/completions", json=_chat("leaver", stream=True), timeout=120) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if i >= 4:
                        read.set()
                        leave.wait(120)
                        return "left"  # closes the connection mid-stream
            return "ended"

        def run(name, fn):
            out[name] = fn()

        threads = {"leaver": threading.Thread(target=run, args=("leaver", leaver), daemon=True),
                   "stayer": threading.Thread(target=run, args=("stayer", lambda: _held_stream(url, "stayer")), daemon=True),
                   "queued": threading.Thread(target=run, args=("queued", lambda: _chat_plain(url, "queued")), daemon=True)}  # fmt: skip
        threads["leaver"].start()
        wait_until(read.is_set, "the leaver reads its first chunks")
        threads["stayer"].start()
        wait_until(staying.entered.is_set, "the stayer in flight")
        threads["queued"].start()
        wait_until(lambda: worker.waiting == 1, "the third request queued")
        assert worker.running == 2 and "queued" not in out  # no place for it while both are held
        leave.set()
        threads["queued"].join(20)
        assert out.get("queued") == ("my turn now", len(reply(tok, final="my turn now")), "stop")
        assert threads["stayer"].is_alive() and not staying.release.is_set()  # the leaver's place, not the stayer's
        assert out["leaver"] == "left" and not leaving.release.is_set() and backend.outcomes["cancelled"] == 1
        held = staying.held
        staying.release.set()
        assert join_all(threads.values(), 60)
        wait_idle(app)
        assert dict(backend.outcomes) == {"cancelled": 1, "stop": 2}
    text, entries, reason, used = out["stayer"]
    assert reason == ["stop"] and text == " la" * staying.held + " done" and staying.held >= held
    solo_scripts = HeldScripts()
    solo_scripts.held["stayer"] = Hold(staying.head, staying.filler, staying.tail, limit=staying.held)  # never released
    with running_server(model, tok, solo_scripts, max_context=8192) as (url, app):
        alone = _held_stream(url, "stayer")
    assert (text, reason, used) == (alone[0], alone[2], alone[3])
    assert "".join(e["token"] for e in entries) == text
    _same_logprobs(entries, alone[1])


# ----------------------------------------------------------------------------- a strict answer cut by the limit


def _cut_requests(url: str) -> dict:
    """A strict Weather answer with room for 6 tokens, four ways (responses / chat, plain / streamed)."""
    fmt = {"type": "json_schema", "name": "Weather", "schema": WEATHER, "strict": True}
    resp = {"model": MODEL_ID, "input": USER, "text": {"format": fmt}, "seed": 1, "reasoning": {"max_tokens": 0},
            "max_output_tokens": 6}  # fmt: skip
    chat = {"model": MODEL_ID, "messages": USER, "seed": 1, "max_tokens": 6, "reasoning": {"max_tokens": 0},
            "response_format": {"type": "json_schema", "json_schema": {"name": "W", "schema": WEATHER, "strict": True}}}  # fmt: skip

    def responses_plain():
        r = post_json(url, "/responses", resp).json()
        msg = [it for it in r["output"] if it["type"] == "message"]
        return r["status"], r["incomplete_details"], msg[-1]["status"], msg[-1]["content"][0]["text"]

    def responses_stream():
        status, events = stream_responses(url, {**resp, "stream": True})
        assert status == 200
        r = events[-1]["response"]
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        return events[-1]["type"], r["status"], r["incomplete_details"], text

    def chat_plain():
        c = post_json(url, "/chat/completions", chat).json()["choices"][0]
        return c["finish_reason"], c["message"]["content"]

    def chat_stream():
        status, chunks, done = stream_chat(url, {**chat, "stream": True})
        assert status == 200 and done
        text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])
        return [c["finish_reason"] for ch in chunks for c in ch["choices"] if c["finish_reason"]], text

    return {"responses": responses_plain, "responses-stream": responses_stream, "chat": chat_plain,
            "chat-stream": chat_stream}  # fmt: skip


def test_a_strict_answer_cut_by_the_limit_in_a_batch_is_incomplete_as_alone(model_tok):
    """The four ways of test_server_structured's cut reply, at once and beside a held request: each reports
    incomplete / length with the same cut text as alone. Guards the "length" end of a batched round (batch.py
    `_done` -> generation.py `_RoundOutput.result`: the open message closed incomplete) under a constraint."""
    model, tok = model_tok
    with running_server(model, tok, Scripts(), max_context=1024) as (url, app):
        alone = {name: fn() for name, fn in _cut_requests(url).items()}
    scripts = HeldScripts()
    held = scripts.held["holdme"] = hold(tok)
    with running_server(model, tok, scripts, max_context=4096, max_batch=5) as (url, app):
        out: dict = {}
        holder = threading.Thread(target=lambda: out.__setitem__("held", _chat_plain(url, "holdme")), daemon=True)
        holder.start()
        wait_until(held.entered.is_set, "the held request in flight")
        together = _in_threads(_cut_requests(url))
        assert holder.is_alive() and not held.release.is_set()  # they ran beside it
        held.release.set()
        assert join_all([holder], 60) and out["held"][2] == "stop"
        wait_idle(app)
        assert dict(app.state.backend.outcomes) == {"length": 4, "stop": 1}
    assert together == alone
    incomplete = {"reason": "max_output_tokens"}
    status, details, item_status, text = together["responses"]
    assert (status, details, item_status) == ("incomplete", incomplete, "incomplete")
    assert text and not _valid(Weather, text)
    assert together["responses-stream"][:3] == ("response.incomplete", "incomplete", incomplete)
    assert together["chat"][0] == "length" and not _valid(Weather, together["chat"][1])
    assert together["chat-stream"][0][-1] == "length"
