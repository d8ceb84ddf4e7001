"""The protocol tables in ``specs/``: load, check, and generate ``lockfsm/protocol/`` from them.

``specs/*.toml`` is the single source of the protocol.  The runtime reads only the generated
module (so the supervisor needs no TOML parser and an installed package no ``specs/`` folder);
a test fails when the generated module is stale.  Rebuild it with ``lockfsm spec gen``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockfsm.errors import BY_NAME, InvalidArgument

#: The machines, in the order they are generated and drawn.
TABLE_NAMES = ("domain", "supervisor", "lease")

#: Tables that add the rows of one concern (a migration role) to several machines: their states,
#: events, guards, actions and moves are joined into the machines they name.
JOIN_NAMES = ("migration_source", "migration_target", "lock_failure")

#: Capabilities an event may require (see lockfsm.backends.Capabilities).
CAPABILITIES = ("hotplug", "migration")

_PROTOCOL = Path(__file__).resolve().parent.parent / "protocol"
GENERATED = _PROTOCOL / "states.py"
#: The tables alone, without the state enums: what the supervisor imports (it runs once per guest,
#: and the enum classes cost it half a megabyte).
GENERATED_MACHINES = _PROTOCOL / "tables.py"


def source_tree() -> Path | None:
    """The source checkout this package was imported from, or None for an installed package."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "specs").is_dir():
        return root
    return None


def packaged(*parts: str) -> Path:
    """A file of the package's copy of the tables and recordings (lockfsm/tools/data), read
    through importlib.resources: what ``spec check`` and ``diagrams`` use outside a source
    checkout.  ``lockfsm spec gen`` writes that copy from the source tree."""
    from importlib import resources

    found = resources.files("lockfsm.tools").joinpath("data", *parts)
    if isinstance(found, Path):
        return found
    return Path(str(found))  # pragma: no cover - a zipped package: not how lockfsm installs


def default_specs_dir() -> Path:
    """``specs/`` of the source tree this package was imported from, else the package's copy."""
    tree = source_tree()
    return tree / "specs" if tree else packaged("specs")


@dataclass(frozen=True)
class Item:
    """A state, event, guard or action of a table, with its documentation."""

    name: str
    doc: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecMove:
    sources: tuple[str, ...]
    event: str
    guards: tuple[str, ...]
    actions: tuple[str, ...]
    dest: str  # "=" means: the source state
    origin: str  # the table file the row is written in


@dataclass(frozen=True)
class Spec:
    """One table as written in ``specs/``, documentation included."""

    name: str
    title: str
    initial: str
    states: dict[str, Item]
    events: dict[str, Item]
    guards: dict[str, Item]
    actions: dict[str, Item]
    moves: tuple[SpecMove, ...]
    path: Path
    reads: dict[str, Item] = field(default_factory=dict)

    @property
    def terminal(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.states.items() if s.attrs.get("terminal"))

    def guards_of(self, move: SpecMove) -> tuple[str, ...]:
        """A move's guards: its event's own first (events.<name>.guards), then its own."""
        first = self.events[move.event].attrs.get("guards", ()) if move.event in self.events else ()
        return tuple(dict.fromkeys((*first, *move.guards)))

    def expanded(self) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...], str]]:
        """One (source, event, guards, actions, dest) row per source state, in table order."""
        rows = []
        for m in self.moves:
            guards = self.guards_of(m)
            for src in m.sources:
                rows.append((src, m.event, guards, m.actions, src if m.dest == "=" else m.dest))
        return rows


def _items(raw: dict[str, Any], section: str, path: Path) -> dict[str, Item]:
    items = {}
    for name, body in raw.get(section, {}).items():
        if not isinstance(body, dict) or not isinstance(body.get("doc"), str):
            raise InvalidArgument(f"{path}: [{section}.{name}] needs a doc string")
        items[name] = Item(name, body["doc"], {k: v for k, v in body.items() if k != "doc"})
    return items


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"{path}: {e}") from None


def _merge(base: dict[str, Any], part: dict[str, Any], origin: str, path: Path) -> None:
    """Join ``part`` (a join file's rows for one machine) into ``base``, refusing a name that
    both declare differently."""
    for section in ("states", "events", "guards", "reads", "actions"):
        into = base.setdefault(section, {})
        for name, body in part.get(section, {}).items():
            if name in into and into[name] != body:
                raise InvalidArgument(
                    f"{path}: [{section}.{name}] differs from its first declaration"
                )
            into[name] = body
    base.setdefault("moves", []).extend({**m, "origin": origin} for m in part.get("moves", []))


def _parse(raw: dict[str, Any], path: Path) -> Spec:
    moves = []
    for i, m in enumerate(raw.get("moves", [])):
        try:
            src = m["from"]
            moves.append(
                SpecMove(
                    sources=tuple(src if isinstance(src, list) else [src]),
                    event=m["event"],
                    guards=tuple(m.get("guards", ())),
                    actions=tuple(m.get("actions", ())),
                    dest=m["to"],
                    origin=m.get("origin", raw.get("name", "")),
                )
            )
        except (KeyError, TypeError) as e:
            raise InvalidArgument(f"{path}: move #{i + 1} is malformed ({e})") from None
    return Spec(
        name=raw.get("name", ""),
        title=raw.get("title", raw.get("name", "")),
        initial=raw.get("initial", ""),
        states=_items(raw, "states", path),
        events=_items(raw, "events", path),
        guards=_items(raw, "guards", path),
        actions=_items(raw, "actions", path),
        moves=tuple(moves),
        path=path,
        reads=_items(raw, "reads", path),
    )


def load(path: Path) -> Spec:
    """Read one machine's own table (without its joins) and check it is whole."""
    spec = _parse(_read(path), path)
    check(spec)
    return spec


def check(spec: Spec) -> None:
    """Refuse a table with an unknown name in it, an unreachable state, a terminal state with a
    move out, a non-terminal state with none, or an unknown error or capability."""
    where = str(spec.path)
    problems = []
    if spec.initial not in spec.states:
        problems.append(f"initial state {spec.initial!r} is not a state")
    for m in spec.moves:
        for src in m.sources:
            if src not in spec.states:
                problems.append(f"move {m.event}: unknown source state {src!r}")
        if m.dest != "=" and m.dest not in spec.states:
            problems.append(f"move {m.event}: unknown target state {m.dest!r}")
        if m.event not in spec.events:
            problems.append(f"move {m.event}: the event is not declared")
        problems += [
            f"move {m.event}: unknown guard {g!r}" for g in m.guards if g not in spec.guards
        ]
        problems += [
            f"move {m.event}: unknown action {a!r}" for a in m.actions if a not in spec.actions
        ]
    rows = spec.expanded()
    for name in spec.states:
        outgoing = [r for r in rows if r[0] == name]
        if name in spec.terminal and outgoing:
            problems.append(f"terminal state {name!r} has moves out")
        if name not in spec.terminal and not outgoing:
            problems.append(f"state {name!r} has no move out and is not marked terminal")
    reached = {spec.initial}
    while True:
        more = {r[4] for r in rows if r[0] in reached} - reached
        if not more:
            break
        reached |= more
    problems += [f"state {s!r} cannot be reached" for s in spec.states if s not in reached]
    for g in spec.guards.values():
        if g.attrs.get("refuse", "IllegalTransition") not in BY_NAME:
            problems.append(f"guard {g.name}: unknown error {g.attrs['refuse']!r}")
        problems += [
            f"guard {g.name}: unknown read {r!r}"
            for r in g.attrs.get("reads", ())
            if r not in spec.reads
        ]
    problems += _check_state_attrs(spec)
    for e in spec.events.values():
        problems += [
            f"event {e.name}: unknown guard {g!r}"
            for g in e.attrs.get("guards", ())
            if g not in spec.guards
        ]
        if "raised_by" in e.attrs and e.attrs["raised_by"] not in BY_NAME:
            problems.append(f"event {e.name}: raised_by unknown error {e.attrs['raised_by']!r}")
    for e in spec.events.values():
        if "requires" in e.attrs and e.attrs["requires"] not in CAPABILITIES:
            problems.append(f"event {e.name}: unknown capability {e.attrs['requires']!r}")
    if problems:
        raise InvalidArgument(f"{where}: " + "; ".join(problems))


#: State attributes a table may set: the flags, and ``exit`` and ``refuse``.
STATE_FLAGS = ("terminal", "holds", "reserves", "guest", "executes", "unprotected")


def _check_state_attrs(spec: Spec) -> list[str]:
    problems = []
    exits = any("exit" in s.attrs for s in spec.states.values())
    for s in spec.states.values():
        for key, value in s.attrs.items():
            if key in STATE_FLAGS and not isinstance(value, bool):
                problems.append(f"state {s.name}: {key} must be true or false")
            elif key not in (*STATE_FLAGS, "exit", "refuse"):
                problems.append(f"state {s.name}: unknown attribute {key!r}")
        if "executes" in s.attrs and not s.attrs.get("guest"):
            problems.append(f"state {s.name}: executes without guest")
        if "refuse" in s.attrs and s.attrs["refuse"] not in BY_NAME:
            problems.append(f"state {s.name}: refuse unknown error {s.attrs['refuse']!r}")
        if "exit" in s.attrs:
            code = s.attrs["exit"]
            if not s.attrs.get("terminal"):
                problems.append(f"state {s.name}: exit on a state that is not terminal")
            if code != "guest" and (isinstance(code, bool) or not isinstance(code, int)):
                problems.append(f"state {s.name}: exit {code!r} is not a status or 'guest'")
        elif exits and s.attrs.get("terminal"):
            problems.append(f"terminal state {s.name} has no exit status")
    return problems


def load_joins(specs_dir: Path | None = None) -> dict[str, dict[str, Spec]]:
    """Each join table (:data:`JOIN_NAMES`) as the partial tables it adds to each machine."""
    d = specs_dir or default_specs_dir()
    joins: dict[str, dict[str, Spec]] = {}
    for name in JOIN_NAMES:
        path = d / f"{name}.toml"
        raw = _read(path)
        if raw.get("name") != name:
            raise InvalidArgument(f"{path}: name = {raw.get('name')!r}, expected {name!r}")
        unknown = set(raw.get("joins", {})) - set(TABLE_NAMES)
        if unknown:
            raise InvalidArgument(f"{path}: joins unknown machine(s) {sorted(unknown)}")
        joins[name] = {
            machine: _parse({**part, "name": machine, "title": raw.get("title", name)}, path)
            for machine, part in raw.get("joins", {}).items()
        }
    return joins


def load_all(specs_dir: Path | None = None) -> dict[str, Spec]:
    """Every machine of :data:`TABLE_NAMES` from ``specs_dir`` (default: the source tree's),
    with the rows of the join tables (:data:`JOIN_NAMES`) joined in, each checked whole."""
    d = specs_dir or default_specs_dir()
    raws = {n: _read(d / f"{n}.toml") for n in TABLE_NAMES}
    for name in JOIN_NAMES:
        path = d / f"{name}.toml"
        for machine, part in _read(path).get("joins", {}).items():
            if machine not in raws:
                raise InvalidArgument(f"{path}: joins unknown machine {machine!r}")
            _merge(raws[machine], part, name, path)
    specs = {}
    for name, raw in raws.items():
        spec = _parse(raw, d / f"{name}.toml")
        if spec.name != name:
            raise InvalidArgument(f"{spec.path}: name = {spec.name!r}, expected {name!r}")
        check(spec)
        specs[name] = spec
    return specs


def _enum_name(table: str) -> str:
    return table.capitalize() + "State"


_HEADER = [
    '"""GENERATED from specs/*.toml by `lockfsm spec gen`: do not edit by hand."""',
    "",
    "# ruff: noqa",
    "from __future__ import annotations",
    "",
]


def generate(specs: dict[str, Spec]) -> str:
    """The text of ``lockfsm/protocol/states.py`` for these tables (byte-stable): the state
    enums, and the tables of ``lockfsm/protocol/tables.py`` re-exported."""
    out = [
        *_HEADER,
        "import enum",
        "",
        "from lockfsm.protocol.tables import TABLES as TABLES",
        *(f"from lockfsm.protocol.tables import {n.upper()} as {n.upper()}" for n in specs),
        "",
    ]
    for name, spec in specs.items():
        out += [
            "",
            f"class {_enum_name(name)}(enum.Enum):",
            f'    """States of the {name} table."""',
            "",
        ]
        out += [f"    {s.upper()} = {s!r}" for s in spec.states]
        out.append("")
    return "\n".join(out)


#: State sets generated for each table from the states' attributes: constant suffix -> (what it
#: is, the test on a state's attributes).  No set of states is written by hand anywhere else.
STATE_SETS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "HOLDS": ("the leases are held", lambda a: bool(a.get("holds"))),
    "RESERVES": (
        "the leases are reserved for an incoming migration",
        lambda a: bool(a.get("reserves")),
    ),
    "GUEST": ("the guest process exists", lambda a: bool(a.get("guest"))),
    "EXECUTES": (
        "the guest may execute",
        lambda a: bool(a.get("guest")) and a.get("executes", True) is not False,
    ),
    "UNPROTECTED": (
        "the guest runs without its leases, by the operator's choice",
        lambda a: bool(a.get("unprotected")),
    ),
}


def state_sets(spec: Spec) -> dict[str, tuple[str, frozenset[str]]]:
    """The generated state sets of ``spec`` that are not empty: suffix -> (doc, states)."""
    sets = {}
    for suffix, (doc, test) in STATE_SETS.items():
        states = frozenset(n for n, s in spec.states.items() if test(s.attrs))
        if states:
            sets[suffix] = (doc, states)
    return sets


def _table_text(name: str, spec: Spec) -> list[str]:
    requires = {e.name: e.attrs["requires"] for e in spec.events.values() if "requires" in e.attrs}
    refuse = {g.name: g.attrs.get("refuse", "IllegalTransition") for g in spec.guards.values()}
    attrs = {
        n: {k: v for k, v in s.attrs.items() if k not in ("terminal", "refuse")}
        for n, s in spec.states.items()
    }
    reads = {g.name: tuple(g.attrs["reads"]) for g in spec.guards.values() if g.attrs.get("reads")}
    raised = {e.attrs["raised_by"]: e.name for e in spec.events.values() if "raised_by" in e.attrs}
    state_refuse = {n: s.attrs["refuse"] for n, s in spec.states.items() if "refuse" in s.attrs}
    batch = sorted(a.name for a in spec.actions.values() if a.attrs.get("batch"))
    unrecorded = sorted(e.name for e in spec.events.values() if e.attrs.get("history") is False)
    event_guards = {
        e.name: tuple(e.attrs["guards"]) for e in spec.events.values() if e.attrs.get("guards")
    }
    out = [
        "",
        f"{name.upper()} = Table(",
        f"    name={name!r},",
        f"    initial={spec.initial!r},",
        f"    states={tuple(spec.states)!r},",
        f"    terminal=frozenset({sorted(spec.terminal)!r}),",
        f"    requires={requires!r},",
        f"    refuse={refuse!r},",
        "    moves=(",
        *(f"        Move{row!r}," for row in spec.expanded()),
        "    ),",
        f"    attrs={ {k: v for k, v in attrs.items() if v}!r},",
        f"    reads={reads!r},",
        f"    raised_by={raised!r},",
        f"    state_refuse={state_refuse!r},",
        f"    batch=frozenset({batch!r}),",
        f"    event_guards={event_guards!r},",
        f"    unrecorded=frozenset({unrecorded!r}),",
        ")",
    ]
    for suffix, (doc, states) in state_sets(spec).items():
        out += [
            "",
            f"#: {name} states in which {doc}",
            f"{name.upper()}_{suffix} = frozenset({sorted(states)!r})",
        ]
    exits = {n: s.attrs["exit"] for n, s in spec.states.items() if "exit" in s.attrs}
    if exits:
        out += [
            "",
            f"#: {name} terminal state -> the process's exit status ('guest': the guest's own)",
            f"{name.upper()}_EXIT: dict[str, int | str] = {exits!r}",
        ]
    return out


def generate_machines(specs: dict[str, Spec]) -> str:
    """The text of ``lockfsm/protocol/tables.py`` for these tables (byte-stable): the tables and
    the state sets their attributes define."""
    out = [*_HEADER, "from lockfsm.protocol.engine import Move, Table", ""]
    for name, spec in specs.items():
        out += _table_text(name, spec)
    out += ["", f"TABLES = {{{', '.join(f'{n!r}: {n.upper()}' for n in specs)}}}", ""]
    return "\n".join(out)
