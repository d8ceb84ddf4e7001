"""``lockfsm spec gen``: write everything generated from the tables in ``specs/``.

The runtime's tables and state enums (lockfsm/protocol/tables.py and states.py) and the formal
models (specs/model-<N>hosts.pml).  The modules that make each piece (tools/spec.py,
tools/model.py) know nothing of each other; this one puts them together.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lockfsm.errors import InvalidArgument
from lockfsm.tools import model, modelcheck, spec, timing


def write_generated(specs_dir: Path | None = None) -> list[Path]:
    """Regenerate ``lockfsm/protocol/{states,tables}.py`` and the formal models in ``specs/`` (the
    protocol's for 2 and 3 hosts, and the timing model);
    return the paths.  Raises InvalidArgument for a broken table, or when this lockfsm is an
    installed package (``spec gen`` writes into a source checkout only)."""
    tree = spec.source_tree()
    if tree is None:
        raise InvalidArgument(
            f"lockfsm spec gen writes into a source checkout; this lockfsm is installed "
            f"({Path(spec.__file__).resolve().parents[1]}): run it from a clone of the source"
        )
    d = specs_dir or spec.default_specs_dir()
    specs = spec.load_all(d)
    spec.GENERATED.write_text(spec.generate(specs))
    spec.GENERATED_MACHINES.write_text(spec.generate_machines(specs))
    written = [spec.GENERATED, spec.GENERATED_MACHINES]
    for hosts in modelcheck.HOSTS:
        path = modelcheck.model_path(d, hosts)
        path.write_text(model.generate(specs, hosts))
        written.append(path)
    path = modelcheck.model_path(d, "timing")
    path.write_text(timing.generate(specs, timing.defaults()))
    written.append(path)
    return written + sync_package_data(tree)


def package_data(tree: Path) -> dict[Path, Path]:
    """Each file of the package's copy (lockfsm/tools/data) and the source file it copies."""
    data = tree / "lockfsm" / "tools" / "data"
    pairs = {data / "specs" / p.name: p for p in sorted((tree / "specs").glob("*.toml"))}
    pairs.update({data / "specs" / p.name: p for p in sorted((tree / "specs").glob("*.pml"))})
    pairs.update({data / p.name: p for p in sorted((tree / "diagrams").glob("run-*.json"))})
    return pairs


def sync_package_data(tree: Path) -> list[Path]:
    """Copy the tables, the models and the recorded run into the package (the copy an
    installed lockfsm reads); remove copies whose source is gone."""
    pairs = package_data(tree)
    data = tree / "lockfsm" / "tools" / "data"
    for stale in set(data.rglob("*.*")) - set(pairs):
        stale.unlink()
    for copy, source in pairs.items():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return list(pairs)
