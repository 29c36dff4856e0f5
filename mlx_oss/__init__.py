"""mlx-oss: OpenAI's gpt-oss on Apple Silicon with MLX."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import mlx_oss` (e.g. for the CLI's --help) does not import MLX.
    if name == "load":
        from mlx_oss.loader import load

        return load
    raise AttributeError(name)
