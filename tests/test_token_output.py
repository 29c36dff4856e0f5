"""What a sampled token adds to a client's text (`mlx_oss/server/token_output.py`), unit by unit: markup
stripped from content and counted, and OpenAI's logprob entries for tokens whose bytes are not text on
their own (a byte-level token in the middle of a UTF-8 character)."""

from __future__ import annotations

import math

import mlx.core as mx

from mlx_oss import tokenizer as tk
from mlx_oss.sampling import Sampler, SamplingConfig
from mlx_oss.server.token_output import TokenOutput, strip_markup
from mlx_oss.tokenizer import load_tokenizer

ENC = load_tokenizer(None)


def _greedy(top: int) -> Sampler:
    return Sampler(SamplingConfig(temperature=0.0, logprobs=top))


def test_markup_in_content_is_stripped_and_counted_and_text_is_not():
    out = TokenOutput(ENC, Sampler(SamplingConfig()))
    assert not out.want_logprobs
    assert out.content(tk.CHANNEL, "<|channel|>") == "" and out.unparsed_tokens == 1
    assert out.content(ENC.encode_ordinary("hi")[0], "hi") == "hi" and out.unparsed_tokens == 1
    assert out.content(tk.FIRST_SPECIAL - 1, "<|x|>") == "<|x|>"  # the last ordinary token is text
    assert strip_markup("a<|reserved_200013|>b<|end|>c <|not markup") == "abc <|not markup"


def test_a_token_that_is_half_a_character_has_its_bytes_and_a_replacement_character():
    half = ENC.encode_single_token(b"\xe2")  # the first byte of "€": not UTF-8 alone
    logits = [-10.0] * (half + 1)
    logits[half], logits[0] = 2.0, 1.0
    sampler = _greedy(top=2)
    out = TokenOutput(ENC, sampler)
    assert out.want_logprobs
    sampler(mx.array([logits]))
    entry = out.logprob(0)
    assert entry["token"] == "\ufffd" and entry["bytes"] == [0xE2]
    total = math.exp(2.0) + math.exp(1.0) + (len(logits) - 2) * math.exp(-10.0)
    assert math.isclose(entry["logprob"], 2.0 - math.log(total), rel_tol=1e-5)
    first, second = entry["top_logprobs"]
    assert (first["token"], first["bytes"]) == ("\ufffd", [0xE2])
    assert (second["token"], second["bytes"]) == (ENC.decode([0]), list(ENC.decode_single_token_bytes(0)))
    assert math.isclose(second["logprob"], 1.0 - math.log(total), rel_tol=1e-5)


def test_logprob_entries_count_from_the_generations_first_step():
    """A sampler that already recorded steps (an earlier round of the same generation) is read from where
    this output began."""
    sampler = _greedy(top=1)
    sampler(mx.array([[0.0, 5.0, 0.0]]))
    out = TokenOutput(ENC, sampler)  # begins after step 0
    sampler(mx.array([[5.0, 0.0, 0.0]]))
    entry = out.logprob(0)
    assert entry["bytes"] == list(ENC.decode_single_token_bytes(0)) and entry["top_logprobs"][0]["bytes"] == entry["bytes"]


def test_the_first_special_token_is_markup_and_each_markup_token_counts():
    out = TokenOutput(load_tokenizer(None), Sampler(SamplingConfig()))
    assert out.is_markup(tk.FIRST_SPECIAL) and not out.is_markup(tk.FIRST_SPECIAL - 1)
    assert out.content(tk.FIRST_SPECIAL, "<|x|>") == "" and out.content(200005, "<|channel|>a") == "a"
    assert out.unparsed_tokens == 2
