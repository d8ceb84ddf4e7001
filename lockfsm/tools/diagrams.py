"""``lockfsm diagrams``: every lifecycle table drawn with graphviz, and a two-host migration drawn
as a sequence from a recorded run, into ``diagrams/`` (SVG and PNG).  Output is byte-stable: the
same tables and the same recording give the same files.

The recording (``diagrams/migration-run.json``) is made by ``lockfsm diagrams --record``: a real
cancelled and a real completed migration between two simulated hosts on the fcntl backend, with
real supervisors; it keeps each manager's moves (from its history, in the order they completed)
and who held or reserved each lease after each step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from lockfsm.errors import BackendError, InvalidArgument
from lockfsm.tools.spec import TABLE_NAMES, Spec, load_all, packaged, source_tree

#: Edge colours by the table a row is written in.
COLOURS = {"migration_source": "#1f5fbf", "migration_target": "#2a8a3a"}
RECORDING = "migration-run.json"
NOISE = {"set_parameter", "register_resource", "supervisor_args"}  # self-loops on idle, left out


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


def record(out: Path) -> Path:
    """Run a cancelled and a completed migration between two simulated hosts and write what the
    managers did to ``out``/migration-run.json."""
    from lockfsm import NewFlags
    from lockfsm.embed import standin
    from lockfsm.tools import status

    top = tempfile.mkdtemp(prefix="lfrec")
    steps: list[dict[str, Any]] = []
    managers: list[tuple[str, Any]] = []
    lockspace = os.path.join(top, "lockspace")
    hosts = {
        name: standin.Host(
            "fcntl", lockspace, os.path.join(top, name), name, stderr=subprocess.DEVNULL
        )
        for name in ("host-a", "host-b")
    }
    try:
        disks = standin.make_disks(top, "a.img", "b.img")
        uuid = str(uuidlib.uuid4())

        def manager(host: str, flags: int = 0, cookie: str | None = None) -> Any:
            mgr = hosts[host].manager("vm", uuid, disks, flags)
            if cookie:
                mgr.set_parameter("migration_cookie", cookie)
            hosts[host].launch(mgr, ["sleep", "600"])
            managers.append((host, mgr))
            mgr.get_child(timeout=30)
            return mgr

        def holders() -> list[str]:
            rows = []
            for host, h in hosts.items():
                for row in status.leases(h.run_dir):
                    if row["type"] != "disk":
                        continue  # the guest's own lease on its uuid: a new one each recording
                    rows.append(f"{os.path.basename(row['resource'])}: {row['held']} on {host}")
            return sorted(rows)

        def snapshot(note: str) -> None:
            moves = sorted(
                (
                    # ordered by when each call began: two daemons' concurrent calls (the
                    # target's waits for the source's) end in either order, they begin in one
                    (h.at - h.seconds, host, h)
                    for host, m in managers
                    for h in m.history
                    if h.event not in NOISE and id(h) not in seen
                ),
                key=lambda x: x[0],
            )
            for _, host, h in moves:
                seen.add(id(h))
                steps.append({"host": host, "event": h.event, "from": h.source, "to": h.dest})
            steps.append({"note": note, "leases": holders()})

        seen: set[int] = set()
        src = manager("host-a")
        snapshot("vm starts on host-a")
        tgt = manager("host-b", NewFlags.MIGRATE, src.prepare_migrate("qemu+tcp://host-b/system"))
        snapshot("host-b's incoming guest exists; it reserves, host-a holds")
        tgt.complete_migrate_in(cancel=True)
        src.complete_migrate_in(cancel=True)
        tgt.shutdown()
        snapshot("the migration is called off: host-a holds everything")
        tgt = manager("host-b", NewFlags.MIGRATE, src.prepare_migrate("qemu+tcp://host-b/system"))
        snapshot("migrating again")
        waiter = threading.Thread(target=tgt.complete_migrate_in)
        waiter.start()
        time.sleep(0.2)  # host-b's completion waits for host-a's
        src.complete_migrate_in()
        waiter.join(60)
        snapshot("handed over: host-b holds everything")
        src.shutdown()
        tgt.shutdown()
        snapshot("vm stopped")
    finally:
        for h in hosts.values():
            h.cleanup()
        shutil.rmtree(top, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RECORDING
    path.write_text(json.dumps({"steps": steps}, indent=1) + "\n")
    return path


def sequence_graph(recording: dict[str, Any]) -> Any:
    """A sequence diagram of a recorded run: one lifeline per host's manager, one row per move,
    and the lease holders after each step of the run."""
    g = _graphviz().Digraph(
        "migration",
        graph_attr={
            "rankdir": "TB",
            "nodesep": "0.6",
            "ranksep": "0.25",
            "fontsize": "16",
            "label": "a two-host migration, cancelled then completed (recorded run)",
            "labelloc": "t",
            "fontname": "Helvetica",
        },
    )
    g.attr("node", fontname="Helvetica", fontsize="10")
    g.attr("edge", fontname="Helvetica", fontsize="9")
    columns = ["host-a", "host-b", "leases"]
    for c in columns:
        g.node(
            f"{c}_0",
            label=c if c != "leases" else "leases after the step",
            shape="box",
            style="filled",
            fillcolor="#e8e8e8",
        )
    last = {c: f"{c}_0" for c in columns}
    for row, step in enumerate(recording["steps"], start=1):
        names = {c: f"{c}_{row}" for c in columns}
        with g.subgraph() as same:
            same.attr(rank="same")
            for c in columns:
                if "host" in step and c == step["host"]:
                    colour = "#2a8a3a" if step["to"] == "started" else "#1f5fbf"
                    same.node(
                        names[c],
                        label=f"{step['event']}\n{step['from']} → {step['to']}",
                        shape="box",
                        style="rounded",
                        color=colour,
                    )
                elif "note" in step and c == "leases":
                    text = "\n".join(step["leases"]) or "none held"
                    same.node(names[c], label=f"{step['note']}\n{text}", shape="note", fontsize="9")
                else:
                    style = "invis" if c == "leases" else "solid"
                    same.node(names[c], label="", shape="point", width="0.02", style=style)
        for c in columns:
            g.edge(
                last[c], names[c], arrowhead="none", style="dashed" if c != "leases" else "invis"
            )
            last[c] = names[c]
    return g


def render(out: Path | None = None) -> list[Path]:
    """Write every table's diagram and the sequence diagram (SVG and PNG) into ``out``."""
    out = out or default_dir()
    out.mkdir(parents=True, exist_ok=True)
    specs = load_all()
    graphs = [(name, machine_graph(specs[name])) for name in TABLE_NAMES]
    recording = out / RECORDING
    if not recording.exists():  # the recorded run the package carries
        shutil.copyfile(packaged(RECORDING), recording)
    graphs.append(("migration-sequence", sequence_graph(json.loads(recording.read_text()))))
    written = []
    for name, graph in graphs:
        (out / f"{name}.dot").write_text(graph.source)
        written.append(out / f"{name}.dot")
        for fmt in ("svg", "png"):
            path = out / f"{name}.{fmt}"
            path.write_bytes(graph.pipe(format=fmt))
            written.append(path)
    return written


def main(out: str | None = None, rerecord: bool = False) -> int:
    target = Path(out) if out else default_dir()
    if rerecord:
        print(f"recorded {record(target)}")
    for path in render(target):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
