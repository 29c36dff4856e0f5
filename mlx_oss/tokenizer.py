"""o200k_harmony, the gpt-oss tokenizer, as a `tiktoken.Encoding` built from local files only.

The vocabulary (OpenAI's o200k_base ranks, MIT) ships inside the package and a converted model
folder carries the same file, so loading never touches the network. Its sha256 is checked at
load because a silently different vocabulary would make the model emit garbage.

A Hugging Face `tokenizer.json` (byte-level BPE) can be read back into ranks and compared with the
bundled copy, and `write_tokenizer_json` produces one for folders that mlx-lm/transformers open.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import tiktoken

__all__ = [
    "O200K_BASE_SHA256",
    "O200K_PATTERN",
    "VOCAB_FILENAME",
    "N_VOCAB",
    "STARTOFTEXT",
    "ENDOFTEXT",
    "RETURN",
    "CONSTRAIN",
    "CHANNEL",
    "START",
    "END",
    "MESSAGE",
    "CALL",
    "ENDOFPROMPT",
    "STOP_TOKENS",
    "STOP_TOKENS_FOR_ASSISTANT_ACTIONS",
    "bundled_vocab_path",
    "find_vocab_file",
    "load_tokenizer",
    "harmony_special_tokens",
    "encoding_from_ranks",
    "load_ranks",
    "encoding_from_tokenizer_json",
    "write_tokenizer_json",
    "encodings_equal",
    "derive_merges",
    "bytes_to_unicode",
]

VOCAB_FILENAME = "o200k_base.tiktoken"
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
N_BASE_RANKS = 199_998

# The o200k pre-tokenizer regex, as in tiktoken's tiktoken_ext/openai_public.py.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

STARTOFTEXT = 199_998
ENDOFTEXT = 199_999
RETURN = 200_002
CONSTRAIN = 200_003
CHANNEL = 200_005
START = 200_006
END = 200_007
MESSAGE = 200_008
CALL = 200_012
ENDOFPROMPT = 200_018
FIRST_SPECIAL = STARTOFTEXT
N_VOCAB = 201_088  # ids 0..201087

_NAMED_SPECIALS = {
    STARTOFTEXT: "<|startoftext|>",
    ENDOFTEXT: "<|endoftext|>",
    RETURN: "<|return|>",
    CONSTRAIN: "<|constrain|>",
    CHANNEL: "<|channel|>",
    START: "<|start|>",
    END: "<|end|>",
    MESSAGE: "<|message|>",
    CALL: "<|call|>",
    ENDOFPROMPT: "<|endofprompt|>",
}

# Tokens that end a message; the engine stops sampling only on the latter two (`<|end|>` is
# followed by the model's next `<|start|>`).
STOP_TOKENS = frozenset({RETURN, CALL, END})
STOP_TOKENS_FOR_ASSISTANT_ACTIONS = frozenset({RETURN, CALL})


def harmony_special_tokens() -> dict[str, int]:
    """Special tokens 199998..201087: the named harmony tokens, `<|reserved_N|>` elsewhere."""
    return {
        _NAMED_SPECIALS.get(i, f"<|reserved_{i}|>"): i for i in range(FIRST_SPECIAL, N_VOCAB)
    }


def bundled_vocab_path() -> Path:
    """The o200k_base ranks shipped inside the package (the only copy we ever need)."""
    return Path(__file__).resolve().parent / "data" / VOCAB_FILENAME


def find_vocab_file(path: str | Path | None = None) -> Path:
    """Resolve a file, a model folder or its `tokenizer/` subfolder to the ranks file.

    Raises ValueError (naming every place looked at) when there is none.
    """
    if path is None:
        return bundled_vocab_path()
    p = Path(path)
    if p.is_file():
        return p
    candidates = [p / VOCAB_FILENAME, p / "tokenizer" / VOCAB_FILENAME]
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in ([p] if not p.is_dir() else candidates))
    raise ValueError(f"o200k vocabulary not found: no file at {looked}")


def load_ranks(path: str | Path, expected_sha256: str | None = O200K_BASE_SHA256) -> dict[bytes, int]:
    """Read a `.tiktoken` ranks file after checking its sha256.

    Parsed here rather than with `tiktoken.load.load_tiktoken_bpe`, which also reads and writes a
    cache under the system temp folder; we want to read exactly this one file and nothing else.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read o200k vocabulary {p}: {e}") from e
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ValueError(
                f"o200k vocabulary {p} has sha256 {actual}, expected {expected_sha256} "
                "(corrupted or not o200k_base)"
            )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as e:
            raise ValueError(f"malformed line {line[:80]!r} in {p}") from e
    return ranks


def encoding_from_ranks(
    ranks: dict[bytes, int],
    special_tokens: Mapping[str, int] | None = None,
    pattern: str = O200K_PATTERN,
    name: str = "o200k_harmony",
) -> tiktoken.Encoding:
    """Build an Encoding; defaults give o200k_harmony for the o200k_base ranks."""
    specials = dict(harmony_special_tokens() if special_tokens is None else special_tokens)
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


@lru_cache(maxsize=4)
def _load_cached(resolved: str, size: int, mtime_ns: int) -> tiktoken.Encoding:
    # size/mtime are part of the key so a replaced file is re-read (and re-verified).
    return encoding_from_ranks(load_ranks(resolved))


def load_tokenizer(path: str | Path | None = None) -> tiktoken.Encoding:
    """o200k_harmony from the bundled ranks (path=None) or from a file / model folder.

    A folder is searched for `o200k_base.tiktoken` directly and in `tokenizer/`. Loaded encodings
    are cached per file, so calling this repeatedly is cheap.
    """
    f = find_vocab_file(path).resolve()
    st = f.stat()
    return _load_cached(str(f), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json (byte-level BPE)
# ---------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def _pattern_from_pre_tokenizer(pre: object) -> str | None:
    """Find the first Split regex in a (possibly nested) tokenizers pre_tokenizer config."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "Split":
        pat = pre.get("pattern")
        if isinstance(pat, dict) and isinstance(pat.get("Regex"), str):
            return pat["Regex"]
    for sub in pre.get("pretokenizers") or []:
        found = _pattern_from_pre_tokenizer(sub)
        if found is not None:
            return found
    return None


def encoding_from_tokenizer_json(path: str | Path, name: str = "o200k_harmony") -> tiktoken.Encoding:
    """Turn a Hub byte-level BPE `tokenizer.json` into a tiktoken Encoding.

    Ranks are the vocab ids (tiktoken's merge priority is the rank, which for these vocabularies
    is the id); special tokens come from `added_tokens`; the regex from the Split pre-tokenizer,
    defaulting to o200k's. Use `encodings_equal` to prove it matches the bundled encoding.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read tokenizer.json {p}: {e}") from e
    model = doc.get("model") or {}
    if model.get("type") not in (None, "BPE") or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{p} is not a byte-level BPE tokenizer.json (model.type={model.get('type')!r})")
    specials = {t["content"]: int(t["id"]) for t in doc.get("added_tokens") or []}
    special_ids = set(specials.values())
    table = bytes_to_unicode()
    to_bytes = {ord(c): b for b, c in table.items()}
    valid = re.compile("[" + re.escape("".join(table.values())) + "]*")
    ranks: dict[bytes, int] = {}
    for token, idx in model["vocab"].items():
        if idx in special_ids:
            continue
        if not valid.fullmatch(token):
            raise ValueError(f"{p}: vocab entry {token!r} is not byte-level encoded")
        ranks[token.translate(to_bytes).encode("latin-1")] = int(idx)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{p}: byte-level vocab lacks single-byte tokens {missing[:8]}...")
    pattern = _pattern_from_pre_tokenizer(doc.get("pre_tokenizer")) or O200K_PATTERN
    return encoding_from_ranks(ranks, specials, pattern, name)


def encodings_equal(a: tiktoken.Encoding, b: tiktoken.Encoding) -> bool:
    """Same ranks, same special tokens, same pre-tokenizer regex: they encode identically."""
    return (
        a._mergeable_ranks == b._mergeable_ranks  # noqa: SLF001 - tiktoken exposes no accessor
        and a._special_tokens == b._special_tokens  # noqa: SLF001
        and a._pat_str == b._pat_str  # noqa: SLF001
    )


def derive_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges equivalent to tiktoken's rank-ordered merging.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank. A merge-list BPE
    reproduces that when it lists every split (left, right) of every token whose halves are both
    tokens, ordered by the rank of the merged token (then by the halves' ranks, for determinism).
    """
    get = ranks.get
    found: list[tuple[int, int, int]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left = get(token[:i])
            if left is not None:
                right = get(token[i:])
                if right is not None:
                    found.append((rank, left, right))
    found.sort()
    by_rank = {r: t for t, r in ranks.items()}
    return [(by_rank[left], by_rank[right]) for _, left, right in found]


def write_tokenizer_json(dst_path: str | Path, enc: tiktoken.Encoding) -> Path:
    """Write a Hugging Face `tokenizer.json` equivalent to `enc` (vocab, merges, specials, regex).

    The layout mirrors what transformers' tiktoken converter produces (Split on the tiktoken regex,
    then ByteLevel without its own regex), so mlx-lm / transformers tokenize exactly as tiktoken.
    """
    ranks: dict[bytes, int] = enc._mergeable_ranks  # noqa: SLF001
    specials: dict[str, int] = enc._special_tokens  # noqa: SLF001
    table = bytes_to_unicode()  # keyed by byte value == ord of the latin-1 character
    as_str = {tok: tok.decode("latin-1").translate(table) for tok in ranks}
    vocab = {as_str[tok]: rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    merges = [[as_str[a], as_str[b]] for a, b in derive_merges(ranks)]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for s, i in sorted(specials.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": enc._pat_str},  # noqa: SLF001
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
    dst = Path(dst_path)
    if dst.is_dir():
        dst = dst / "tokenizer.json"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    tmp.replace(dst)
    return dst
