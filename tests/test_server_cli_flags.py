"""`mlx-oss serve` flags that only matter on their way to the app and uvicorn: `--state-key` (flag, else
MLX_OSS_STATE_KEY, else None: a random key per start) reaches `create_app(state_key=)` and is never
printed; `--log-level` sets uvicorn's level and uvicorn's own access log stays off. The real `_serve`
with the real model and app; only uvicorn is a stand-in that records its settings and never listens."""

from __future__ import annotations

import logging

import pytest

from mlx_oss.cli.main import build_parser
from mlx_oss.server import cli
from mlx_oss.server.app import create_app

SECRET = "state-key-9c1f2e77"


class _Uvicorn:
    """What `_serve` uses of uvicorn: Config and Server; this Server records the config and never runs."""

    configs: list[dict] = []

    class Config:
        def __init__(self, app, **kw) -> None:
            self.app, self.kw = app, kw
            _Uvicorn.configs.append(kw)

    class Server:
        def __init__(self, config) -> None:
            self.config, self.started, self.should_exit, self.force_exit = config, False, False, False

        def run(self) -> None:
            pass


@pytest.fixture
def keep_logging():
    logger = logging.getLogger("mlx_oss")
    before = (list(logger.handlers), logger.level)
    yield
    logger.handlers[:] = before[0]
    logger.setLevel(before[1])


@pytest.mark.parametrize(("argv", "env", "want", "uvicorn_level"), [
    (["--state-key", SECRET], "ignored-when-the-flag-is-given", SECRET, "warning"),
    (["--log-level", "debug"], SECRET, SECRET, "debug"),
    (["--log-level", "error"], None, None, "error"),
])  # fmt: skip
def test_state_key_and_log_level_reach_the_app_and_uvicorn(tiny_chat_converted, monkeypatch, capsys, keep_logging,
                                                           argv, env, want, uvicorn_level):  # fmt: skip
    if env is None:
        monkeypatch.delenv(cli.STATE_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.STATE_KEY_ENV, env)
    seen = []

    def recording_create_app(*args, **kw):
        seen.append(kw["state_key"])
        return create_app(*args, **kw)

    _Uvicorn.configs.clear()
    a = build_parser().parse_args(["serve", "--model", str(tiny_chat_converted), *argv])
    assert cli._serve(a, None, _Uvicorn, recording_create_app, None) == 1  # the stand-in never listens
    assert seen == [want]
    (config,) = _Uvicorn.configs
    assert config["log_level"] == uvicorn_level and config["access_log"] is False
    out, err = capsys.readouterr()
    assert "mlx-oss serve:" in out and SECRET not in out + err


@pytest.mark.parametrize(("argv", "want"), [([], None), (["--kv-bits", "8"], (8, 64)), (["--kv-bits", "4", "--kv-group-size", "32"], (4, 32))])
def test_kv_bits_reach_every_cache_the_server_makes(tiny_chat_hd64_converted, monkeypatch, capsys, keep_logging, argv, want):
    """`serve --kv-bits B --kv-group-size G` (issue 30): the engine's caches, and so the pool's states, are
    quantized with B bits in groups of G; without the flag they are not."""
    from mlx_oss.nn.cache import KVCache, QuantizedKVCache, RotatingKVCache

    monkeypatch.delenv(cli.STATE_KEY_ENV, raising=False)
    apps = []

    def recording_create_app(*args, **kw):
        apps.append(create_app(*args, **kw))
        return apps[-1]

    a = build_parser().parse_args(["serve", "--model", str(tiny_chat_hd64_converted), *argv])
    assert cli._serve(a, None, _Uvicorn, recording_create_app, None) == 1  # the stand-in never listens
    cache = apps[0].state.backend.engine.cache
    # tiny-chat: sliding, full, sliding, full; the window stays in full precision
    assert [type(c) for c in cache] == [RotatingKVCache, KVCache if want is None else QuantizedKVCache] * 2
    if want is not None:
        assert {(c.bits, c.group_size) for c in cache[1::2]} == {want}
    capsys.readouterr()
