"""Test-only logits processors that script what a random model writes (no server imports, so the
constraint tests run without the serve extra)."""

from __future__ import annotations

import mlx.core as mx

from mlx_oss import tokenizer as tk


class AfterHeader:
    """Once a `<|constrain|>json<|message|>` header is complete (the constraint forced one), writes
    `text` and `end`: the arguments a real model would write, which random logits never do."""

    def __init__(self, tok, text: str, end: int = tk.CALL) -> None:
        self.script = tok.encode_ordinary(text) + [end]
        self.at: int | None = None

    def __call__(self, context, logits):
        if self.at is None and context.size >= 3:
            last = context[-3:].tolist()
            if last[-1] == tk.MESSAGE and last[0] == tk.CONSTRAIN:
                self.at = 0
        if self.at is None or self.at >= len(self.script):
            return logits
        tok = self.script[self.at]
        self.at += 1
        return mx.where(mx.arange(logits.shape[-1]) == tok, 0.0, -mx.inf).reshape(logits.shape).astype(logits.dtype)
