"""Structured output (issue 27): JSON schemas enforced on the content that must conform, by
`ReplyConstraint` over llguidance (`grammar.py`), and the reasoning budget.

Two levels: the processor alone over random logits (what each position allows: analysis free, the
answer's grammar switched on only after its header, the end token only where the document is
complete, the budget's forced close), and `Chat` on the random-weight synthetic model, where nothing
but the constraint can make a reply valid: every seed validates with `jsonschema` when strict, none
when the format is only described."""

from __future__ import annotations

import json

import jsonschema
import mlx.core as mx
import numpy as np
import pytest

import mlx_oss
from mlx_oss import tokenizer as tk
from mlx_oss.constraint import ReplyConstraint, call_header, channel_header, reply_constraint
from mlx_oss.grammar import ANY_JSON_OBJECT, GrammarError, Grammars
from mlx_oss.harmony import ANALYSIS, FINAL, Role, parse_completion
from mlx_oss.sampling import SamplingConfig, ScriptedTokens
from mlx_oss.tools import Tool, schema_from_callable

ENC = tk.load_tokenizer()
ASSISTANT = ENC.encode_ordinary("assistant")

from bounded_schemas import CITY, PERSON  # noqa: E402


@pytest.fixture(scope="module")
def grammars():
    return Grammars(ENC)


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


class Driver:
    """Calls a processor as the sampler does (context so far, then logits); greedy over random
    logits unless a token is given. -> the allowed set at each step."""

    def __init__(self, c: ReplyConstraint, seed: int = 0) -> None:
        self.c, self.ctx, self.rng = c, [tk.START, *ASSISTANT], np.random.default_rng(seed)
        self.logits: np.ndarray | None = None

    def allowed(self, tok: int | None = None) -> np.ndarray:
        if tok is not None:
            self.ctx.append(tok)
        self.logits = self.rng.standard_normal(tk.N_VOCAB).astype(np.float32)
        out = np.array(self.c(mx.array(self.ctx, dtype=mx.int32), mx.array(self.logits[None]))[0])
        kept = np.isfinite(out)
        assert np.array_equal(out[kept], self.logits[kept])  # allowed tokens keep their logits exactly
        return kept

    def greedy(self, tok: int | None = None) -> int:
        kept = self.allowed(tok)
        return int(np.argmax(np.where(kept, self.logits, -np.inf)))

    def run(self, tok: int | None = None, steps: int = 400) -> list[int]:
        """Greedy from here (`tok`: the token sampled last, not yet fed) until a stop token; -> the
        tokens after `tok`."""
        out = []
        for _ in range(steps):
            tok = self.greedy(tok)
            out.append(tok)
            if tok in (tk.RETURN, tk.CALL):
                break
        self.ctx.append(tok)
        return out


def _ids(text: str) -> list[int]:
    return ENC.encode(text, allowed_special="all")


# ----------------------------------------------------------------------------- the processor


def test_analysis_is_free_and_the_grammar_starts_only_after_the_final_header(grammars):
    c = reply_constraint(ENC, answer=grammars.json_schema(PERSON), grammars=grammars)
    d = Driver(c)
    final, analysis = channel_header(FINAL, ENC), channel_header(ANALYSIS, ENC)
    assert set(np.flatnonzero(d.allowed())) == {final.tokens[0]}  # both headers start with <|channel|>
    tok = analysis.tokens[0]
    for t in analysis.tokens[1:]:  # the analysis header, then its content
        d.allowed(tok)
        tok = t
    ordinary = d.allowed(tok)
    assert ordinary[: tk.FIRST_SPECIAL].all()  # analysis: every ordinary token, logits untouched
    assert set(np.flatnonzero(ordinary[tk.FIRST_SPECIAL :]) + tk.FIRST_SPECIAL) == {tk.END}
    for t in _ids(" let me think"):
        assert d.allowed(t)[: tk.FIRST_SPECIAL].all() and c.matcher is None
    # after the analysis: only the final header (no tools), each of its tokens unconstrained by JSON
    assert set(np.flatnonzero(d.allowed(tk.END))) == {tk.START}
    tok = tk.START
    for t in ASSISTANT:
        d.allowed(tok)
        tok = t
    for t in final.tokens:
        assert set(np.flatnonzero(d.allowed(tok))) == {t} and c.matcher is None
        tok = t
    first = d.allowed(tok)  # inside the answer: the grammar's mask
    assert c.matcher is not None and set(ENC.decode([int(i)]) for i in np.flatnonzero(first)) == {'{"'}


def test_the_answer_ends_only_where_the_document_is_complete_and_holds_no_markup(grammars):
    for seed in range(4):
        c = reply_constraint(ENC, answer=grammars.json_schema(PERSON), grammars=grammars, reasoning_budget=3)
        d = Driver(c, seed)
        out, tok = [], None
        for _ in range(300):
            kept = d.allowed(tok)
            in_answer = c.matcher is not None
            if in_answer:
                assert not kept[tk.FIRST_SPECIAL :].any() or set(np.flatnonzero(kept[tk.FIRST_SPECIAL :])) == {
                    tk.RETURN - tk.FIRST_SPECIAL}  # fmt: skip
                assert kept[tk.RETURN] == c.matcher.accepting  # the end only where the document is complete
            tok = int(np.argmax(np.where(kept, d.logits, -np.inf)))
            out.append(tok)
            if tok == tk.RETURN:
                break
        msgs = parse_completion(out, Role.ASSISTANT, ENC)
        assert msgs[-1].channel == FINAL and out[-1] == tk.RETURN
        jsonschema.validate(json.loads(msgs[-1].text), PERSON)


def test_the_reasoning_budget_closes_the_analysis_and_opens_the_answer(grammars):
    for budget in (0, 1, 5):
        c = reply_constraint(ENC, answer=grammars.json_schema(CITY), grammars=grammars, reasoning_budget=budget)
        d = Driver(c)
        out = [*channel_header(ANALYSIS, ENC).tokens] if budget else []
        tok = None
        for t in out:  # open the analysis (budget 0: the analysis header is not even offered)
            assert d.allowed(tok)[t]
            tok = t
        if budget == 0:
            d.allowed()
            assert set(np.flatnonzero(d.allowed(channel_header(FINAL, ENC).tokens[0]))) == {channel_header(FINAL, ENC).tokens[1]}
            rest = [*channel_header(FINAL, ENC).tokens[:2], *d.run(channel_header(FINAL, ENC).tokens[1])]
        else:
            for i in range(budget):  # free analysis tokens (never the end: the random logits ignore it)
                kept = d.allowed(tok)
                assert kept[: tk.FIRST_SPECIAL].all()
                tok = _ids(" hmm")[0]
                out.append(tok)
            assert set(np.flatnonzero(d.allowed(tok))) == {tk.END}  # the budget is spent
            assert c.reasoning_tokens == budget
            rest = [tk.END, *d.run(tk.END)]
        msgs = parse_completion(out + rest, Role.ASSISTANT, ENC)
        assert [m.channel for m in msgs] == ([ANALYSIS] if budget else []) + [FINAL]
        jsonschema.validate(json.loads(msgs[-1].text), CITY)


def test_a_budget_alone_leaves_headers_to_the_model_until_it_is_spent():
    c = reply_constraint(ENC, reasoning_budget=3)
    d = Driver(c)
    tok = None
    for t in _ids("<|channel|>analysis<|message|>a b c"):
        assert d.allowed(tok).all() or tok == tk.MESSAGE  # the model's own header, then its analysis
        tok = t
    assert set(np.flatnonzero(d.allowed(tok))) == {tk.END}
    assert set(np.flatnonzero(d.allowed(tk.END))) == {tk.START}
    rest = d.run(tk.START)
    msgs = parse_completion([*_ids("<|channel|>analysis<|message|>a b c<|end|><|start|>"), *rest], Role.ASSISTANT, ENC)
    assert [m.channel for m in msgs] == [ANALYSIS, FINAL]


@pytest.mark.parametrize("header", [
    " to=functions.book<|channel|>commentary <|constrain|>json<|message|>",  # our renderer's form
    "<|channel|>commentary to=functions.book <|constrain|>json<|message|>",  # the other form gpt-oss writes
])  # fmt: skip
def test_a_strict_functions_arguments_follow_its_schema_whatever_header_form_the_model_writes(grammars, header):
    c = reply_constraint(ENC, recipients=("functions.book", "functions.free"), grammars=grammars,
                         arguments={"functions.book": grammars.json_schema(CITY)})  # fmt: skip
    d = Driver(c)
    tok = None
    for t in _ids(header):
        assert d.allowed(tok).all()  # auto: the header is the model's own
        tok = t
    out = d.run(tok)
    assert out[-1] == tk.CALL
    call = parse_completion([*_ids(header), *out], Role.ASSISTANT, ENC)[-1]
    assert call.recipient == "functions.book"
    jsonschema.validate(json.loads(call.text), CITY)
    # a non-strict function's arguments stay the model's
    d = Driver(reply_constraint(ENC, recipients=("functions.free",), grammars=grammars,
                                arguments={"functions.book": grammars.json_schema(CITY)}))  # fmt: skip
    tok = None
    for t in _ids(" to=functions.free<|channel|>commentary <|constrain|>json<|message|>"):
        d.allowed(tok)
        tok = t
    assert d.allowed(tok).all()


def test_a_forced_call_to_a_strict_function_gets_valid_arguments_over_a_script_that_writes_prose(grammars):
    script = ScriptedTokens(_ids("<|channel|>final<|message|>Sure, booking now.<|return|>"))
    c = reply_constraint(ENC, tool_choice="required", recipients=("functions.book",), grammars=grammars,
                         arguments={"functions.book": grammars.json_schema(CITY)}, reasoning_budget=2)  # fmt: skip
    ctx, out = [tk.START, *ASSISTANT], []
    rng = np.random.default_rng(3)
    for _ in range(200):
        logits = mx.array(rng.standard_normal((1, tk.N_VOCAB)).astype(np.float32))
        for p in (script, c):
            logits = p(mx.array(ctx, dtype=mx.int32), logits)
        tok = int(mx.argmax(logits, axis=-1).item())
        ctx.append(tok)
        out.append(tok)
        if tok in (tk.RETURN, tk.CALL):
            break
    call = parse_completion(out, Role.ASSISTANT, ENC)[-1]
    assert call.recipient == "functions.book" and out[-1] == tk.CALL
    jsonschema.validate(json.loads(call.text), CITY)


def test_bad_constraint_arguments_are_errors(grammars):
    with pytest.raises(ValueError, match="^content grammars need the Grammars that compiled them$"):
        ReplyConstraint(ENC, content={FINAL: grammars.json_schema(CITY)})
    with pytest.raises(ValueError, match="reasoning_budget must be >= 0"):
        ReplyConstraint(ENC, then=[channel_header(FINAL, ENC)], reasoning_budget=-1)
    with pytest.raises(ValueError, match="at least one header"):
        ReplyConstraint(ENC, reasoning_budget=4)  # a budget needs the headers that follow it
    assert reply_constraint(ENC) is None and reply_constraint(ENC, recipients=("functions.f",)) is None
    assert call_header("functions.f", ENC).end == tk.CALL


# ----------------------------------------------------------------------------- compiling


def test_schemas_are_compiled_once_by_hash_and_the_cache_is_bounded():
    g = Grammars(ENC, max_entries=2)
    a = g.json_schema(CITY)
    assert g.json_schema(json.loads(json.dumps(CITY))) is a and g.compiled == 1  # same JSON, another dict
    g.json_schema(PERSON)
    g.json_schema(ANY_JSON_OBJECT)
    assert g.compiled == 3 and g.json_schema(CITY) is not a and g.compiled == 4  # the oldest went first
    small = Grammars(ENC, max_bytes=1)  # one entry always stays, however large
    small.json_schema(CITY)
    small.json_schema(PERSON)
    assert small.json_schema(PERSON) and small.compiled == 2 and len(small._cache) == 1
    assert small.json_schema(CITY) and small.compiled == 3


@pytest.mark.parametrize("schema, says", [
    ({"type": "array", "uniqueItems": True}, 'keyword(s) ["uniqueItems"] not supported'),
    ({"not": {"type": "string"}}, 'keyword(s) ["not"] not supported'),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 'keyword(s) ["oneOf"] not supported (anyOf is'),
    ({"type": "string", "format": "bogus"}, "Unknown format: bogus"),
    ({"type": "string", "pattern": "[a-"}, "regex parse error"),
    ({"type": "objekt"}, "Invalid type: objekt"),
])  # fmt: skip
def test_a_schema_that_cannot_be_enforced_is_one_line_naming_the_keyword(grammars, schema, says):
    with pytest.raises(GrammarError) as e:
        grammars.json_schema(schema, "response_format 'r'")
    assert str(e.value).startswith("response_format 'r'") and says in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(GrammarError, match="must be a JSON schema object, not list"):
        grammars.json_schema([1], "x")


# ----------------------------------------------------------------------------- Chat on a random model


def _chat(model_tok, seed, **kw):
    model, tok = model_tok
    kw.setdefault("max_tokens", 300)
    return mlx_oss.Chat(model, tok, sampling=SamplingConfig(seed=seed), **kw)


def _valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def test_every_seed_validates_when_strict_and_none_when_only_described(model_tok):
    """Random weights: only the constraint can make the answer conform."""
    strict = [_chat(model_tok, s, response_format=PERSON, max_reasoning_tokens=4).ask("who?") for s in range(6)]
    for r in strict:
        assert r.stats.stop_reason == "stop" and _valid(r.answer, PERSON) and r.parsed == json.loads(r.answer)
        assert r.stats.reasoning_tokens <= 4
    described = [_chat(model_tok, s, response_format=PERSON, strict=False, max_reasoning_tokens=4, max_tokens=60)
                 .ask("who?") for s in range(6)]  # fmt: skip
    assert not any(_valid(r.answer, PERSON) for r in described) and all(r.parsed is None for r in described)


def test_the_format_can_be_given_for_one_turn_and_the_prompt_is_the_same_either_way(model_tok):
    chat = _chat(model_tok, 1, max_reasoning_tokens=2)
    first = chat.ask("hi", response_format=CITY)
    assert _valid(first.answer, CITY) and first.parsed is not None
    assert chat.response_format is None  # the chat's setting is untouched
    described = _chat(model_tok, 1, max_reasoning_tokens=2, response_format=CITY, strict=False)
    enforced = _chat(model_tok, 1, max_reasoning_tokens=2, response_format=CITY)
    msgs = [mlx_oss.chat.Message.user("x")]
    assert described.prompt_tokens(msgs) == enforced.prompt_tokens(msgs)  # the constraint acts on sampling only
    off = chat.ask("and now?", strict=False, response_format=CITY)  # described only, this turn
    assert off.parsed is None or not _valid(off.answer, CITY) or off.stats.stop_reason == "stop"


def test_a_strict_reply_cut_by_max_tokens_is_length_and_never_parsed(model_tok):
    r = _chat(model_tok, 0, response_format=PERSON, max_reasoning_tokens=0, max_tokens=6).ask("who?")
    assert r.stats.stop_reason == "length" and r.parsed is None and not _valid(r.answer, PERSON)
    assert r.answer.startswith('{"name"')  # what the grammar allows first, however the draws fall


def test_a_schema_that_cannot_be_enforced_fails_before_any_compute_and_keeps_the_history(model_tok):
    chat = _chat(model_tok, 0, response_format={"type": "array", "uniqueItems": True})
    with pytest.raises(GrammarError, match=r"^response_format 'response' cannot be enforced: keyword"):
        chat.send("hi")
    assert chat.history == [] and chat.engine.tokens == []
    assert _chat(model_tok, 0, response_format={"type": "array", "uniqueItems": True}, strict=False, max_tokens=3).ask("x")


def test_a_strict_tools_arguments_validate_and_the_tool_runs_with_them(model_tok):
    """The model (scripted) opens a call to the strict tool; its arguments are the grammar's."""
    seen = []

    def book(city: str, days: int) -> str:
        """Book a trip."""
        seen.append((city, days))
        return "booked"

    desc = schema_from_callable(book)
    desc = type(desc)(desc.name, desc.description, CITY)
    model, tok = model_tok
    for seed in range(3):
        chat = mlx_oss.Chat(model, tok, tools=[Tool(desc, book, strict=True)], max_tokens=60, max_tool_rounds=2,
                            sampling=SamplingConfig(seed=seed, logits_processors=(ScriptedTokens(
                                _ids(" to=functions.book<|channel|>commentary <|constrain|>json<|message|>")),)))  # fmt: skip
        r = chat.ask("book it")
        assert r.tool_calls and r.tool_calls[0].name == "book" and r.tool_calls[0].error is None
        jsonschema.validate(r.tool_calls[0].arguments, CITY)
    assert len(seen) == 3 and {c for c, _ in seen} <= {"Paris", "Oslo"}
    assert Tool(desc, strict=True).to_dict()["strict"] is True and "strict" not in Tool(desc).to_dict()
    assert mlx_oss.tools.as_tool({"name": "f", "parameters": CITY, "strict": True}).strict
    with pytest.raises(ValueError, match="'strict' must be true or false"):
        mlx_oss.tools.as_tool({"name": "f", "strict": "yes"})


def test_chat_settings_are_checked(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="max_reasoning_tokens must be an integer >= 0 or None"):
        mlx_oss.Chat(model, tok, max_reasoning_tokens=-1)
    with pytest.raises(TypeError, match="strict must be True or False"):
        mlx_oss.Chat(model, tok, strict="yes")
    chat = mlx_oss.Chat(model, tok)
    with pytest.raises(TypeError, match="strict must be True or False"):
        chat.send("x", strict=1)


def test_with_built_in_tools_a_strict_answer_leaves_the_headers_to_the_model(grammars):
    """gpt-oss writes built-in calls (browser, python) in headers of its own: they stay possible; the
    answer is still enforced once the model opens it."""
    c = reply_constraint(ENC, answer=grammars.json_schema(CITY), grammars=grammars, builtin_calls=True)
    d = Driver(c)
    tok = None
    for t in _ids("<|channel|>analysis to=browser.search code<|message|>"):
        assert d.allowed(tok).all()
        tok = t
    assert d.allowed(tok)[: tk.FIRST_SPECIAL].all() and c.matcher is None  # the call's content is free
    d = Driver(reply_constraint(ENC, answer=grammars.json_schema(CITY), grammars=grammars, builtin_calls=True))
    tok = None
    for t in _ids("<|channel|>final<|message|>"):
        d.allowed(tok)
        tok = t
    out = d.run(tok)
    jsonschema.validate(json.loads(ENC.decode(out[:-1])), CITY)
    assert out[-1] == tk.RETURN


def test_the_analysis_is_the_unconstrained_samplers_own(model_tok):
    """Same seed, the analysis header scripted: the analysis tokens of a strict reply are exactly those
    of a reply with the format only described (the mask starts after the final header)."""
    model, tok = model_tok
    head = _ids("<|channel|>analysis<|message|>")

    def analysis(strict: bool) -> list[int]:
        chat = mlx_oss.Chat(model, tok, response_format=CITY, strict=strict, max_reasoning_tokens=12,
                            max_tokens=len(head) + 12 if not strict else 200,
                            sampling=SamplingConfig(seed=5, logits_processors=(ScriptedTokens(head),)))  # fmt: skip
        prompt = chat.prompt_tokens([mlx_oss.chat.Message.user("hi")])
        r = chat.ask("hi")
        out = chat.engine.tokens[len(prompt) :]
        assert out[: len(head)] == head
        if strict:
            assert r.stats.stop_reason == "stop" and _valid(r.answer, CITY)
        return out[len(head) : len(head) + 12]

    free = analysis(False)
    assert len(free) == 12 and not any(t >= tk.FIRST_SPECIAL for t in free)
    assert analysis(True) == free


def test_after_a_free_analysis_message_a_strict_call_is_still_enforced(grammars):
    """Headers left to the model: an analysis message first, then the call to the strict function in a
    later message of the same reply; its arguments follow the schema."""
    c = reply_constraint(ENC, recipients=("functions.book",), grammars=grammars,
                         arguments={"functions.book": grammars.json_schema(CITY)})  # fmt: skip
    d = Driver(c)
    head = _ids("<|channel|>analysis<|message|>I will book.<|end|><|start|>assistant"
                "<|channel|>commentary to=functions.book <|constrain|>json<|message|>")  # fmt: skip
    tok = None
    for t in head:
        assert d.allowed(tok).all()  # the model's own headers and analysis
        tok = t
    out = d.run(tok)
    call = parse_completion([*head, *out], Role.ASSISTANT, ENC)[-1]
    assert call.recipient == "functions.book" and out[-1] == tk.CALL
    jsonschema.validate(json.loads(call.text), CITY)


def test_with_nothing_allowed_left_a_complete_document_ends_rather_than_grows(grammars):
    """An earlier processor that bans everything while the answer is a complete but extendable
    document ("1" of 0..99): the constraint's fallback is the end, not one more digit."""
    from mlx_oss.constraint import _PREFERRED

    c = reply_constraint(ENC, answer=grammars.json_schema({"type": "integer", "minimum": 0, "maximum": 99}),
                         grammars=grammars, reasoning_budget=0)  # fmt: skip
    d = Driver(c)
    tok = None
    for t in (*channel_header(FINAL, ENC).tokens, *ENC.encode_ordinary("1")):
        d.allowed(tok)
        tok = t
    out = np.array(c(mx.array([*d.ctx, tok], dtype=mx.int32), mx.full((1, tk.N_VOCAB), -mx.inf))[0])
    assert c.matcher.accepting  # "1" is a document; "12" would be one too
    assert int(np.argmax(out)) == tk.RETURN and out[tk.RETURN] == _PREFERRED
    assert np.isfinite(out[ENC.encode_ordinary("2")[0]])  # another digit stays possible, below the end


def test_with_nothing_allowed_left_inside_a_string_the_lowest_allowed_token_is_preferred(grammars):
    """Token 0 ("!") is a preferred token like any other: inside a JSON string it is the first allowed."""
    from mlx_oss.constraint import _FLOOR, _PREFERRED

    c = reply_constraint(ENC, answer=grammars.json_schema({"type": "string", "maxLength": 5}), grammars=grammars,
                         reasoning_budget=0)  # fmt: skip
    d = Driver(c)
    tok = None
    for t in (*channel_header(FINAL, ENC).tokens, *ENC.encode_ordinary('"')):
        d.allowed(tok)
        tok = t
    out = np.array(c(mx.array([*d.ctx, tok], dtype=mx.int32), mx.full((1, tk.N_VOCAB), -mx.inf))[0])
    assert ENC.decode([0]) == "!" and out[0] == _PREFERRED and out[1] == _FLOOR


def test_grammar_errors_are_one_bounded_line_and_the_cache_keeps_64_schemas():
    from mlx_oss.grammar import _first_line

    assert _first_line("a\n\n  b \nc\nd") == "a b c" and _first_line(" \n ") == "llguidance refused it"
    assert len(_first_line("x" * 400)) == 300
    with pytest.raises(GrammarError) as e:
        Grammars(ENC).json_schema({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "w")
    assert str(e.value) == ('w cannot be enforced: keyword(s) ["oneOf"] not supported (anyOf is: a oneOf whose '
                            'branches cannot overlap can be one)')  # fmt: skip
    g = Grammars(ENC)
    first = g.json_schema({"const": 0})
    for i in range(1, 65):
        g.json_schema({"const": i})
    assert len(g._cache) == 64 and g.json_schema({"const": 0}) is not first  # the 65th pushed the first out


def test_the_cache_key_ignores_key_order_and_the_byte_bound_is_inclusive():
    """The same schema with its keys in another order is one cache entry (not compiled twice); the byte
    bound keeps the schemas whose sizes add up to exactly `max_bytes`, and one byte less evicts the oldest."""
    from mlx_oss.grammar import schema_key

    a = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"}}, "required": ["x"]}
    b = {"required": ["x"], "properties": {"y": {"type": "string"}, "x": {"type": "integer"}}, "type": "object"}
    assert schema_key(a) == schema_key(b) != schema_key({**a, "required": ["y"]})
    g = Grammars(ENC)
    assert g.json_schema(a) is g.json_schema(b) and g.compiled == 1
    one, two = {"const": 1}, {"const": 22}
    sizes = [Grammars(ENC).json_schema(s).nbytes for s in (one, two)]
    for limit, kept in ((sum(sizes), 2), (sum(sizes) - 1, 1)):
        g = Grammars(ENC, max_bytes=limit)
        first = g.json_schema(one)
        g.json_schema(two)
        assert len(g._cache) == kept
        assert (g.json_schema(one) is first) == (kept == 2)  # evicted: compiled again


def test_errors_before_compiling_name_the_schema(monkeypatch):
    """Not a dict, not JSON, or refused by llguidance's schema reader: one line naming `where`
    ("schema" unless the caller says)."""
    import llguidance

    with pytest.raises(GrammarError, match=r"^schema must be a JSON schema object, not int$"):
        Grammars(ENC).json_schema(5)
    with pytest.raises(GrammarError) as e:
        Grammars(ENC).json_schema({"const": {1, 2}})
    assert str(e.value) == "schema is not JSON: Object of type set is not JSON serializable"

    def refuse(schema, defaults=None):
        raise ValueError("bad schema\n  at line 2")

    monkeypatch.setattr(llguidance.LLMatcher, "grammar_from_json_schema", staticmethod(refuse))
    with pytest.raises(GrammarError) as e:
        Grammars(ENC).json_schema({"type": "string"}, "response_format")
    assert str(e.value) == "response_format: bad schema at line 2"


def test_a_padded_vocabulary_never_allows_the_padding_in_constrained_content(grammars):
    m = grammars.matcher(grammars.json_schema(CITY), tk.RETURN)
    mask = m.allowed(tk.N_VOCAB + 64)
    assert mask.shape == (tk.N_VOCAB + 64,) and mask.dtype == bool and not mask[tk.FIRST_SPECIAL :].any()
    assert set(ENC.decode([int(i)]) for i in np.flatnonzero(mask)) == {'{"'}


def test_a_model_with_its_own_vocabulary_gets_its_strict_calls_read_with_it():
    """The reply is read with the model's encoding (here ".quiz" and "z" swap ids): the call's recipient,
    and so its grammar, are found."""
    import tiktoken

    ranks = dict(ENC._mergeable_ranks)
    ranks[b".quiz"], ranks[b"z"] = ranks[b"z"], ranks[b".quiz"]
    swapped = tiktoken.Encoding("swapped", pat_str=ENC._pat_str, mergeable_ranks=ranks, special_tokens=ENC._special_tokens)
    g = Grammars(swapped)
    c = reply_constraint(swapped, tool_choice="required", recipients=("functions.quiz",), grammars=g,
                         arguments={"functions.quiz": g.json_schema(CITY)}, reasoning_budget=0)  # fmt: skip
    out = Driver(c).run()
    call = parse_completion(out, Role.ASSISTANT, swapped)[-1]
    assert call.recipient == "functions.quiz" and out[-1] == tk.CALL
    jsonschema.validate(json.loads(call.text), CITY)
