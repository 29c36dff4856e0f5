"""Nothing ever deletes what it did not create (issue 25, data loss): `--force` replaces only a complete
mlx-oss output that neither is, contains nor lies inside the source; every other destination is refused
in one line, whatever the flags, and the refusal never suggests a --force that would be refused too."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from mlx_oss.cli.main import main
from mlx_oss.convert import safe_paths
from mlx_oss.convert.convert import convert_checkpoint, is_complete
from mlx_oss.convert.staging import staged_folder
from mlx_oss.errors import ConvertError

TARGETS = {"mlx-oss": [], "mlx-lm": ["--to", "mlx-lm"]}


def snapshot(root: Path) -> dict[str, str]:
    """Every file, folder and link under `root` (links not followed): what must survive a refusal."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "folder"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def src(tiny_hub, tmp_path) -> Path:
    """A private copy of the Hub-shaped checkpoint, with a sibling file its parent folder holds."""
    s = tmp_path / "parent" / "src"
    shutil.copytree(tiny_hub, s)
    (tmp_path / "parent" / "notes.txt").write_text("a sibling the user keeps")
    return s


def _dst(case: str, src: Path, tmp_path: Path) -> Path:
    if case == "the source":
        return src
    if case == "the source's parent":
        return src.parent
    if case == "inside the source":
        return src / "original"  # the OpenAI layout of the snapshot
    if case == "a new folder inside the source":
        return src / "out"
    if case in ("a link to the source", "a link to the source's parent"):
        link = tmp_path / "link"
        link.symlink_to(src if case == "a link to the source" else src.parent, target_is_directory=True)
        return link
    if case == "a foreign folder":
        d = tmp_path / "mine"
        d.mkdir()
        (d / "thesis.tex").write_text("years of work")
        return d
    if case == "a file":
        f = tmp_path / "a-file"
        f.write_text("not a folder")
        return f
    raise AssertionError(case)


REFUSED = [
    ("the source", "is the source"),
    ("the source's parent", "contains the source"),
    ("inside the source", "lies inside the source"),
    ("a new folder inside the source", "lies inside the source"),
    ("a link to the source", "is the source"),
    ("a link to the source's parent", "contains the source"),
    ("a foreign folder", "is not a complete mlx-oss output"),
    ("a file", "is not a folder"),
]


@pytest.mark.parametrize("to", TARGETS)
@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
@pytest.mark.parametrize("case,why", REFUSED, ids=[c for c, _ in REFUSED])
def test_a_destination_mlx_oss_did_not_write_is_refused_and_every_file_survives(src, tmp_path, capsys, to, force, case, why):
    dst = _dst(case, src, tmp_path)
    before = snapshot(tmp_path)
    argv = ["convert", *TARGETS[to], str(src), str(dst), "--no-progress"] + (["--force"] if force else [])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mlx-oss: error: {dst}: ") and why in err, err
    assert "--force" not in err  # --force would be refused too: never suggested
    assert snapshot(tmp_path) == before  # every file survives, and nothing was left behind


@pytest.mark.parametrize("to", TARGETS)
def test_force_replaces_a_complete_mlx_oss_output_unrelated_to_the_source(src, tiny_converted, tmp_path, capsys, to):
    dst = tmp_path / "old-output"
    shutil.copytree(tiny_converted, dst)
    assert main(["convert", *TARGETS[to], str(src), str(dst), "--no-progress"]) in (0, 1)
    err = capsys.readouterr().err
    if to == "mlx-lm":  # without --force a complete output is refused, and --force is what replaces it
        assert err.count("\n") == 1 and "pass --force to replace it" in err, err
    before = snapshot(tmp_path / "parent")
    assert main(["convert", *TARGETS[to], str(src), str(dst), "--force", "--no-progress"]) == 0
    assert snapshot(tmp_path / "parent") == before
    assert (dst / "config.json").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if to == "mlx-oss":
        assert is_complete(dst)
    else:  # the export is an mlx-oss output too: replaced again with --force, refused without
        assert json.loads((dst / "config.json").read_text())["model_type"] == "gpt_oss"
        assert main(["convert", *TARGETS[to], str(src), str(dst), "--no-progress"]) == 1
        assert "pass --force to replace it" in capsys.readouterr().err
        assert main(["convert", *TARGETS[to], str(src), str(dst), "--force", "--no-progress"]) == 0


def test_force_through_a_link_replaces_the_output_it_points_to(src, tiny_converted, tmp_path):
    real = tmp_path / "real"
    shutil.copytree(tiny_converted, real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert main(["convert", str(src), str(link), "--force", "--no-progress"]) == 0
    assert link.is_symlink() and is_complete(real)


@pytest.mark.parametrize("to", TARGETS)
def test_an_output_holding_a_file_it_did_not_write_is_refused(src, tiny_converted, tmp_path, capsys, to):
    dst = tmp_path / "out"
    shutil.copytree(tiny_converted, dst)
    (dst / "my-notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert main(["convert", *TARGETS[to], str(src), str(dst), "--force", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "my-notes.txt" in err and "--force" not in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("to", TARGETS)
def test_an_incomplete_output_is_refused_even_with_force(src, tiny_converted, tmp_path, capsys, to):
    dst = tmp_path / "half"
    shutil.copytree(tiny_converted, dst)
    next(dst.glob("*.safetensors")).unlink()  # an interrupted copy
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        assert main(["convert", *TARGETS[to], str(src), str(dst), "--no-progress", *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a complete mlx-oss output" in err and "--force" not in err, err
    assert snapshot(tmp_path) == before


def test_an_empty_folder_is_filled_and_nothing_is_removed(src, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_complete(convert_checkpoint(src, empty, progress=False).dst)


def test_the_skip_message_suggests_force_only_where_force_would_replace(src, tmp_path, capsys):
    dst = tmp_path / "out"
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 0
    assert "already converted (pass --force to convert again)" in capsys.readouterr().out
    (dst / "my-notes.txt").write_text("mine")
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already converted" in out and "--force" not in out


# ------------------------------------------------------------------ the staging swap removes only what it made


def test_staging_never_removes_a_folder_that_has_its_temporary_name(src, tmp_path, tiny_converted):
    """The old code removed `.DST.partial-PID` if it existed and renamed DST onto `.DST.old-PID`: a
    leftover (or a planted folder) of that name was deleted, or made the swap fail."""
    dst = tmp_path / "dst"
    shutil.copytree(tiny_converted, dst)
    for name in (f".dst.partial-{os.getpid()}", f".dst.old-{os.getpid()}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("not the converter's")
    convert_checkpoint(src, dst, force=True, progress=False)
    assert is_complete(dst)
    for name in (f".dst.partial-{os.getpid()}", f".dst.old-{os.getpid()}"):
        assert (tmp_path / name / "keep.txt").read_text() == "not the converter's"


def test_a_failed_write_removes_only_its_own_temporary_folder(tmp_path):
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "dst", 0) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ the one rule, asked directly


def test_the_rule_refuses_what_it_did_not_make_and_removes_what_it_made(tmp_path):
    mine = safe_paths.make_folder(tmp_path, "work-")
    (mine.path / "a").write_text("made here")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    assert safe_paths.refusal(mine) is None and "is not a complete mlx-oss output" in safe_paths.refusal(theirs)
    assert "is not a complete mlx-oss output" in safe_paths.refusal(mine.path)  # the path alone is no proof
    with pytest.raises(ConvertError, match=f"^{theirs}: "):
        safe_paths.remove_folder(theirs)
    assert theirs.is_dir()
    link = tmp_path / "link"
    link.symlink_to(theirs, target_is_directory=True)
    with pytest.raises(ConvertError):
        safe_paths.remove_folder(link)  # a link to a folder it did not make: the link's target decides
    swapped = safe_paths.make_folder(tmp_path, "swap-")
    other = tmp_path / "other"
    other.mkdir()  # made while the first exists: another inode
    swapped.path.rmdir()
    other.rename(swapped.path)  # another folder now stands where the made one was
    assert "is not a complete mlx-oss output" in safe_paths.refusal(swapped)
    safe_paths.remove_folder(mine)
    assert not mine.path.exists() and theirs.is_dir() and link.is_symlink() and swapped.path.is_dir()
    src = tmp_path / "src"
    src.mkdir()
    inner = safe_paths.make_folder(src, "x-")
    assert "lies inside the source" in safe_paths.refusal(inner, sources=[src])  # made here, but inside what is read
    assert "contains the source" in safe_paths.refusal(tmp_path, sources=[src])


# ------------------------------------------------------------------ the other folder removers


def test_the_python_tool_never_removes_a_folder_it_did_not_create(tmp_path):
    from mlx_oss.builtin.python import PythonTool

    given = tmp_path / "python-dir"
    given.mkdir()
    PythonTool(workdir=given, keep_files=False).close()
    assert given.is_dir()
    own = PythonTool(keep_files=False)
    victim = tmp_path / "home"
    victim.mkdir()
    (victim / "important.txt").write_text("keep")
    shutil.rmtree(own.workdir)
    own.workdir.symlink_to(victim, target_is_directory=True)  # the model's code swapped its folder for a link
    own.close()
    assert (victim / "important.txt").read_text() == "keep"
    own.workdir.unlink()
    ok = PythonTool(keep_files=False)
    ok.close()
    assert not ok.workdir.exists()  # its own temporary folder still goes


def test_the_model_cache_never_writes_into_or_over_the_source(src, tmp_path, monkeypatch):
    from mlx_oss.store import resolve_model

    monkeypatch.setenv("MLX_OSS_HOME", str(src / "cache"))
    before = snapshot(src)
    with pytest.raises(ConvertError, match="lies inside the source"):
        resolve_model(str(src), progress=False)
    assert snapshot(src) == before


def test_new_folders_are_fresh_named_and_moded(tmp_path, monkeypatch):
    umask = os.umask(0)
    os.umask(umask)
    plain = safe_paths.new_folder(tmp_path, "plain-")
    assert plain.name.startswith("plain-") and len(plain.name) == len("plain-") + 8
    assert plain.stat().st_mode & 0o7777 == 0o777 & ~umask
    made = safe_paths.make_folder(tmp_path, "made-")
    assert made.path.name.startswith("made-") and made.path.stat().st_mode & 0o7777 == 0o777 & ~umask
    private = safe_paths.make_folder(tmp_path, "private-", mode=0o700)
    assert private.path.stat().st_mode & 0o7777 == 0o700 & ~umask
    # a name that is taken (a leftover, or planted) is skipped, never adopted
    taken = tmp_path / "x-aaaaaaaa"
    taken.mkdir()
    (taken / "theirs").write_text("keep")
    names = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(safe_paths.secrets, "token_hex", lambda n: next(names))
    fresh = safe_paths.make_folder(tmp_path, "x-")
    assert fresh.path == tmp_path / "x-bbbbbbbb" and (taken / "theirs").read_text() == "keep"


def test_a_made_folder_that_is_gone_is_no_longer_ours(tmp_path):
    made = safe_paths.make_folder(tmp_path, "gone-")
    assert made.still_ours()
    made.path.rmdir()
    assert not made.still_ours()


def test_remove_folder_keeps_the_sources_rule_for_made_folders(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    inner = safe_paths.make_folder(src, "x-")
    with pytest.raises(ConvertError, match="lies inside the source"):
        safe_paths.remove_folder(inner, sources=[src])
    assert inner.path.is_dir()


def test_the_sources_are_the_given_folder_and_where_its_files_really_live(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a").write_text("x")
    (blobs / "b").write_text("y")
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "a").symlink_to(blobs / "a")
    (snap / "b").symlink_to(blobs / "b")
    (snap / "c").write_text("z")
    found = safe_paths.source_folders(snap, [snap / "a", snap / "b", snap / "c"])
    assert found == [snap.absolute(), blobs.resolve()]  # each folder once, the blobs too
    with pytest.raises(ConvertError, match="is the source checkpoint"):
        safe_paths.check_destination(blobs, found, force=True)


def test_removing_something_that_is_not_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConvertError) as e:
        safe_paths.remove_folder(f)
    assert str(e.value) == f"{f}: not removed: it is not a folder" and f.read_text() == "x"
