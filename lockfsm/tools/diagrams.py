"""``lockfsm diagrams``: every lifecycle table drawn with graphviz; message sequence charts of a
recorded real run on each backend (fcntl, sanlock, etcd); and a step-through page of those runs,
into ``diagrams/`` (or ``--out``).  Output is byte-stable: the same tables and the same
recordings give the same files.

The recordings (``diagrams/run-<backend>.json``, copied into the package) are made through the
stand-in harness with real supervisors and real lock services (lockfsm.tools.recording):
``lockfsm diagrams --record`` records the fcntl run again; tools/record_runs.py records all
three, starting sanlock and etcd daemons for the purpose.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from lockfsm.errors import BackendError, InvalidArgument
from lockfsm.tools import recording, sequence, stepper
from lockfsm.tools.spec import TABLE_NAMES, Spec, load_all, packaged, source_tree

#: Edge colours by the table a row is written in.
COLOURS = {"migration_source": "#1f5fbf", "migration_target": "#2a8a3a"}
BACKENDS = ("fcntl", "sanlock", "etcd")


def default_dir() -> Path:
    """``diagrams/`` of the source checkout.  Raises InvalidArgument for an installed lockfsm
    (there is no such place: give ``--out``)."""
    tree = source_tree()
    if tree is None:
        raise InvalidArgument(
            "this lockfsm is installed, not a source checkout: give the output directory with "
            "--out DIR"
        )
    return tree / "diagrams"


def _graphviz() -> Any:
    try:
        import graphviz
    except ImportError:
        raise BackendError(
            "the diagrams need the graphviz package: pip install lockfsm[diagrams]"
        ) from None
    if shutil.which("dot") is None:
        raise BackendError("the diagrams need graphviz's dot (Debian: apt install graphviz)")
    return graphviz


def machine_graph(spec: Spec) -> Any:
    """The state diagram of one table: states (terminal ones doubled), one edge per row, labelled
    ``event [guards] / actions``, coloured by the table the row is written in."""
    g = _graphviz().Digraph(
        spec.name,
        graph_attr={
            "rankdir": "LR",
            "label": spec.title,
            "labelloc": "t",
            "fontsize": "16",
            "fontname": "Helvetica",
        },
    )
    g.attr("node", shape="ellipse", fontname="Helvetica", fontsize="11")
    g.attr("edge", fontname="Helvetica", fontsize="9")
    g.node("__start", shape="point", label="")
    for name, state in spec.states.items():
        shape = "doublecircle" if state.attrs.get("terminal") else "ellipse"
        style = "filled" if state.attrs.get("guest") else ""
        g.node(name, shape=shape, style=style, fillcolor="#f2f2f2", tooltip=state.doc)
    g.edge("__start", spec.initial)
    for move in spec.moves:
        guards = spec.guards_of(move)
        label = move.event + (f" [{', '.join(guards)}]" if guards else "")
        label += f"\n/ {', '.join(move.actions)}" if move.actions else ""
        colour = COLOURS.get(move.origin, "black")
        for src in move.sources:
            dest = src if move.dest == "=" else move.dest
            g.edge(src, dest, label=label, color=colour, fontcolor=colour)
    return g


def recording_path(out: Path, backend: str) -> Path:
    """Where ``out`` keeps the recorded run of ``backend``.  Raises nothing."""
    return out / f"run-{backend}.json"


def load_recording(path: Path) -> dict[str, Any]:
    """A recording from ``path``.  Raises InvalidArgument (naming the file) when it is not
    JSON or not a recording."""
    try:
        data = json.loads(path.read_text())
        recording.check(data)
    except (ValueError, InvalidArgument) as e:
        raise InvalidArgument(f"{path} is not a recorded run: {str(e)[:120]}") from None
    return data  # type: ignore[no-any-return]


def charts(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name without suffix, SVG text) of each sequence chart of a recorded run.  Raises
    InvalidArgument when the run lacks a scene a chart shows."""
    events = run["events"]
    starts = {e["name"]: n for n, e in enumerate(events) if e["kind"] == "scene"}
    bounds = [*sorted(starts.values()), len(events)]
    drawn = []
    for name, title, scenes in recording.CHARTS:
        missing = [s for s in scenes if s not in starts]
        if missing:
            raise InvalidArgument(f"the {run['backend']} recording has no scene {missing[0]}")
        first = starts[scenes[0]]
        last = bounds[bounds.index(starts[scenes[-1]]) + 1]
        svg = sequence.chart(events[first:last], title, run["backend"], first)
        drawn.append((f"sequence-{run['backend']}-{name}", svg))
    return drawn


def render(out: Path | None = None) -> list[Path]:
    """Write every table's diagram (DOT, SVG, PNG), each recorded run's sequence charts (SVG,
    PNG) and the step-through page into ``out``.  Raises BackendError without graphviz or
    rsvg-convert, InvalidArgument for a malformed recording in ``out``."""
    out = out or default_dir()
    out.mkdir(parents=True, exist_ok=True)
    runs, drawn, copies = {}, [], []
    for backend in BACKENDS:  # every recording is checked before anything is written
        path = source = recording_path(out, backend)
        if not path.exists():  # the recorded run the package carries: copied once all load
            source = packaged(path.name)
            copies.append((source, path))
        runs[backend] = load_recording(source)
        drawn += charts(runs[backend])
    for source, path in copies:
        shutil.copyfile(source, path)
    specs = load_all()
    written = []
    for name in TABLE_NAMES:
        graph = machine_graph(specs[name])
        (out / f"{name}.dot").write_text(graph.source)
        written.append(out / f"{name}.dot")
        for fmt in ("svg", "png"):
            path = out / f"{name}.{fmt}"
            path.write_bytes(graph.pipe(format=fmt))
            written.append(path)
    for name, svg in drawn:
        (out / f"{name}.svg").write_text(svg)
        (out / f"{name}.png").write_bytes(sequence.png(svg))
        written += [out / f"{name}.svg", out / f"{name}.png"]
    page = out / stepper.PAGE
    page.write_text(
        stepper.page(
            runs,
            (out / "domain.svg").read_text(),
            (out / "supervisor.svg").read_text(),
        )
    )
    written.append(page)
    return written


def main(out: str | None = None, rerecord: bool = False) -> int:
    target = Path(out) if out else default_dir()
    if target.exists() and not target.is_dir():
        raise InvalidArgument(f"--out {target} is not a directory")
    if rerecord:
        target.mkdir(parents=True, exist_ok=True)
        path = recording_path(target, "fcntl")
        path.write_text(json.dumps(recording.record_fcntl(), indent=1) + "\n")
        print(f"recorded {path}")
    for path in render(target):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
