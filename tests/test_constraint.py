"""ReplyConstraint's headers (tool_choice) without a model: random logits, optionally overridden by a script
that tries to write something else first; the constraint must win, and what it lets through must
parse as the right message and re-render token-exact."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss import tokenizer as tk
from mlx_oss.constraint import tool_choice_constraint
from mlx_oss.harmony import Message, Role, parse_completion, render_message
from mlx_oss.sampling import ScriptedTokens
from scripted import AfterHeader

ENC = tk.load_tokenizer()
ASSISTANT = ENC.encode_ordinary("assistant")


def generate(processors, steps=80, seed=0):
    """Greedy over random logits through `processors`; -> tokens after `<|start|>assistant`."""
    rng = np.random.default_rng(seed)
    ctx = [tk.START, *ASSISTANT]
    out = []
    for _ in range(steps):
        logits = mx.array(rng.standard_normal((1, tk.N_VOCAB)).astype(np.float32))
        for p in processors:
            logits = p(mx.array(ctx, dtype=mx.int32), logits)
        tok = int(mx.argmax(logits, axis=-1).item())
        ctx.append(tok)
        out.append(tok)
        if tok in tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS:
            break
    return out


def final_script(text="Sunny."):
    return ScriptedTokens(ENC.encode(f"<|channel|>final<|message|>{text}<|return|>", allowed_special="all"))


def test_named_choice_turns_a_final_answer_into_that_call_token_exact():
    c = tool_choice_constraint("required", ("functions.get_weather",), ENC)
    out = generate([final_script(), AfterHeader(ENC, '{"city": "Paris"}'), c])
    msgs = parse_completion(out, Role.ASSISTANT, ENC)
    assert [m.channel for m in msgs] == ["analysis", "commentary"]  # the script's "final" was turned to analysis
    call = msgs[-1]
    assert call.recipient == "functions.get_weather" and json.loads(call.text) == {"city": "Paris"}
    assert out[-1] == tk.CALL
    # The call's tokens are exactly what the renderer writes for it (the next prompt reuses them).
    start = len(out) - 1 - out[::-1].index(tk.START)
    assert out[start:] == render_message(Message.tool_call("functions.get_weather", call.text), encoding=ENC)


def test_unscripted_random_logits_never_write_final_or_markup_in_text():
    for seed in range(3):
        c = tool_choice_constraint("required", ("functions.a", "functions.b"), ENC)
        out = generate([c], steps=40, seed=seed)
        msgs = parse_completion(out, Role.ASSISTANT, ENC)
        assert msgs[0].channel in ("analysis", "commentary") and msgs[0].recipient in (None, "functions.a", "functions.b")
        assert not any(t >= tk.FIRST_SPECIAL for t in out[out.index(tk.MESSAGE) + 1 :])  # content: no markup


def test_analysis_content_cannot_end_as_answer_or_call():
    c = tool_choice_constraint("required", ("functions.f",), ENC)
    # The script opens analysis, then tries to end it with <|call|> and then write a final header.
    script = ScriptedTokens(ENC.encode("<|channel|>analysis<|message|>hm<|call|>", allowed_special="all"))
    out = generate([script, AfterHeader(ENC, "{}"), c])
    msgs = parse_completion(out, Role.ASSISTANT, ENC)
    assert [(m.channel, m.recipient) for m in msgs] == [("analysis", None), ("commentary", "functions.f")]
    assert msgs[0].text == "hm"


@pytest.mark.parametrize("order", ["channel first", "recipient first"])
def test_none_turns_a_call_into_a_final_answer_without_markup(order):
    """"none" with the tool among the request's functions (as a client sends it): no call, whichever
    order the model writes the call's header in (the second is the constraint's own call header)."""
    c = tool_choice_constraint("none", ("functions.get_weather",), ENC)
    header = ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>" if order == "channel first"
              else "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>")  # fmt: skip
    call = ENC.encode(header.removeprefix("<|start|>assistant") + '{"x": 1}<|call|>', allowed_special="all")
    out = generate([ScriptedTokens(call), c])
    assert tk.CALL not in out and out[-1] == tk.RETURN
    msgs = parse_completion(out, Role.ASSISTANT, ENC)
    assert [(m.channel, m.recipient) for m in msgs] == [("final", None)]
    assert "<|" not in msgs[0].text


def test_refuses_an_empty_choice():
    with pytest.raises(ValueError):
        tool_choice_constraint("required", (), ENC)


# ----------------------------------------------------------------------------- step by step

from mlx_oss.constraint import Header, ReplyConstraint, call_header, channel_header  # noqa: E402
from mlx_oss.harmony import ANALYSIS, FINAL  # noqa: E402

TEXT = set(range(tk.FIRST_SPECIAL))  # every ordinary token


class Driver:
    """Runs a constraint the way the sampler does: one call per step with the context so far; `step`
    appends the token sampled at the previous step first. Logits are random; -> what came out."""

    def __init__(self, c: ReplyConstraint, vocab: int = tk.N_VOCAB, dtype=mx.float32) -> None:
        self.c, self.vocab, self.dtype = c, vocab, dtype
        self.ctx = [tk.START, *ASSISTANT]  # the prompt ends in <|start|>assistant
        self.rng = np.random.default_rng(1)

    def step(self, tok: int | None = None, logits: mx.array | None = None) -> tuple[mx.array, mx.array]:
        if tok is not None:
            self.ctx.append(tok)
        if logits is None:
            logits = mx.array(self.rng.standard_normal((1, self.vocab)).astype(np.float32)).astype(self.dtype)
        return logits, self.c(mx.array(self.ctx, dtype=mx.int32), logits)

    def allowed(self, tok: int | None = None) -> set[int]:
        logits, out = self.step(tok)
        a = np.array(out[0].astype(mx.float32))
        kept = np.isfinite(a)
        # an allowed token keeps its logit exactly; the others are -inf
        assert np.array_equal(a[kept], np.array(logits[0].astype(mx.float32))[kept])
        assert np.all(a[~kept] == -np.inf)
        return set(np.flatnonzero(kept).tolist())


def _walk_header(d: Driver, header: Header, others: list[Header], first_tok: int | None) -> None:
    """Step through `header`'s tokens; at each, exactly the next tokens of the headers that share its
    prefix so far are allowed."""
    tok = first_tok
    live = [header, *others]
    for pos, want in enumerate(header.tokens):
        live = [h for h in live if h.tokens[:pos] == header.tokens[:pos]]
        assert d.allowed(tok) == {h.tokens[pos] for h in live}, f"header position {pos}"
        tok = want
    return tok


def test_each_header_position_allows_exactly_the_headers_next_tokens_and_content_its_own_end():
    a, b = call_header("functions.a", ENC), call_header("functions.b", ENC)
    think = channel_header(ANALYSIS, ENC)
    d = Driver(tool_choice_constraint("required", ("functions.a", "functions.b"), ENC))
    last = _walk_header(d, think, [a, b], None)  # analysis first
    assert d.allowed(last) == TEXT | {tk.END}  # analysis content: text, ended by <|end|> only
    assert d.allowed(ENC.encode_ordinary("hm")[0]) == TEXT | {tk.END}
    # after <|end|> the next message must start: <|start|>assistant, one token at a time
    tok = tk.END
    for want in [tk.START, *ASSISTANT]:
        assert d.allowed(tok) == {want}
        tok = want
    last = _walk_header(d, b, [a], tok)  # then only a call: no more analysis
    assert d.allowed(last) == TEXT | {tk.CALL}  # call content: ended by <|call|> only (not the cached <|end|> bias)
    logits, out = d.step(tk.CALL)  # the reply is over: nothing constrained any more
    assert mx.array_equal(out, logits)


def test_after_analysis_only_the_target_headers_may_follow():
    c = tool_choice_constraint("required", ("functions.a",), ENC)
    think = channel_header(ANALYSIS, ENC)
    d = Driver(c)
    tok = _walk_header(d, think, [call_header("functions.a", ENC)], None)
    for t in [tk.END, tk.START, *ASSISTANT]:
        d.allowed(tok)
        tok = t
    call = call_header("functions.a", ENC)
    assert call.tokens[0] != think.tokens[0]  # ` to=functions.a` comes before the channel
    assert d.allowed(tok) == {call.tokens[0]}  # the call, not another analysis


def test_none_allows_a_final_answer_ended_by_return():
    final = channel_header(FINAL, ENC)
    d = Driver(tool_choice_constraint("none", (), ENC))
    last = _walk_header(d, final, [channel_header(ANALYSIS, ENC)], None)
    assert d.allowed(last) == TEXT | {tk.RETURN}


def test_with_nothing_allowed_left_the_preferred_header_wins():
    """An earlier processor that bans everything (-inf everywhere): the allowed tokens get a finite floor,
    the preferred one a higher one, so the constraint writes its first header (the first recipient's call,
    or the final answer for "none") and ends it at once."""
    from mlx_oss.constraint import _FLOOR, _PREFERRED

    for mode, recipients, header in (
        ("required", ("functions.b", "functions.a"), call_header("functions.b", ENC)),
        ("none", (), channel_header(FINAL, ENC)),
    ):
        d = Driver(tool_choice_constraint(mode, recipients, ENC))
        out_tokens = []
        tok = None
        for _ in range(len(header.tokens) + 1):
            _, out = d.step(tok, logits=mx.full((1, tk.N_VOCAB), -mx.inf))
            row = np.array(out[0])
            tok = int(np.argmax(row))
            assert row[tok] == _PREFERRED and set(np.unique(row[np.isfinite(row)])) <= {_FLOOR, _PREFERRED}
            assert np.count_nonzero(row == _PREFERRED) == 1
            out_tokens.append(tok)
        assert out_tokens == [*header.tokens, header.end]


def test_a_token_off_every_header_sets_the_reply_free():
    """Only something that overrode the constraint can write a token it did not allow; from then on
    it no longer interferes (in a header, or where <|start|>assistant must follow <|end|>)."""
    d = Driver(tool_choice_constraint("required", ("functions.a",), ENC))
    d.allowed()
    logits, out = d.step(ENC.encode_ordinary("x")[0])  # instead of <|channel|>
    assert mx.array_equal(out, logits)
    d = Driver(tool_choice_constraint("required", ("functions.a",), ENC))
    tok = _walk_header(d, channel_header(ANALYSIS, ENC), [call_header("functions.a", ENC)], None)
    d.allowed(tok)
    d.allowed(tk.END)
    logits, out = d.step(tk.END)  # <|end|> again where <|start|> must come
    assert mx.array_equal(out, logits)
    d = Driver(tool_choice_constraint("required", ("functions.a",), ENC))
    tok = _walk_header(d, channel_header(ANALYSIS, ENC), [call_header("functions.a", ENC)], None)
    for t in (tk.END, tk.START):
        d.allowed(tok)
        tok = t
    d.allowed(tok)
    logits, out = d.step(tk.END)  # <|start|> then not "assistant"
    assert mx.array_equal(out, logits)


def test_the_logits_keep_their_dtype_and_a_padded_vocabulary_is_masked_too():
    d = Driver(tool_choice_constraint("required", ("functions.a",), ENC), vocab=tk.N_VOCAB + 64, dtype=mx.bfloat16)
    head = call_header("functions.a", ENC)
    logits, out = d.step()
    assert out.dtype == mx.bfloat16 and out.shape == logits.shape
    assert set(np.flatnonzero(np.isfinite(np.array(out[0].astype(mx.float32)))).tolist()) == {head.tokens[0], tk.CHANNEL}
    tok = head.tokens[0]
    for t in head.tokens[1:]:
        assert d.allowed(tok) == {t}
        tok = t
    allowed = d.allowed(tok)
    assert allowed == TEXT | {tk.CALL} and max(allowed) < tk.N_VOCAB  # the padding is never sampled
    _, out = d.step(ENC.encode_ordinary("{")[0], logits=mx.full((1, tk.N_VOCAB + 64), -mx.inf, dtype=mx.bfloat16))
    assert out.dtype == mx.bfloat16 and int(mx.argmax(out, axis=-1).item()) == tk.CALL  # fallback: the end


def test_headers_end_with_the_token_of_their_kind():
    assert call_header("functions.f", ENC).end == tk.CALL
    assert channel_header(FINAL, ENC).end == tk.RETURN
    assert channel_header(ANALYSIS, ENC).end == tk.END
    assert channel_header("commentary", ENC).end == tk.END
    head = channel_header(FINAL, ENC)
    assert head.tokens == tuple(ENC.encode("<|channel|>final<|message|>", allowed_special="all"))


def test_a_constraint_needs_headers_and_a_known_choice():
    h = [channel_header(FINAL, ENC)]
    for first, then in (([], h), (h, []), ([], [])):
        with pytest.raises(ValueError, match="^a header constraint needs at least one header to allow$"):
            ReplyConstraint(ENC, first=first, then=then)
    with pytest.raises(ValueError, match=r"^no constraint for tool_choice 'auto' with recipients \('functions.f',\)$"):
        tool_choice_constraint("auto", ("functions.f",), ENC)
    with pytest.raises(ValueError, match=r"^no constraint for tool_choice 'required' with recipients \(\)$"):
        tool_choice_constraint("required", (), ENC)


def test_headers_are_the_tokens_of_the_encoding_given():
    """A model folder may bring its own vocabulary: the headers are its tokens, not the bundled ones
    (here the recipient's token ".quiz" and "z" swap ids)."""
    import tiktoken

    ranks = dict(ENC._mergeable_ranks)
    ranks[b".quiz"], ranks[b"z"] = ranks[b"z"], ranks[b".quiz"]
    swapped = tiktoken.Encoding("swapped", pat_str=ENC._pat_str, mergeable_ranks=ranks, special_tokens=ENC._special_tokens)
    text = " to=functions.quiz<|channel|>commentary <|constrain|>json<|message|>"
    head = call_header("functions.quiz", swapped)
    assert head.tokens == tuple(swapped.encode(text, allowed_special="all")) != tuple(ENC.encode(text, allowed_special="all"))
    d = Driver(tool_choice_constraint("required", ("functions.quiz",), swapped))
    assert head.tokens[0] in d.allowed()
    tok = head.tokens[0]
    for t in head.tokens[1:]:
        assert d.allowed(tok) == {t}
        tok = t


def test_a_token_off_the_headers_after_an_analysis_sets_the_reply_free():
    """After an analysis message (whose end the constraint knew) a header token it did not allow frees
    the reply: nothing of the analysis content's mask lingers."""
    d = Driver(tool_choice_constraint("required", ("functions.a",), ENC))
    tok = _walk_header(d, channel_header(ANALYSIS, ENC), [call_header("functions.a", ENC)], None)
    for t in (ENC.encode_ordinary("hm")[0], tk.END, tk.START, *ASSISTANT):
        d.allowed(tok)
        tok = t
    assert d.allowed(tok) == {call_header("functions.a", ENC).tokens[0]}
    logits, out = d.step(tk.RETURN)  # not the call header's first token
    assert mx.array_equal(out, logits)
