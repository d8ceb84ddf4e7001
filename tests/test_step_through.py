"""The step-through page in a real headless browser (Debian's Chromium through chromedriver):
every event of every recorded run stepped through with real clicks, the state diagrams' marks
and the lease table checked against the recording at each step.  A screenshot is kept in
``test-artefacts/`` (or ``$LOCKFSM_ARTEFACTS``).  Without a browser the test skips, saying
why; in CI (CI=true) it fails."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lockfsm.tools import diagrams, recording, stepper
from tests.support import browser, needs

ROOT = Path(__file__).resolve().parent.parent
REAL_CLICKS = 10  # steps of each run taken with WebDriver's own clicks; the rest click in the page

STATE = """
const out = {step: document.body.dataset.step, run: document.body.dataset.run, marks: {}};
for (const d of ['domain', 'supervisor']) {
  for (const h of ['A', 'B']) {
    out.marks[d + h] = Array.from(
      document.querySelectorAll('#' + d + ' g.node.at-' + h + ' title'), t => t.textContent);
  }
}
out.leases = Array.from(document.querySelectorAll('#leases tr'), tr =>
  Array.from(tr.children, c => c.textContent));
out.current = Array.from(document.querySelectorAll('.run.shown g.ev.current'), g => g.id);
out.done = document.querySelectorAll('.run.shown g.ev.done').length;
return out;
"""


def expected_states(events: list[dict[str, Any]]) -> list[dict[str, list[str]]]:
    """After each event: the state each diagram must mark for each host, from the recording's
    own state moves."""
    now: dict[str, list[str]] = {f"{m}{h}": [] for m in ("domain", "supervisor") for h in "AB"}
    out = []
    for ev in events:
        if ev["kind"] == "state":
            now[ev["machine"] + ev["host"]] = [ev["dest"]]
        out.append(dict(now))
    return out


def artefacts() -> Path:
    where = Path(os.environ.get("LOCKFSM_ARTEFACTS") or ROOT / "test-artefacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_the_step_through_page_follows_each_recorded_run_step_by_step() -> None:
    why = browser.missing()
    if why:
        needs.missing(why)
    page = diagrams.default_dir() / stepper.PAGE
    runs = {
        b: diagrams.load_recording(diagrams.recording_path(diagrams.default_dir(), b))
        for b in diagrams.BACKENDS
    }
    b = browser.Browser()
    try:
        b.open(page.as_uri())
        for backend, run in runs.items():
            b.run(
                "const s = document.getElementById('run'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('change'));",
                backend,
            )
            first = b.run(STATE)
            assert (first["run"], first["step"], first["done"]) == (backend, "0", 0)
            assert all(marks == [] for marks in first["marks"].values()), first["marks"]
            states = expected_states(run["events"])
            tables = recording.steps(run)
            for n in range(1, len(run["events"]) + 1):
                if n <= REAL_CLICKS:
                    b.click("#next")
                    got = b.run(STATE)
                else:  # the button's own click, from the page (a WebDriver click is ~170 ms)
                    got = b.run("document.getElementById('next').click();" + STATE)
                where = f"{backend} step {n} ({run['events'][n - 1]})"
                assert got["step"] == str(n), where
                assert got["current"] == [f"ev-{n - 1}"] and got["done"] == n, where
                assert got["marks"] == states[n - 1], where
                rows = {row[0]: (row[1], row[2]) for row in got["leases"][1:]}
                want = {
                    name: (who.get("A", ""), who.get("B", ""))
                    for name, who in tables[n - 1]["leases"].items()
                }
                assert {k: v for k, v in rows.items() if v != ("", "")} == want, where
            for n in range(len(run["events"]) - 1, len(run["events"]) - 4, -1):
                b.click("#prev")  # and back
                got = b.run(STATE)
                assert got["step"] == str(n) and got["marks"] == states[n - 1], backend
        b.run(
            "const s = document.getElementById('run'); s.value = 'fcntl';"
            "s.dispatchEvent(new Event('change'));"
        )
        middle = next(
            n for n, ev in enumerate(runs["fcntl"]["events"]) if ev.get("op") == "take_over"
        )
        b.run(
            "for (let i = 0; i <= arguments[0]; i++) document.getElementById('next').click();",
            middle,
        )
        shot = b.screenshot()
        assert shot.startswith(b"\x89PNG"), "the screenshot is not a PNG"
        (artefacts() / "step-through.png").write_bytes(shot)
    finally:
        b.close()
