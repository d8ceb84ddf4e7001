"""The package's layers: what each subpackage may import, read from the source and checked in a
fresh interpreter.  The supervisor's lean import set is a rule, not a comment."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lockfsm

ROOT = Path(lockfsm.__file__).parent

#: layer -> the lockfsm modules (by prefix) it may import.  A layer always may import itself.
ALLOWED = {
    "lockfsm.errors": (),
    "lockfsm.protocol": ("lockfsm.errors",),
    "lockfsm.backends": ("lockfsm.errors", "lockfsm.protocol"),
    "lockfsm.supervisor": ("lockfsm.errors", "lockfsm.protocol", "lockfsm.backends"),
    "lockfsm.daemon": ("lockfsm.errors", "lockfsm.protocol", "lockfsm.backends"),
    # The agent reads the host's configuration file as the daemon does.
    "lockfsm.agent": (
        "lockfsm.errors",
        "lockfsm.protocol",
        "lockfsm.backends",
        "lockfsm.daemon.config",
    ),
    "lockfsm.embed": ("lockfsm", "lockfsm.errors", "lockfsm.protocol", "lockfsm.daemon"),
    "lockfsm.tools": ("lockfsm",),  # the top: anything
    "lockfsm.fuzz": ("lockfsm",),  # the race machines and `lockfsm fuzz`: anything
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _layer(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def _is_module(name: str) -> bool:
    base = ROOT.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path) -> list[str]:
    """The lockfsm modules ``path`` imports, at any depth of its code (``from a import b``
    imports module a.b if there is one, else a)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append(sub if _is_module(sub) else node.module)
    return [m for m in found if m == "lockfsm" or m.startswith("lockfsm.")]


def _allowed(layer: str, target: str) -> bool:
    if target == layer or target.startswith(layer + "."):
        return True
    if layer in ("lockfsm.tools", "lockfsm.fuzz"):  # the top layers
        return True
    if target == "lockfsm":  # the package itself: its public names (errors and flags)
        return layer in ("lockfsm.embed",)
    return any(target == a or target.startswith(a + ".") for a in ALLOWED[layer] if a != "lockfsm")


MODULES = sorted(p for p in ROOT.rglob("*.py") if _layer(_module_name(p)) is not None)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_module_reaches_up_a_layer(path: Path) -> None:
    module = _module_name(path)
    layer = _layer(module)
    assert layer is not None
    wrong = [t for t in _imports(path) if not _allowed(layer, t)]
    assert not wrong, f"{module} ({layer}) imports {wrong}"


def test_every_module_belongs_to_a_layer() -> None:
    loose = [
        _module_name(p)
        for p in ROOT.rglob("*.py")
        if _layer(_module_name(p)) is None
        and _module_name(p) not in ("lockfsm", "lockfsm.__main__")
    ]
    assert not loose, f"modules outside every layer: {loose}"


def _loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_supervisor_imports_only_what_it_needs() -> None:
    """A supervisor runs once per guest: no daemon side, no tools, no attrs, no transitions,
    no hashlib, no ctypes, no etcd client."""
    loaded = _loaded_by("import lockfsm.supervisor.process, lockfsm.backends.fcntl")
    heavy = {
        m
        for m in loaded
        if m.split(".")[0] in ("attrs", "transitions", "hashlib", "ctypes", "grpc", "aetcd")
        or m.startswith(("lockfsm.daemon.manager", "lockfsm.daemon.values", "lockfsm.tools"))
        or m.startswith(("lockfsm.agent", "lockfsm.embed", "lockfsm.backends.etcd.client"))
        or m == "lockfsm.protocol.states"
    }
    assert not heavy, sorted(heavy)


def test_importing_lockfsm_is_cheap() -> None:
    loaded = _loaded_by("import lockfsm")
    assert not {m for m in loaded if m.split(".")[0] in ("attrs", "transitions")}
    assert "lockfsm.daemon.manager" not in loaded
