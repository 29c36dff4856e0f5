"""What `mlx-oss serve` prints once the model is loaded: the base URL and ready-to-paste settings
for the clients people plug in (the openai SDK, curl, Codex, Open WebUI). The API key itself is
never printed: the settings refer to the environment variable that holds it.

Codex: a profile file, `~/.codex/mlx-oss.config.toml`, used with `codex --profile mlx-oss`, as Codex
wants it since profiles became files (checked with @openai/codex 0.171.0, which refuses a
`[profiles.NAME]` table in config.toml once --profile is given). tests/clients/test_client_codex.py
runs the real Codex with exactly this file (docs/CLIENTS.md).

Claude Code: environment variables in front of `claude` (`claude_code_env`): the server's root URL
(Anthropic's SDK adds /v1/messages), the key's variable, our model for every model Claude Code asks
for (main and background), compaction before the server's context is full, and no traffic to
Anthropic's services. tests/clients/test_client_claude.py runs the real Claude Code with exactly these.
"""

from __future__ import annotations

__all__ = ["client_settings", "codex_config", "claude_code_env", "CODEX_PROFILE", "CODEX_VERSION", "CLAUDE_CODE_VERSION",
           "KEY_ENV"]  # fmt: skip

KEY_ENV = "MLX_OSS_API_KEY"
CODEX_PROFILE = "mlx-oss"  # the file ~/.codex/mlx-oss.config.toml, selected by `codex --profile mlx-oss`
CODEX_VERSION = "0.171.0"  # the Codex CLI the printed config was checked with (tests/clients/package.json)
CLAUDE_CODE_VERSION = "2.1.337"  # the Claude Code the printed variables were checked with (the same file)
# Claude Code reads a CLAUDE_CODE_AUTO_COMPACT_WINDOW below this as this (it says so at start): a server with a
# smaller context refuses its requests before it compacts
CLAUDE_CODE_MIN_WINDOW = 100_000


def codex_config(base_url: str, model_id: str, has_key: bool) -> str:
    """The Codex profile file (TOML): mlx-oss as a Responses API provider and the model to ask for.
    With a key, Codex reads it from the environment variable named by `env_key`."""
    key = f'env_key = "{KEY_ENV}"\n' if has_key else ""
    return f"""\
model = "{model_id}"
model_provider = "mlx-oss"

[model_providers.mlx-oss]
name = "mlx-oss"
base_url = "{base_url}"
wire_api = "responses"
{key}"""


def claude_code_env(base_url: str, model_id: str, has_key: bool, context: int) -> dict[str, str]:
    """Claude Code's settings, as environment variables (values as the shell line shows them): with a
    key, `ANTHROPIC_AUTH_TOKEN` is the variable that holds it, expanded by the shell."""
    return {
        "ANTHROPIC_BASE_URL": base_url.removesuffix("/v1"),
        "ANTHROPIC_AUTH_TOKEN": f"${KEY_ENV}" if has_key else "none",
        "ANTHROPIC_MODEL": model_id,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model_id,  # its background work (titles, summaries)
        "CLAUDE_CODE_AUTO_COMPACT_WINDOW": str(context),  # compact before the server's context is full
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry, error reports or update checks
    }


def client_settings(base_url: str, model_id: str, has_key: bool, context: int) -> str:
    key = f"${KEY_ENV}" if has_key else "none (any string works)"
    sdk_key = f'os.environ["{KEY_ENV}"]' if has_key else '"none"'
    codex = "".join(f"    {line}\n" if line else "\n" for line in codex_config(base_url, model_id, has_key).splitlines())
    codex_env = f" (with {KEY_ENV} set in its environment)" if has_key else ""
    claude = "".join(f"    {k}={v} \\\n" for k, v in claude_code_env(base_url, model_id, has_key, context).items())
    claude_note = "" if context >= CLAUDE_CODE_MIN_WINDOW else (
        f" (it compacts no earlier than {CLAUDE_CODE_MIN_WINDOW} tokens: give the server --max-context "
        f"{CLAUDE_CODE_MIN_WINDOW} or more)")
    return f"""\
mlx-oss serve: {model_id} at {base_url}  (Ctrl+C to stop)

openai SDK (Python):
    client = OpenAI(base_url="{base_url}", api_key={sdk_key})
    client.responses.create(model="{model_id}", input="Hello")

curl:
    curl {base_url}/chat/completions -H "Content-Type: application/json"{' -H "Authorization: Bearer $' + KEY_ENV + '"' if has_key else ''} \\
      -d '{{"model": "{model_id}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

Codex {CODEX_VERSION} (~/.codex/{CODEX_PROFILE}.config.toml), then `codex --profile {CODEX_PROFILE}`{codex_env}:
{codex}
Claude Code {CLAUDE_CODE_VERSION}{claude_note}:
{claude}    claude

Open WebUI: Admin Settings > Connections > OpenAI API > add
    URL {base_url}   key {key}
"""
