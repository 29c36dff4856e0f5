"""The import rules of docs/ARCHITECTURE.md, checked by reading every import (ast, lazy ones too).

`violations(root)` is the checker; the tests run it on the repository (no violation) and on a copy
of the tree with one forbidden import added (each rule reports it), so a rule cannot silently pass.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Repository folder -> the package it installs as (pyproject.toml [tool.setuptools.package-dir]).
SOURCES = {"mlx_oss": "mlx_oss", "convert": "mlx_oss.convert", "tui": "mlx_oss.tui"}

# Front ends: what the user runs. They may import the runtime; runtime modules never import them.
FRONT_ENDS = ("mlx_oss.cli", "mlx_oss.tui", "mlx_oss.bench", "mlx_oss.server")
SHARED_FLAGS = "mlx_oss.cli.args"  # the one front-end module other front ends may import
DISPATCHER = "mlx_oss.cli.main"  # the composition root: names every subcommand module, imported by nothing
TUI_DOOR = "mlx_oss.tui.session"  # the TUI's one door to the model: the only tui module that touches MLX or loads
MODEL_SIDE = ("mlx", "mlx_oss.loader", "mlx_oss.chat", "mlx_oss.engine", "mlx_oss.store", "mlx_oss.sampling",
              "mlx_oss.nn", "mlx_oss.backend", "mlx_oss.distributed")  # fmt: skip

# Package -> the only mlx_oss modules (prefixes) it may import besides itself.
ALLOWED = {
    "mlx_oss.nn": ("mlx_oss.config",),
    "mlx_oss.backend": ("mlx_oss.config", "mlx_oss.nn"),
    "mlx_oss.convert": ("mlx_oss.config", "mlx_oss.tokenizer", "mlx_oss.errors"),
    "mlx_oss.config": ("mlx_oss.errors",),
    "mlx_oss.errors": (),
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the installed packages under `root`."""
    out = {}
    for folder, package in SOURCES.items():
        base = root / folder
        for f in sorted(base.rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            rel = f.relative_to(base).with_suffix("").parts
            parts = [package, *rel]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def imports_of(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth (lazy imports count).
    `from a import b` yields `a.b` (b may be a module); relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if a.name != "*" else base) for a in node.names]
    return out


def _owner(target: str, known: dict[str, Path]) -> str | None:
    """The mlx_oss module an import refers to (the longest known prefix), or None for third-party."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return None


def _node(module: str) -> str:
    """Cycle-check granularity: a subpackage of mlx_oss (nn, backend, cli, ...) or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def violations(root: Path) -> list[str]:
    """Every broken rule in the tree at `root`, as "file:line: message"."""
    known = modules(root)
    found: list[str] = []
    edges: dict[str, set[str]] = {}
    for mod, path in known.items():
        where = path.relative_to(root)
        for line, target in imports_of(mod, path):
            top = target.split(".")[0]
            if _within(mod, "mlx_oss.tui") and mod != TUI_DOOR and any(_within(target, m) for m in MODEL_SIDE):
                found.append(f"{where}:{line}: {mod} imports {target}; in tui only {TUI_DOOR} touches MLX and the model")
            if top in ("convert", "tui"):
                found.append(f"{where}:{line}: imports {target}: a bare top-level name; import mlx_oss.{target}")
                continue
            dep = _owner(target, known)
            if dep is None or dep == mod:
                continue
            for pkg, allowed in ALLOWED.items():
                if _within(mod, pkg) and not _within(dep, pkg) and not any(_within(dep, a) for a in allowed):
                    found.append(f"{where}:{line}: {mod} imports {dep}; {pkg} may import only {', '.join(allowed) or 'nothing of mlx_oss'}")
            src_front = next((f for f in FRONT_ENDS if _within(mod, f)), None)
            dst_front = next((f for f in FRONT_ENDS if _within(dep, f)), None)
            if dep == DISPATCHER:
                found.append(f"{where}:{line}: {mod} imports {DISPATCHER}, the dispatcher nothing imports")
            elif dst_front and src_front is None:
                found.append(f"{where}:{line}: runtime module {mod} imports front end {dep}")
            elif dst_front and src_front != dst_front and not _within(dep, SHARED_FLAGS):
                found.append(f"{where}:{line}: front end {mod} imports {dep}; front ends share only {SHARED_FLAGS}")
            if mod != DISPATCHER and _node(mod) != _node(dep) and dep != "mlx_oss":
                edges.setdefault(_node(mod), set()).add(_node(dep))
    found += [f"import cycle between packages: {' -> '.join(c)}" for c in _cycles(edges)]
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------------------ the repository


def test_the_repository_keeps_the_import_rules():
    assert violations(ROOT) == []


def test_no_bare_convert_or_tui_imports_anywhere():
    """Tests, benchmarks and scripts import the installed names too (mlx_oss.convert, mlx_oss.tui)."""
    bad = []
    for folder in ("tests", "benchmarks", "scripts"):
        for f in (ROOT / folder).rglob("*.py"):
            for line, target in imports_of(f.stem, f):
                if target.split(".")[0] in ("convert", "tui"):
                    bad.append(f"{f.relative_to(ROOT)}:{line}: {target}")
    assert bad == []


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_lists_every_package():
    """A package missing from [tool.setuptools] packages would import in the repo but not once installed."""
    st = _pyproject()["tool"]["setuptools"]
    on_disk = {m for m, f in modules(ROOT).items() if f.name == "__init__.py"}
    # a folder of data files only (no .py) is a package too when package-data names it
    folder = lambda pkg: ROOT / st["package-dir"].get(pkg, pkg.replace(".", "/"))  # noqa: E731
    data_only = {p for p in st["package-data"] if not any(folder(p).glob("*.py"))}
    assert all(folder(p).is_dir() for p in data_only)
    assert set(st["packages"]) == on_disk | data_only
    assert st["package-dir"] == {pkg: folder for folder, pkg in SOURCES.items()}


# ------------------------------------------------------------------------------ the checker fails when it should


def _tree(tmp_path: Path) -> Path:
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.tiktoken", "*.tcss"))
    return tmp_path


def _add(root: Path, rel: str, code: str) -> None:
    f = root / rel
    f.write_text(f.read_text(encoding="utf-8") + "\n\ndef _added():\n    " + code + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "rel, code, message",
    [
        ("mlx_oss/nn/moe.py", "from mlx_oss.backend.cpu import SplitLinear", "mlx_oss.nn may import only mlx_oss.config"),
        ("mlx_oss/nn/model.py", "import mlx_oss.engine", "mlx_oss.nn may import only mlx_oss.config"),
        ("mlx_oss/backend/cpu.py", "from mlx_oss.chat import Chat", "mlx_oss.backend may import only"),
        ("convert/reader.py", "from mlx_oss.loader import load", "mlx_oss.convert may import only"),
        ("mlx_oss/config.py", "from mlx_oss.convert.layouts import Spec", "mlx_oss.config may import only"),
        ("mlx_oss/engine.py", "from mlx_oss.cli import args", "runtime module mlx_oss.engine imports front end"),
        ("mlx_oss/chat.py", "import mlx_oss.tui.app", "runtime module mlx_oss.chat imports front end"),
        ("tui/app.py", "from mlx_oss.bench.runners import OursRunner", "front end mlx_oss.tui.app imports mlx_oss.bench"),
        ("tui/cli.py", "from mlx_oss.cli.main import main", "the dispatcher nothing imports"),
        ("mlx_oss/harmony/render.py", "from mlx_oss.chat import Chat", "import cycle between packages"),
        ("mlx_oss/store.py", "import tui.app", "a bare top-level name"),
        ("tui/app.py", "import mlx.core as mx", "in tui only mlx_oss.tui.session touches MLX"),
        ("tui/widgets.py", "from mlx_oss.chat import Chat", "in tui only mlx_oss.tui.session touches MLX"),
        ("convert/hub.py", "from .. import loader", "mlx_oss.convert may import only"),
    ],
)
def test_a_forbidden_import_is_reported(tmp_path, rel, code, message):
    root = _tree(tmp_path)
    assert violations(root) == []
    _add(root, rel, code)
    found = violations(root)
    assert any(message in v for v in found), found
    assert any(v.startswith(rel) for v in found) or "cycle" in message, found
