"""o200k_harmony from the bundled vocabulary, model folders, and Hugging Face tokenizer.json."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
import tiktoken

from mlx_oss import tokenizer as tk

SAMPLES = [
    "",
    "hello world",
    "Hello, World! How's it going? I'M fine, they'll SEE we'd've",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\n\r\nand\n\n\n   \n",
    "numbers 1234567890 3.14159 -42 1e10 0x1F",
    "CamelCaseWords and snake_case_words and kebab-case-words",
    "def f(x):\n    return x ** 2  # comment\n",
    '{"location": "Tokyo", "units": ["c", "f"], "n": null}',
    "Müller naïve naïve café Ελληνικά Привет мир שלום مرحبا नमस्ते",
    "こんにちは世界 你好，世界 안녕하세요",
    "emoji 😊👋🏾👨‍👩‍👧‍👦🇺🇸 and ™ © ® ✓ ∑ ∫ √",
    "https://example.com/path?q=1&r=2#frag //comment /* block */",
    "\u00a0non-breaking\u2003em-space\u3000ideographic",
    "a" * 300,
    " " * 50 + "x",
    "<|start|> is plain text when not allowed special",
]


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n\r",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "éüñçøßåæœ",
        "αβγδεζηθ абвгдеж",
        "你好世界中文字符日本語",
        "😊👋🏾🇺🇸✓",
    ]
    out = []
    for _ in range(n):
        k = rng.randint(1, 60)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return tk.load_tokenizer()


# -- bundled vocabulary ---------------------------------------------------------------------------


def test_bundled_vocab_is_o200k_base():
    data = tk.bundled_vocab_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == tk.O200K_BASE_SHA256
    ranks = tk.load_ranks(tk.bundled_vocab_path())
    assert len(ranks) == tk.N_BASE_RANKS == 199_998
    assert sorted(ranks.values()) == list(range(199_998))


def test_encoding_shape_and_special_ids(enc):
    assert enc.name == "o200k_harmony"
    assert enc.n_vocab == tk.N_VOCAB == 201_088
    specials = tk.harmony_special_tokens()
    assert len(specials) == 201_088 - 199_998
    assert sorted(specials.values()) == list(range(199_998, 201_088))
    named = {
        "<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|return|>": 200002, "<|constrain|>": 200003,
        "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007, "<|message|>": 200008,
        "<|call|>": 200012, "<|endofprompt|>": 200018,
    }
    for text, token in named.items():
        assert specials[text] == token
        assert enc.encode(text, allowed_special="all") == [token]
        assert enc.decode([token]) == text
    assert (tk.RETURN, tk.CONSTRAIN, tk.CHANNEL, tk.START, tk.END, tk.MESSAGE, tk.CALL) == (
        200002, 200003, 200005, 200006, 200007, 200008, 200012)
    assert enc.decode([200000, 200004, 200013, 201087]) == (
        "<|reserved_200000|><|reserved_200004|><|reserved_200013|><|reserved_201087|>")
    assert tk.STOP_TOKENS == {200002, 200012, 200007}
    assert tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS == {200002, 200012}


def test_matches_tiktokens_own_o200k_harmony_definition(monkeypatch, enc):
    # tiktoken >= 0.10 defines o200k_harmony; reuse its definition with our local ranks (its
    # loader would download them) and check regex and special tokens agree with ours.
    from tiktoken_ext import openai_public

    if not hasattr(openai_public, "o200k_harmony"):
        pytest.skip("tiktoken too old to define o200k_harmony")
    local = tk.load_ranks(tk.bundled_vocab_path())
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: local)
    spec = openai_public.o200k_harmony()
    assert spec["pat_str"] == tk.O200K_PATTERN == enc._pat_str
    assert spec["mergeable_ranks"] == enc._mergeable_ranks
    # tiktoken lists both <|endofprompt|> and <|reserved_200018|> for id 200018; we keep the name.
    theirs = {s: i for s, i in spec["special_tokens"].items() if s != "<|reserved_200018|>"}
    assert theirs == enc._special_tokens


def test_encodes_like_the_oracle(enc):
    from test_harmony_oracle import oracle  # noqa: PLC0415 - shared test helper

    for s in SAMPLES + _random_strings(200, seed=1):
        assert enc.encode_ordinary(s) == oracle().encode(s, disallowed_special=()), s
        assert enc.decode(enc.encode_ordinary(s)) == s


def test_known_ids(enc):
    assert enc.encode("hello world") == [24912, 2375]
    assert enc.encode("<|start|>", disallowed_special=()) == [27, 91, 5236, 91, 29]


# -- loading from files and folders ---------------------------------------------------------------


def test_load_from_file_model_folder_and_tokenizer_subfolder(tmp_path, enc):
    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    shutil.copy(tk.bundled_vocab_path(), model / "tokenizer" / tk.VOCAB_FILENAME)
    for where in (model, model / "tokenizer", model / "tokenizer" / tk.VOCAB_FILENAME):
        loaded = tk.load_tokenizer(where)
        assert tk.encodings_equal(loaded, enc)
        assert loaded.encode("gpt-oss on MLX") == enc.encode("gpt-oss on MLX")
    assert tk.find_vocab_file(model) == model / "tokenizer" / tk.VOCAB_FILENAME
    assert tk.find_vocab_file(None) == tk.bundled_vocab_path()
    assert tk.load_tokenizer() is tk.load_tokenizer(None)  # cached


def test_missing_vocab_names_the_places_looked(tmp_path):
    with pytest.raises(ValueError, match="o200k_base.tiktoken"):
        tk.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path / "nope")):
        tk.load_tokenizer(tmp_path / "nope")


def test_corrupted_vocab_is_rejected_with_its_path(tmp_path):
    bad = tmp_path / tk.VOCAB_FILENAME
    data = bytearray(tk.bundled_vocab_path().read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{bad}.*sha256"):
        tk.load_tokenizer(tmp_path)


def test_replaced_file_is_reverified(tmp_path, enc):
    f = tmp_path / tk.VOCAB_FILENAME
    shutil.copy(tk.bundled_vocab_path(), f)
    assert tk.encodings_equal(tk.load_tokenizer(f), enc)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256"):
        tk.load_tokenizer(f)


# -- Hugging Face tokenizer.json ------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory, enc) -> Path:
    return tk.write_tokenizer_json(tmp_path_factory.mktemp("hf") / "tokenizer.json", enc)


def test_tokenizer_json_round_trip_equals_bundled(written, enc):
    back = tk.encoding_from_tokenizer_json(written)
    # Every rank and every special token, plus the regex.
    assert back._mergeable_ranks == enc._mergeable_ranks
    assert back._special_tokens == enc._special_tokens
    assert tk.encodings_equal(back, enc)
    for s in SAMPLES + _random_strings(100, seed=2):
        assert back.encode(s, allowed_special="all") == enc.encode(s, allowed_special="all")


def test_tokenizer_json_layout(written):
    doc = json.loads(written.read_text(encoding="utf-8"))
    model = doc["model"]
    assert model["type"] == "BPE" and len(model["vocab"]) == 199_998
    assert model["vocab"]["Ġworld"] == 2375 and model["vocab"]["hello"] == 24912
    merges = {tuple(m) for m in model["merges"]}
    assert len(merges) == len(model["merges"])
    assert ("Ġw", "orld") in merges or ("Ġwor", "ld") in merges
    added = {t["content"]: t["id"] for t in doc["added_tokens"]}
    assert added["<|call|>"] == 200012 and len(added) == 1090
    assert all(t["special"] for t in doc["added_tokens"])
    split = doc["pre_tokenizer"]["pretokenizers"][0]
    assert split["type"] == "Split" and split["pattern"]["Regex"] == tk.O200K_PATTERN


def test_hugging_face_tokenizers_encode_exactly_like_tiktoken(written, enc):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(written))
    assert hf.get_vocab_size(with_added_tokens=True) == 201_088
    vocab = hf.get_vocab(with_added_tokens=False)
    table = tk.bytes_to_unicode()
    for token, rank in enc._mergeable_ranks.items():  # all ranks
        assert vocab["".join(table[b] for b in token)] == rank
    texts = SAMPLES + _random_strings(300, seed=3) + [
        "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>yo<|return|>"
    ]
    for s in texts:
        ids = enc.encode(s, allowed_special="all")
        assert hf.encode(s, add_special_tokens=False).ids == ids, s
        assert hf.decode(ids, skip_special_tokens=False) == s


def _toy_encoding() -> tiktoken.Encoding:
    ranks = {bytes([b]): b for b in range(256)}
    for tok in [b"bc", b"ab", b"abc", b"cd", b"abcd", b"aa", b"aaa", b" a", "é".encode()]:
        ranks[tok] = len(ranks)
    return tk.encoding_from_ranks(ranks, {"<|x|>": len(ranks), "<|y|>": len(ranks) + 1}, name="toy")


def test_hub_style_tokenizer_json_with_specials_in_vocab_and_no_merges(tmp_path):
    toy = _toy_encoding()
    doc = json.loads(tk.write_tokenizer_json(tmp_path, toy).read_text(encoding="utf-8"))
    doc["model"]["vocab"].update({t["content"]: t["id"] for t in doc["added_tokens"]})
    doc["model"]["merges"] = []  # ranks come from the ids alone
    doc["pre_tokenizer"] = {"type": "ByteLevel"}  # no Split: the o200k regex is assumed
    p = tmp_path / "hub.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    back = tk.encoding_from_tokenizer_json(p, name="toy")
    assert back._mergeable_ranks == toy._mergeable_ranks
    assert back._special_tokens == {"<|x|>": 265, "<|y|>": 266}
    assert back.encode("abcd aé<|x|>", allowed_special="all") == toy.encode("abcd aé<|x|>", allowed_special="all")


def test_tokenizer_json_errors(tmp_path):
    toy = _toy_encoding()
    p = tk.write_tokenizer_json(tmp_path / "t.json", toy)
    doc = json.loads(p.read_text(encoding="utf-8"))
    del doc["model"]["vocab"]["Ġ"]
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="single-byte"):
        tk.encoding_from_tokenizer_json(p)
    doc["model"]["vocab"]["a b"] = 300  # a literal space is not byte-level encoded
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not byte-level"):
        tk.encoding_from_tokenizer_json(p)
    p.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match="byte-level BPE"):
        tk.encoding_from_tokenizer_json(p)
    with pytest.raises(ValueError, match="cannot read"):
        tk.encoding_from_tokenizer_json(tmp_path / "missing.json")


def test_derived_merges_reproduce_tiktoken_on_a_toy_vocab():
    # A small vocabulary where a greedy merge list would differ from rank order: "bc" outranks
    # "ab", so "abc" must be built as a + bc.
    ranks = {bytes([b]): b for b in range(256)}
    for tok in [b"bc", b"ab", b"abc", b"cd", b"abcd", b"aa", b"aaa"]:
        ranks[tok] = len(ranks)
    merges = tk.derive_merges(ranks)
    assert merges.index((b"b", b"c")) < merges.index((b"a", b"b")) < merges.index((b"a", b"bc"))
    # every merge's halves and result are tokens, ordered by the result's rank
    results = [ranks[a + b] for a, b in merges]
    assert results == sorted(results)
    assert all(a in ranks and b in ranks for a, b in merges)
    assert (b"ab", b"c") in merges and (b"a", b"bc") in merges  # all splits, not just one
