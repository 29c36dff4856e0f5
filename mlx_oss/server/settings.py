"""What `mlx-oss serve` prints once the model is loaded: the base URL and ready-to-paste settings
for the clients people plug in (the openai SDK, curl, Codex, Open WebUI). The API key itself is
never printed: the settings refer to the environment variable that holds it."""

from __future__ import annotations

__all__ = ["client_settings", "KEY_ENV"]

KEY_ENV = "MLX_OSS_API_KEY"


def client_settings(base_url: str, model_id: str, has_key: bool) -> str:
    key = f"${KEY_ENV}" if has_key else "none (any string works)"
    sdk_key = f'os.environ["{KEY_ENV}"]' if has_key else '"none"'
    codex_key = f'env_key = "{KEY_ENV}"\n' if has_key else ""
    return f"""\
mlx-oss serve: {model_id} at {base_url}  (Ctrl+C to stop)

openai SDK (Python):
    client = OpenAI(base_url="{base_url}", api_key={sdk_key})
    client.responses.create(model="{model_id}", input="Hello")

curl:
    curl {base_url}/chat/completions -H "Content-Type: application/json"{' -H "Authorization: Bearer $' + KEY_ENV + '"' if has_key else ''} \\
      -d '{{"model": "{model_id}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

Codex (~/.codex/config.toml), then `codex --profile mlx-oss`:
    [model_providers.mlx-oss]
    name = "mlx-oss"
    base_url = "{base_url}"
    wire_api = "responses"
    {codex_key.rstrip() or '# no API key set'}

    [profiles.mlx-oss]
    model_provider = "mlx-oss"
    model = "{model_id}"

Open WebUI: Admin Settings > Connections > OpenAI API > add
    URL {base_url}   key {key}
"""
