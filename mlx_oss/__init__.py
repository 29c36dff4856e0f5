"""mlx-oss: OpenAI's gpt-oss on Apple Silicon with MLX."""

__version__ = "0.1.0"

# Public name -> module. Lazy so that `import mlx_oss` (e.g. for the CLI's --help) does not import MLX.
_EXPORTS = {
    "load": "mlx_oss.loader",
    "Chat": "mlx_oss.chat",
    "Engine": "mlx_oss.engine",
    "ContextLengthError": "mlx_oss.engine",
    "SamplingConfig": "mlx_oss.sampling",
    "BatchGenerator": "mlx_oss.batch",
    "generate_batch": "mlx_oss.batch",
    "ReasoningDelta": "mlx_oss.events",
    "AnswerDelta": "mlx_oss.events",
    "UnparsedDelta": "mlx_oss.events",
    "Progress": "mlx_oss.events",
    "ToolCall": "mlx_oss.events",
    "ToolResult": "mlx_oss.events",
    "Done": "mlx_oss.events",
    "Stats": "mlx_oss.events",
    "Reply": "mlx_oss.events",
    "Event": "mlx_oss.events",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlx_oss' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
