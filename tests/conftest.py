"""Shared fixtures: small synthetic checkpoints in the real on-disk layouts, generated once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# openai-harmony (a test-only oracle) reads o200k_base from here instead of the network.
os.environ.setdefault("TIKTOKEN_ENCODINGS_BASE", str(Path(__file__).resolve().parents[1] / "mlx_oss" / "data"))

from mlx_oss.convert.convert import convert_checkpoint  # noqa: E402
from mlx_oss.convert.synthetic import preset, write_hub_snapshot  # noqa: E402


@pytest.fixture(autouse=True)
def _chat_data_dir(tmp_path_factory, monkeypatch):
    """No test writes the user's real chat database: `mlx-oss chat` keeps chats in a temp folder."""
    monkeypatch.setenv("MLX_OSS_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory) -> Path:
    """A Hub-shaped snapshot of the 'tiny' preset: HF layout at the root, OpenAI layout in original/."""
    return write_hub_snapshot(tmp_path_factory.mktemp("ckpt") / "tiny", preset("tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_hf(tiny_hub: Path) -> Path:
    return tiny_hub


@pytest.fixture(scope="session")
def tiny_original(tiny_hub: Path) -> Path:
    return tiny_hub / "original"


@pytest.fixture(scope="session")
def tiny_converted(tiny_hf: Path, tmp_path_factory) -> Path:
    """The tiny model converted to an mlx-oss folder (do not modify: shared by the session)."""
    return convert_checkpoint(tiny_hf, tmp_path_factory.mktemp("conv") / "tiny", progress=False).dst


@pytest.fixture(scope="session")
def tiny_chat_converted(tmp_path_factory) -> Path:
    """Tiny layers with the full 201088-token vocabulary, for tests that go through the tokenizer
    (do not modify). `MLX_OSS_TEST_TINY_CHAT` names a folder built the same way beforehand:
    scripts/mutation.sh builds it once instead of once per mutant."""
    prebuilt = os.environ.get("MLX_OSS_TEST_TINY_CHAT")
    if prebuilt:
        return Path(prebuilt)
    return _tiny_chat(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="session")
def tiny_chat_hd64_converted(tmp_path_factory) -> Path:
    """tiny-chat at gpt-oss's head_dim 64, so MLX can quantize its KV cache (groups of 32, 64 or 128
    values; tiny-chat's head_dim 16 cannot be grouped). Do not modify."""
    return _tiny_chat(tmp_path_factory.mktemp("chat-hd64"), head_dim=64)


@pytest.fixture(scope="session")
def lean_chat_converted(tmp_path_factory) -> Path:
    """tiny-chat with one full-attention layer and 4 query heads, for the client layer (tests/clients): the
    clients send prompts of 10-13k tokens, and the CPU backend's attention over them is most of a client
    test's time (16 heads x 2 full layers: ~25 s for Claude Code's first prompt). The protocol under test
    does not depend on the size. Do not modify."""
    return _tiny_chat(tmp_path_factory.mktemp("lean-chat"), num_hidden_layers=2, num_attention_heads=4)


def _tiny_chat(root: Path, **overrides) -> Path:
    """The tiny-chat preset with `overrides`, written as an HF checkpoint and converted under `root`."""
    from mlx_oss.convert.synthetic import write_checkpoint

    src = write_checkpoint(root / "src", preset("tiny-chat", **overrides), "hf", seed=0)
    return convert_checkpoint(src, root / "converted", progress=False).dst


@pytest.fixture
def srv(served):
    """A server test's clean slate over its module's `served` fixture (tests/server_harness.py:
    `serve_folder` or `running_server`): no scripts, requests or bodies left from the last test."""
    from server_harness import fresh

    return fresh(served)


@pytest.fixture
def client(srv):
    """The openai SDK's client on `srv` (no retries)."""
    from server_harness import sdk_client

    return sdk_client(srv)
