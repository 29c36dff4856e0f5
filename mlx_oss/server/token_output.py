"""What a sampled token adds to a client's text: harmony markup never, log-probabilities on request.

The parser decodes a special token met inside content (a model writing malformed harmony) to its
literal text (`<|channel|>`); text outside any message (`StreamEvent.unparsed`) may hold such text
too. `TokenOutput` removes that markup from content before it reaches a client and counts those
tokens; with the parser's `unparsed_tokens` they are the `unparsed_tokens` of usage. With
`SamplingConfig.logprobs` set it turns the sampler's records into OpenAI's logprob entries (`token`,
`logprob`, `bytes`, `top_logprobs`), the same shape in both APIs.
"""

from __future__ import annotations

import re

import tiktoken

from mlx_oss import tokenizer as tk
from mlx_oss.sampling import Sampler

__all__ = ["TokenOutput", "strip_markup"]

_MARKUP = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def strip_markup(text: str) -> str:
    """`text` without harmony special-token markup (`<|channel|>`, `<|reserved_200013|>`, ...)."""
    return _MARKUP.sub("", text)


class TokenOutput:
    """Per-generation helper of `run_generation`: markup stripping in content (and its count), logprob entries."""

    def __init__(self, encoding: tiktoken.Encoding, sampler: Sampler) -> None:
        self.encoding = encoding
        self.sampler = sampler
        self.want_logprobs = sampler.config.logprobs is not None
        self.unparsed_tokens = 0
        self._base = len(sampler.records)

    @staticmethod
    def is_markup(token: int) -> bool:
        return token >= tk.FIRST_SPECIAL

    def content(self, token: int, delta: str) -> str:
        """A content token's delta, without the markup a special token inside content decodes to."""
        if self.is_markup(token):
            self.unparsed_tokens += 1
            return strip_markup(delta)
        return delta

    def _entry(self, token: int, logprob: float) -> dict:
        data = self.encoding.decode_single_token_bytes(token)
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    def logprob(self, step: int) -> dict:
        """OpenAI's logprob entry for the token sampled at `step` of this generation."""
        r = self.sampler.logprobs(self._base + step)
        return {**self._entry(r.token, r.logprob), "top_logprobs": [self._entry(t, v) for t, v in r.top]}
