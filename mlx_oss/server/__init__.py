"""`mlx-oss serve`: an OpenAI-compatible local server (Responses and Chat Completions APIs) over the
engine, with exact harmony and a prompt-cache pool across stateless requests. See docs/SERVER.md.

Nothing is imported here: `mlx-oss` registers the `serve` subcommand from `mlx_oss.server.cli` in every
install, and the web framework (`starlette`, the `serve` extra) is loaded only by `mlx_oss.server.app`."""
