"""Rows of figures, the table printed at the end of a run, and the JSON written beside it.

A row is one figure: its value, the baseline measured in the same run (and what that baseline
is), the ratio of the two, the target the issue sets and whether it is met.  A row whose
component is missing carries the reason instead of a value.  Benchmarks report; nothing here
fails a run because a target is missed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Target:
    """What the issue asks of a figure: its ratio to the baseline (``ratio``), or the value
    itself (``value``, in the row's unit), at most ``limit``."""

    kind: Literal["ratio", "value"]
    limit: float

    def text(self, unit: str) -> str:
        if self.kind == "ratio":
            return f"<= {self.limit:g}x"
        return f"= {self.limit:g}" if self.limit == 0 else f"<= {self.limit:g} {unit}"


@dataclass
class Row:
    """One figure of the table."""

    key: str  # stable id, "<item>.<name>", e.g. "3.start"
    figure: str  # what is measured, in a few words
    value: float | None = None
    unit: str = ""
    baseline: float | None = None
    baseline_of: str = ""  # what the baseline is
    target: Target | None = None
    note: str = ""  # how it was measured (repetitions, spread)
    unavailable: str | None = None  # why there is no value
    higher_is_better: bool = False  # throughputs: the ratio is baseline / value
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """value / baseline (baseline / value for throughputs, so that > 1 is always worse)."""
        if self.value is None or not self.baseline:
            return None
        if self.higher_is_better:
            return self.baseline / self.value if self.value else None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        measured = self.ratio if self.target.kind == "ratio" else self.value
        return None if measured is None else measured <= self.target.limit

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = None if self.target is None else asdict(self.target)
        data["target_text"] = None if self.target is None else self.target.text(self.unit)
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


def unavailable(key: str, figure: str, why: str, target: Target | None = None) -> Row:
    """A row for a figure that cannot be measured here: ``why`` says what is missing."""
    return Row(key, figure, target=target, unavailable=why)


def number(value: float | None, unit: str = "") -> str:
    """A value with three significant digits (more for large ones) and its unit."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _cells(row: Row) -> list[str]:
    target = row.target.text(row.unit) if row.target else "-"
    if row.unavailable:
        return [row.key, row.figure, f"not available: {row.unavailable}", "", "", target, ""]
    ratio = row.ratio
    met = {True: "yes", False: "NO", None: "-"}[row.met]
    return [
        row.key,
        row.figure,
        number(row.value, row.unit),
        number(row.baseline, row.unit),
        "-" if ratio is None else f"{ratio:.2f}x",
        target,
        met,
    ]


HEADER = ["#", "figure", "value", "baseline", "ratio", "target", "met?"]


def table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table, then one line per row saying what its baseline is."""
    cells = [HEADER, *(_cells(r) for r in rows)]
    spans = [r.unavailable is not None for r in rows]  # the reason spans the value columns
    widths = [
        max(len(c[i]) for c, span in zip(cells, [False, *spans], strict=True) if i < 2 or not span)
        for i in range(len(HEADER))
    ]
    lines = []
    for c, span in zip(cells, [False, *spans], strict=True):
        if span:
            lines.append(f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]}")
            continue
        lines.append(
            "  ".join(
                f"{v:<{w}}" if i < 2 else f"{v:>{w}}"
                for i, (v, w) in enumerate(zip(c, widths, strict=True))
            ).rstrip()
        )
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    for r in rows:
        if r.unavailable:
            continue
        said = f"baseline: {r.baseline_of}" if r.baseline_of else "no baseline"
        lines.append(f"{r.key}: {said}" + (f"; {r.note}" if r.note else ""))
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where the figures come from."""
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def revision(repo: str) -> str:
    """The source tree's commit, with "-dirty" if it has uncommitted changes."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json(path: str, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    """Write the rows and the run's metadata to ``path`` (atomically)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {**meta, "environment": environment(), "rows": [r.to_json() for r in rows]}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def collect(ctx: Any, figures: Sequence[Any]) -> list[Row]:
    """Call each of ``figures`` (a function of the context returning a Row or a list of rows)
    in turn; one that raises leaves a row saying so, and the next still runs."""
    import traceback

    rows: list[Row] = []
    for figure in figures:
        try:
            got = figure(ctx)
        except Exception as e:  # report it and go on
            traceback.print_exc()
            doc = (figure.__doc__ or figure.__name__).strip().split("\n")[0]
            got = Row(figure.__name__, doc, unavailable=f"failed: {type(e).__name__}: {e}")
        rows += got if isinstance(got, list) else [got]
    return rows
