"""What `mlx-oss generate|bench|chat|serve ... --hosts HOSTFILE` (or the same command under `mlx.launch`) adds to a
single-machine run: start/join the group, resolve the model once per host, load this rank's slice,
check that every rank holds the same checkpoint, and on ranks other than 0 follow rank 0."""

from __future__ import annotations

import argparse
import fcntl
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mlx_oss.distributed import launch
from mlx_oss.distributed.session import (
    Session, agree_kv_cache, broadcast_text, check_same_checkpoint, in_group, is_follower, join,
)  # fmt: skip

# How long an error leaving a group waits for the watchdog to report a lost peer (it sees a closed
# socket at once; this is for a loaded machine), before the error itself is reported.
PEER_LOSS_GRACE_S = 2.0

__all__ = ["agree_model", "end", "follow_rank_0", "group", "is_follower", "load", "resolve_once_per_host"]


@contextmanager
def group(a: argparse.Namespace, argv: list[str] | None = None) -> Iterator[Session | None]:
    """The session of this rank (None for a single-machine run); closed, and the started ranks
    waited for, at the end."""
    if getattr(a, "hosts", None):
        launch.start_ranks(a.hosts, sys.argv[1:] if argv is None else argv)
    if not in_group():
        yield None
        return
    session = join()
    launch.joined()
    try:
        yield session
    except BaseException as e:
        # no goodbye: the other ranks stop at once, saying rank 0 was lost. An error (not ctrl-c) may be
        # MLX's own report of a lost peer: the watchdog gets a moment to name the rank instead
        session.watchdog.abort(grace=PEER_LOSS_GRACE_S if isinstance(e, Exception) else 0.0)
        launch.wait_ranks()
        raise
    end(session)
    session.close()
    launch.wait_ranks()


def end(session: Session | None) -> None:
    """Rank 0: tell the followers the run is over (once). Call it on the thread that ran the
    engines (the TUI's model thread, the server's worker) when that is not the main thread, so a
    generation its consumer dropped is finished where its arrays live; `group()` calls it otherwise."""
    if session is not None and session.leader and session.ready:
        from mlx_oss.distributed.engine import end_followers

        session.ready = False
        end_followers(session.comm)


def resolve_once_per_host(name: str, status: Callable[[str], None]) -> Path:
    """`store.resolve_model` under a per-host lock: ranks sharing a machine convert/download once."""
    from mlx_oss.store import cache_home, resolve_model

    home = cache_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".resolve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return resolve_model(name, progress=False, status=status)


def load(
    session: Session, name: str, dtype: str | None, status: Callable[[str], None], *, kv_bits: int | None = None,
    kv_group_size: int | None = 64, own_kv: bool = True,
):  # fmt: skip
    """-> (this rank's model, tokenizer), after the same-checkpoint check. `kv_bits` 8 or 4: every cache
    made for the model is quantized (`mlx_oss.loader.load`'s meaning), on every rank alike: rank 0's
    setting is the group's, and a rank whose own setting (`own_kv`) differs stops the group with one
    line before any weight is read; a follower given none (`own_kv=False`) takes rank 0's."""
    from mlx_oss.config import ModelArgs, check_kv_quant
    from mlx_oss.distributed.load import load_sharded, manifest_digest
    from mlx_oss.tokenizer import load_tokenizer

    kv_group_size = 64 if kv_group_size is None else kv_group_size
    if own_kv:
        check_kv_quant(kv_bits, kv_group_size)  # this rank's own flags, before the others hear of them
    folder = resolve_once_per_host(name, status)
    check_same_checkpoint(session.comm, manifest_digest(folder))
    kv_bits, kv_group_size = agree_kv_cache(session.comm, kv_bits, kv_group_size, own_kv)
    if kv_bits is not None:  # the same setting and head_dim on every rank: all of them raise here, or none
        check_kv_quant(kv_bits, kv_group_size, ModelArgs.from_path(folder).head_dim)
    model = load_sharded(folder, session.comm, dtype)
    model.set_kv_quant(kv_bits, kv_group_size)
    model.source = folder
    session.ready = True
    try:
        tok = load_tokenizer(folder)
    except ValueError:
        tok = load_tokenizer(None)
    return model, tok


def follow_rank_0(session: Session, name: str, dtype: str | None, **kv_cache) -> int:
    """A rank other than 0: load its slice and run rank 0's commands until it ends the run.
    `kv_cache`: this rank's own `kv_bits` / `kv_group_size` (its parsed flags), checked against rank
    0's; without them it takes rank 0's (a follower's engines follow rank 0's engines' settings anyway)."""
    from mlx_oss.distributed.engine import follow

    model, _ = load(session, name, dtype, status=lambda m: None, own_kv=bool(kv_cache), **kv_cache)
    follow(model, session.comm)
    return 0


def agree_model(session: Session, name: str | None) -> str:
    """The model rank 0 names (a chat resumed from rank 0's store may name it), on every rank."""
    return broadcast_text(session.comm, name if session.leader else None)
