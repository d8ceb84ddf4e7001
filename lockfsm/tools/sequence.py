"""Message sequence charts of a recorded run (:mod:`lockfsm.tools.recording`), drawn as SVG.

Lanes, left to right: daemon A, supervisor A, the lock service, supervisor B, daemon B.  A seed
call comes in from the chart's edge (the daemon's own code calls its lock manager) and its reply
goes back out; the migration cookie is drawn travelling from one daemon to the other, as the
daemons carry it.  Control-socket requests go from a daemon to its supervisor and back; each
operation on the lock service goes from a supervisor to the service lane, labelled with what it
sends (its backend's TRACE) and how it ended.  States are notes on the lanes: the domain's on
the daemon's lane, the supervisor's on the supervisor's.

Drawn with fixed coordinates, integers only, no timestamps: the same recording gives the same
bytes.  The PNG is converted from the SVG by ``rsvg-convert`` (Debian: librsvg2-bin).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from lockfsm.errors import BackendError

LANES = ("daemon A", "supervisor A", "lock service", "supervisor B", "daemon B")
X = {"dA": 270, "sA": 510, "svc": 810, "sB": 1110, "dB": 1350, "eA": 12, "eB": 1608}
WIDTH = 1620
ROW = 22
SCENE_ROW = 34
TOP = 70
COLOUR = {"A": "#1f5fbf", "B": "#2a8a3a", "svc": "#555555", "bad": "#b22222"}
FONT = "DejaVu Sans, Helvetica, sans-serif"


def _lane(host: str, what: str) -> int:
    return X[("d" if what == "daemon" else "s") + host]


def _text(x: int, y: int, text: str, anchor: str = "middle", cls: str = "lbl") -> str:
    return f'<text x="{x}" y="{y}" text-anchor="{anchor}" class="{cls}">{escape(text)}</text>'


def _arrow(x1: int, x2: int, y: int, label: str, colour: str, style: str = "") -> str:
    dash = {"reply": ' stroke-dasharray="5,3"', "spawn": ' stroke-dasharray="2,2"'}.get(style, "")
    at, anchor = (x1 + x2) // 2, "middle"
    if min(x1, x2) < X["dA"]:  # from or to the left edge: the label hugs daemon A's lane
        at, anchor = X["dA"] - 6, "end"
    elif max(x1, x2) > X["dB"]:
        at, anchor = X["dB"] + 6, "start"
    return (
        f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}"{dash} '
        f'marker-end="url(#head)"/>' + _text(at, y - 4, label, anchor)
    )


def _note(x: int, y: int, text: str, colour: str) -> str:
    w = 12 + 6 * len(text)
    return (
        f'<rect x="{x - w // 2}" y="{y - 14}" width="{w}" height="17" rx="5" fill="#ffffff" '
        f'stroke="{colour}"/>' + _text(x, y - 1, text, cls="note")
    )


def _cookie_from(ev: Mapping[str, Any]) -> str | None:
    """The other daemon, for the seed call that gives a target its cookie."""
    if ev["kind"] == "seed" and str(ev.get("carries", "")).startswith("migration_cookie"):
        return "B" if ev["host"] == "A" else "A"
    return None


def row_height(ev: Mapping[str, Any]) -> int:
    """The height of an event's row.  Raises KeyError for an event without a kind."""
    return SCENE_ROW if ev["kind"] == "scene" else ROW


def draw_event(ev: Mapping[str, Any], y: int) -> str:
    """The SVG of one event whose row ends at ``y`` (its baseline).  Raises KeyError for an
    event that lacks a field of its kind (recording.check found it sound: it does not)."""
    kind = ev["kind"]
    host = ev.get("host", "")
    colour = COLOUR.get(host, COLOUR["svc"])
    if kind == "scene":
        return f'<rect x="0" y="{y - 22}" width="{WIDTH}" height="26" fill="#eeeeee"/>' + _text(
            WIDTH // 2, y - 4, str(ev["title"]), cls="scene"
        )
    edge = X["e" + host] if host else 0
    if kind == "seed":
        label = f"{ev['call']}({ev['carries']})"
        other = _cookie_from(ev)
        start = _lane(other, "daemon") if other else edge
        return _arrow(start, _lane(host, "daemon"), y, label, colour)
    if kind == "seed_reply":
        label = f"{ev['call']} → {ev['outcome']}"
        bad = ev["outcome"] not in ("ok", "pid") and not str(ev["outcome"]).startswith("cookie")
        return _arrow(
            _lane(host, "daemon"), edge, y, label, COLOUR["bad"] if bad else colour, "reply"
        )
    if kind == "spawn":
        label = f"runs lockfsm-supervisor … -- {ev['guest']}"
        return _arrow(_lane(host, "daemon"), _lane(host, "supervisor"), y, label, colour, "spawn")
    if kind == "control":
        label = f"{ev['op']} {ev['carries']}".strip()
        return _arrow(_lane(host, "daemon"), _lane(host, "supervisor"), y, label, colour)
    if kind == "control_reply":
        label = f"{ev['op']}: {ev['outcome']}"
        bad = not str(ev["outcome"]).startswith("ok")
        return _arrow(
            _lane(host, "supervisor"),
            _lane(host, "daemon"),
            y,
            label,
            COLOUR["bad"] if bad else colour,
            "reply",
        )
    if kind == "state":
        what = "daemon" if ev["machine"] == "domain" else "supervisor"
        return _note(_lane(host, what), y, str(ev["dest"]), colour)
    if kind == "service":
        label = f"{ev['op']} {', '.join(ev['leases'])}: {ev['does']}"
        if ev["outcome"] != "ok":
            label += f" ✗ {ev['outcome']}"
        if ev.get("repeated"):
            label += " (tried again until it passed)" if ev["outcome"] == "ok" else " (again)"
        bad = ev["outcome"] != "ok"
        return _arrow(
            _lane(host, "supervisor"), X["svc"], y, label, COLOUR["bad"] if bad else colour
        )
    if kind == "service_note":
        return _note(X["svc"], y, f"{ev['lease']}: {ev['note']}", COLOUR["svc"])
    if kind == "lost_report":
        label = f"--lease-lost: {ev['reason']}"
        return _arrow(X["svc"], _lane(host, "supervisor"), y, label, COLOUR["bad"])
    raise AssertionError(kind)  # pragma: no cover - recording.check refuses other kinds


def chart(
    events: Sequence[Mapping[str, Any]],
    title: str,
    backend: str,
    first: int = 0,
) -> str:
    """The SVG text of a chart of ``events``; each event is a group ``ev-<n>`` (``n`` counted
    from ``first``) of class ``ev``, for a page to highlight.  Raises KeyError for an event
    that is not sound (check it with recording.check first)."""
    height = TOP + sum(row_height(e) for e in events) + 20
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" class="msc">',
        "<style>"
        f"text{{font-family:{FONT};}}"
        ".lbl{font-size:10px;paint-order:stroke;stroke:#ffffff;stroke-width:3px;}"
        ".note{font-size:10px;}"
        ".scene{font-size:12px;font-weight:bold;}"
        ".lane{font-size:12px;font-weight:bold;}"
        ".title{font-size:15px;font-weight:bold;}"
        "</style>",
        '<defs><marker id="head" markerWidth="8" markerHeight="8" refX="7" refY="3" '
        'orient="auto" markerUnits="userSpaceOnUse">'
        '<path d="M0,0 L7,3 L0,6 z" fill="context-stroke"/></marker></defs>',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        _text(WIDTH // 2, 20, f"{title} ({backend}, a recorded run)", cls="title"),
    ]
    for name, key in zip(LANES, ("dA", "sA", "svc", "sB", "dB"), strict=True):
        out.append(
            f'<line x1="{X[key]}" y1="{TOP - 18}" x2="{X[key]}" y2="{height - 10}" '
            'stroke="#999999" stroke-dasharray="3,3"/>'
        )
        label = f"{name} ({backend})" if key == "svc" else name
        out.append(_text(X[key], TOP - 24, label, cls="lane"))
    y = TOP
    for n, ev in enumerate(events, start=first):
        y += row_height(ev)
        out.append(f'<g class="ev" id="ev-{n}">{draw_event(ev, y)}</g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def png(svg: str) -> bytes:
    """The PNG of ``svg``, by rsvg-convert.  Raises BackendError without it, or when it fails."""
    tool = shutil.which("rsvg-convert")
    if tool is None:
        raise BackendError("the sequence charts' PNGs need rsvg-convert (Debian: librsvg2-bin)")
    done = subprocess.run(
        [tool, "--format=png"], input=svg.encode(), capture_output=True, timeout=120
    )
    if done.returncode != 0:
        raise BackendError(f"rsvg-convert failed: {done.stderr.decode(errors='replace')[:200]}")
    return done.stdout
