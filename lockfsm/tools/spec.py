"""The protocol tables in ``specs/``: load, check, and generate ``lockfsm/_tables.py`` from them.

``specs/*.toml`` is the single source of the protocol.  The runtime reads only the generated
module (so the supervisor needs no TOML parser and an installed package no ``specs/`` folder);
a test fails when the generated module is stale.  Rebuild it with ``lockfsm spec gen``.
"""

from __future__ import annotations

import tomllib
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


def default_specs_dir() -> Path:
    """``specs/`` of the source tree this package was imported from."""
    return Path(__file__).resolve().parent.parent.parent / "specs"


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

    @property
    def terminal(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.states.items() if s.attrs.get("terminal"))

    def expanded(self) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...], str]]:
        """One (source, event, guards, actions, dest) row per source state, in table order."""
        rows = []
        for m in self.moves:
            for src in m.sources:
                rows.append((src, m.event, m.guards, m.actions, src if m.dest == "=" else m.dest))
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
    for section in ("states", "events", "guards", "actions"):
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
    for e in spec.events.values():
        if "requires" in e.attrs and e.attrs["requires"] not in CAPABILITIES:
            problems.append(f"event {e.name}: unknown capability {e.attrs['requires']!r}")
    if problems:
        raise InvalidArgument(f"{where}: " + "; ".join(problems))


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
    """The text of ``lockfsm/_tables.py`` for these tables (byte-stable): the state enums, and the
    tables of ``lockfsm/_machines.py`` re-exported."""
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


def generate_machines(specs: dict[str, Spec]) -> str:
    """The text of ``lockfsm/_machines.py`` for these tables (byte-stable)."""
    out = [
        *_HEADER,
        "from lockfsm.protocol.engine import Move, Table",
        "",
    ]
    for name, spec in specs.items():
        requires = {
            e.name: e.attrs["requires"] for e in spec.events.values() if "requires" in e.attrs
        }
        refuse = {g.name: g.attrs.get("refuse", "IllegalTransition") for g in spec.guards.values()}
        out += [
            "",
            f"{name.upper()} = Table(",
            f"    name={name!r},",
            f"    initial={spec.initial!r},",
            f"    states={tuple(spec.states)!r},",
            f"    terminal=frozenset({sorted(spec.terminal)!r}),",
            f"    requires={requires!r},",
            f"    refuse={refuse!r},",
            "    moves=(",
        ]
        out += [f"        Move{row!r}," for row in spec.expanded()]
        out += ["    ),", ")"]
    out += ["", f"TABLES = {{{', '.join(f'{n!r}: {n.upper()}' for n in specs)}}}", ""]
    return "\n".join(out)


def write_generated(specs_dir: Path | None = None) -> list[Path]:
    """Regenerate ``lockfsm/_tables.py`` and the formal models in ``specs/``; return the paths."""
    from lockfsm.tools import model, modelcheck

    d = specs_dir or default_specs_dir()
    specs = load_all(d)
    GENERATED.write_text(generate(specs))
    GENERATED_MACHINES.write_text(generate_machines(specs))
    written = [GENERATED, GENERATED_MACHINES]
    for hosts in modelcheck.HOSTS:
        path = modelcheck.model_path(d, hosts)
        path.write_text(model.generate(specs, hosts))
        written.append(path)
    return written
