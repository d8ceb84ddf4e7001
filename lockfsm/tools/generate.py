"""``lockfsm spec gen``: write everything generated from the tables in ``specs/``.

The runtime's tables and state enums (lockfsm/protocol/tables.py and states.py) and the formal
models (specs/model-<N>hosts.pml).  The modules that make each piece (tools/spec.py,
tools/model.py) know nothing of each other; this one puts them together.
"""

from __future__ import annotations

from pathlib import Path

from lockfsm.tools import model, modelcheck, spec


def write_generated(specs_dir: Path | None = None) -> list[Path]:
    """Regenerate ``lockfsm/protocol/{states,tables}.py`` and the formal models in ``specs/``;
    return the paths.  Raises InvalidArgument for a broken table."""
    d = specs_dir or spec.default_specs_dir()
    specs = spec.load_all(d)
    spec.GENERATED.write_text(spec.generate(specs))
    spec.GENERATED_MACHINES.write_text(spec.generate_machines(specs))
    written = [spec.GENERATED, spec.GENERATED_MACHINES]
    for hosts in modelcheck.HOSTS:
        path = modelcheck.model_path(d, hosts)
        path.write_text(model.generate(specs, hosts))
        written.append(path)
    return written
