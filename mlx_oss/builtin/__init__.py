"""The built-in tools gpt-oss was trained to use: `browser` (search, open, find, citations) and
`python` (a stateful notebook, off unless enabled, every call approved). See README "Built-in tools"."""

from mlx_oss.builtin.registry import BUILTIN_TOOLS, BuiltinTools

__all__ = ["BUILTIN_TOOLS", "BuiltinTools"]
