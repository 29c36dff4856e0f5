"""JSON schemas compiled to token masks (llguidance), for the content of a message that must conform.

`Grammars` holds what llguidance needs to read our vocabulary (built once per instance: about a
second) and the schemas compiled so far, keyed by a hash of the schema and bounded by count and
bytes. `ContentMatcher` walks one message's content: the mask of the tokens that keep it a prefix
of a conforming document, and whether the document is complete. Which message must conform, and
which token ends it, is `constraint.ReplyConstraint`'s business; this module knows JSON only.

The subset of JSON Schema is llguidance's (OpenAI's strict-mode subset and more: `minLength`,
`maxLength`, `allOf`, `patternProperties` ...); a keyword it cannot enforce (`uniqueItems`, `not`,
`if`/`then`, an unknown `format`, a bad `pattern`) is refused with a `GrammarError` naming it, never
silently dropped. Documents are compact (no whitespace between tokens), which also keeps a model
from padding a reply with whitespace forever.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import tiktoken

from mlx_oss import tokenizer as tk
from mlx_oss.errors import UserError

__all__ = ["GrammarError", "Grammar", "Grammars", "ContentMatcher", "ANY_JSON_OBJECT"]

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}  # `json_object` (JSON mode): any object
_OPTIONS = {"whitespace_flexible": False}


class GrammarError(UserError, ValueError):
    """A schema that cannot be enforced; str() names the keyword (or what else is wrong)."""


@dataclass(frozen=True)
class Grammar:
    """One compiled schema (cached under the hash of its canonical JSON, `schema_key`): `template` a
    fresh matcher that each use copies (llguidance's matchers are stateful)."""

    template: Any  # llguidance.LLMatcher, never advanced
    nbytes: int  # the schema's JSON size, what the cache bound counts


def schema_key(schema: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines[:3])[:300] if lines else "llguidance refused it"


class Grammars:
    """Compiles JSON schemas for one encoding and keeps the last `max_entries` (and at most
    `max_bytes` of schema JSON) by hash: a client that sends the same schema each request compiles it
    once. Thread-safe (the server's request threads check schemas, its worker uses them)."""

    def __init__(self, encoding: tiktoken.Encoding, *, max_entries: int = 64, max_bytes: int = 8 << 20) -> None:
        self.encoding = encoding
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self.compiled = 0  # schemas compiled (not found in the cache), for tests and stats

    @property
    def tokenizer(self) -> Any:
        """llguidance's view of the vocabulary (about a second to build; built on first use)."""
        with self._lock:
            if self._tokenizer is None:
                from llguidance.tiktoken import lltokenizer_from_encoding

                enc = self.encoding
                self._tokenizer = lltokenizer_from_encoding(enc, n_vocab=enc.n_vocab, eos_token=tk.RETURN)
            return self._tokenizer

    def json_schema(self, schema: Any, where: str = "schema") -> Grammar:
        """The compiled grammar of `schema` (a JSON Schema object); GrammarError naming `where` and the
        keyword when llguidance cannot enforce it."""
        if not isinstance(schema, dict):
            raise GrammarError(f"{where} must be a JSON schema object, not {type(schema).__name__}")
        try:
            key = schema_key(schema)
        except (TypeError, ValueError) as e:
            raise GrammarError(f"{where} is not JSON: {e}") from None
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        grammar = self._compile(schema, where)
        with self._lock:
            self._cache[key] = grammar
            self.compiled += 1
            while len(self._cache) > self.max_entries or (
                len(self._cache) > 1 and sum(g.nbytes for g in self._cache.values()) > self.max_bytes
            ):
                self._cache.popitem(last=False)
        return grammar

    def _compile(self, schema: dict[str, Any], where: str) -> Grammar:
        import llguidance

        tokenizer = self.tokenizer
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=dict(_OPTIONS))
        except ValueError as e:
            raise GrammarError(f"{where}: {_first_line(str(e))}") from None
        matcher = llguidance.LLMatcher(tokenizer, text, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"{where} cannot be enforced: {_describe(matcher.get_error())}")
        return Grammar(matcher, len(text))

    def matcher(self, grammar: Grammar, end: int) -> ContentMatcher:
        """A fresh walk of `grammar` whose content ends with the special token `end`."""
        return ContentMatcher(grammar.template.deep_copy(), end, self.encoding.n_vocab)


def _describe(error: str) -> str:
    """llguidance's error as one line that names the keyword (`Unimplemented keys: ["uniqueItems"]`)."""
    line = _first_line(error)
    if line.startswith("oneOf constraints are not supported"):  # its advice names an option of ours to set
        return 'keyword(s) ["oneOf"] not supported (anyOf is: a oneOf whose branches cannot overlap can be one)'
    if "Unimplemented keys" in line:
        names = line[line.index("[") :] if "[" in line else line
        return f"keyword(s) {names} not supported (see the README's 'Structured output' for the subset)"
    return line


class ContentMatcher:
    """One message's content against a grammar. `allowed(vocab)` is the mask of the next token: the
    grammar's tokens, never a harmony special token, and `end` only where the document is complete.
    `feed(token)` advances it; `end` itself is not fed."""

    def __init__(self, matcher: Any, end: int, n_vocab: int) -> None:
        self._m = matcher
        self.end = end
        self._words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    @property
    def accepting(self) -> bool:
        """The content so far is a complete document (the end token may come now)."""
        return bool(self._m.is_accepting())

    @property
    def error(self) -> str:
        return self._m.get_error() if self._m.is_error() else ""

    def allowed(self, vocab: int) -> np.ndarray:
        """bool [vocab]: the tokens allowed next."""
        self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        bits = np.unpackbits(self._words.view(np.uint8), bitorder="little")[:vocab].astype(bool)
        if bits.shape[0] < vocab:  # rows past the tokenizer's ids (padded embeddings): never allowed
            bits = np.concatenate([bits, np.zeros(vocab - bits.shape[0], dtype=bool)])
        bits[tk.FIRST_SPECIAL :] = False
        if self.end < vocab and (self._m.is_accepting() or self._m.is_stopped()):
            bits[self.end] = True
        return bits

    def feed(self, token: int) -> bool:
        """Advance by a sampled content token; False if the grammar refused it (it then stays in error)."""
        return bool(self._m.consume_token(token))
