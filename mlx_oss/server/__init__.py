"""`mlx-oss serve`: an OpenAI-compatible local server (Responses and Chat Completions APIs) over the
engine, with exact harmony and a prompt-cache pool across stateless requests. See docs/SERVER.md."""

from mlx_oss.server.app import create_app

__all__ = ["create_app"]
