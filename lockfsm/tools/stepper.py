"""The step-through page: one static HTML file (no server, no network) holding the recorded runs.

A reader picks a run (one per backend) and steps forward and back through its events (buttons,
or the arrow keys).  At each step the page shows: the sequence chart with every event up to the
current one drawn and the current one marked; the domain and supervisor state diagrams with each
host's current state marked (host A blue, host B green); and a table of who holds which lease.

Everything the page shows is computed here, in Python (:func:`lockfsm.tools.recording.steps`),
and embedded as JSON; the page's script only switches classes.  The output is byte-stable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from lockfsm.tools import recording, sequence

PAGE = "step-through.html"

STYLE = """
body{font-family:'DejaVu Sans',Helvetica,sans-serif;margin:0;font-size:13px}
header{position:sticky;top:0;background:#fafafa;border-bottom:1px solid #ccc;padding:6px 10px;
 z-index:2}
header button{font-size:13px;margin-right:4px}
#status{margin-left:10px;font-weight:bold}
#what{margin-left:10px}
main{display:flex;gap:10px;padding:10px}
#charts{flex:3;overflow:auto;height:calc(100vh - 70px);border:1px solid #ddd}
#side{flex:2;overflow:auto;height:calc(100vh - 70px)}
.run{display:none}.run.shown{display:block}
.run svg{width:100%;height:auto}
.lanes{position:sticky;top:0;height:18px;background:#fafafa;border-bottom:1px solid #ddd}
.lanes span{position:absolute;transform:translateX(-50%);font-weight:bold;white-space:nowrap}
.ev{opacity:.18}.ev.done{opacity:1}
.ev.current line{stroke-width:3}.ev.current text{font-weight:bold;fill:#c00000}
.ev.current rect{stroke-width:3}
.diagram svg{max-width:100%;height:auto}
g.node.at-A ellipse,g.node.at-A polygon{fill:#cfe0ff;stroke:#1f5fbf;stroke-width:4}
g.node.at-B ellipse,g.node.at-B polygon{fill:#d5f0d5;stroke:#2a8a3a;stroke-width:4}
g.node.at-A.at-B ellipse,g.node.at-A.at-B polygon{fill:#cfe0ff;stroke:#2a8a3a}
.hostA{color:#1f5fbf;font-weight:bold}.hostB{color:#2a8a3a;font-weight:bold}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 8px}
"""

SCRIPT = """
const RUNS = JSON.parse(document.getElementById('data').textContent);
let run = Object.keys(RUNS)[0], step = 0;
const drawn = {};  // run -> the step its chart shows
function mark(diagram, host, state) {
  for (const g of document.querySelectorAll('#' + diagram + ' g.node')) {
    const title = g.querySelector('title');
    g.classList.toggle('at-' + host, state !== null && title && title.textContent === state);
  }
}
function show() {
  const r = RUNS[run], n = r.events.length;
  step = Math.max(0, Math.min(step, n));
  for (const div of document.querySelectorAll('.run')) {
    div.classList.toggle('shown', div.dataset.run === run);
  }
  const chart = document.querySelector('.run[data-run="' + run + '"]');
  // Only the events between the step shown before and this one change (a run has hundreds).
  const before = drawn[run] === undefined ? n : drawn[run];
  for (let i = Math.min(before, step) - 1; i <= Math.max(before, step); i++) {
    const g = chart.querySelector('#ev-' + i);
    if (!g) continue;
    g.classList.toggle('done', i < step);
    g.classList.toggle('current', i === step - 1);
  }
  drawn[run] = step;
  const now = step === 0 ? r.initial : r.steps[step - 1];
  for (const host of ['A', 'B']) {
    mark('domain', host, now.states[host].domain);
    mark('supervisor', host, now.states[host].supervisor);
    document.getElementById('state-' + host).textContent =
      'domain ' + (now.states[host].domain || '-') +
      ', supervisor ' + (now.states[host].supervisor || '-');
  }
  const rows = r.leases.map(name => {
    const who = now.leases[name] || {};
    return '<tr><td>' + name + '</td><td>' + (who.A || '') + '</td><td>' + (who.B || '') +
      '</td></tr>';
  });
  document.getElementById('leases').innerHTML =
    '<tr><th>lease</th><th class="hostA">host A</th><th class="hostB">host B</th></tr>' +
    rows.join('');
  document.getElementById('status').textContent = 'step ' + step + ' of ' + n;
  document.getElementById('what').textContent = step === 0 ? 'before the run' :
    r.labels[step - 1];
  document.body.dataset.run = run;
  document.body.dataset.step = String(step);
  const current = chart.querySelector('#ev-' + (step - 1));
  if (current) current.scrollIntoView({block: 'center'});
}
document.getElementById('next').onclick = () => { step += 1; show(); };
document.getElementById('prev').onclick = () => { step -= 1; show(); };
document.getElementById('first').onclick = () => { step = 0; show(); };
document.getElementById('last').onclick = () => { step = RUNS[run].events.length; show(); };
document.getElementById('run').onchange = e => { run = e.target.value; step = 0; show(); };
document.addEventListener('keydown', e => {
  if (e.key === 'ArrowRight') { step += 1; show(); }
  if (e.key === 'ArrowLeft') { step -= 1; show(); }
});
show();
"""


def _inline(svg: str) -> str:
    """A graphviz SVG file as an element of the page (no XML declaration, no doctype)."""
    return re.sub(r"^.*?(<svg\b)", r"\1", svg, count=1, flags=re.S)


def _lanes(backend: str) -> str:
    """The lanes' names, kept in view above the chart as it scrolls."""
    spans = []
    for name, key in zip(sequence.LANES, ("dA", "sA", "svc", "sB", "dB"), strict=True):
        left = sequence.X[key] * 1000 // sequence.WIDTH
        text = f"{name} ({backend})" if key == "svc" else name
        spans.append(f'<span style="left:{left // 10}.{left % 10}%">{escape(text)}</span>')
    return f'<div class="lanes">{"".join(spans)}</div>'


def label(ev: Mapping[str, Any]) -> str:
    """One line saying what an event is, for the page's status line.  Raises KeyError for an
    event that lacks a field of its kind."""
    host = ev.get("host", "")
    kind = ev["kind"]
    if kind == "scene":
        return f"scene: {ev['title']}"
    if kind == "seed":
        return f"daemon {host} calls {ev['call']}({ev['carries']})"
    if kind == "seed_reply":
        return f"{ev['call']} returns to daemon {host}: {ev['outcome']}"
    if kind == "spawn":
        return f"daemon {host} runs a supervisor"
    if kind == "control":
        return f"daemon {host} asks its supervisor: {ev['op']} {ev['carries']}".rstrip()
    if kind == "control_reply":
        return f"supervisor {host} answers {ev['op']}: {ev['outcome']}"
    if kind == "state":
        where = "daemon" if ev["machine"] == "domain" else "supervisor"
        return f"{where} {host}: {ev['source']} → {ev['dest']} ({ev['event']})"
    if kind == "service":
        return (
            f"supervisor {host} → lock service: {ev['op']} {', '.join(ev['leases'])}: "
            f"{ev['does']} ({ev['outcome']})"
        )
    if kind == "service_note":
        return f"lock service: {ev['lease']}: {ev['note']}"
    return f"lock service → supervisor {host}: lease lost ({ev.get('reason', '')})"


def page(runs: Mapping[str, Mapping[str, Any]], domain_svg: str, supervisor_svg: str) -> str:
    """The page's HTML for ``runs`` (backend -> recording) and the two state diagrams (SVG
    text, as ``lockfsm diagrams`` draws them).  Raises InvalidArgument for a malformed
    recording."""
    data: dict[str, Any] = {}
    charts = []
    for backend, run in runs.items():
        steps = recording.steps(run)
        names = sorted({name for s in steps for name in s["leases"]})
        data[backend] = {
            "events": [ev["kind"] for ev in run["events"]],
            "labels": [label(ev) for ev in run["events"]],
            "steps": steps,
            "initial": {
                "states": {h: {"domain": None, "supervisor": None} for h in ("A", "B")},
                "leases": {},
            },
            "leases": names,
        }
        svg = sequence.chart(run["events"], "the whole recorded run", backend)
        charts.append(f'<div class="run" data-run="{escape(backend)}">{_lanes(backend)}{svg}</div>')
    options = "".join(f'<option value="{escape(b)}">{escape(b)}</option>' for b in runs)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>lockfsm: a recorded run, step by step</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<select id="run">{options}</select>
<button id="first">|◀</button><button id="prev">◀ back</button>
<button id="next">forward ▶</button><button id="last">▶|</button>
<span id="status"></span><span id="what"></span>
</header>
<main>
<div id="charts">{"".join(charts)}</div>
<div id="side">
<p><span class="hostA">host A</span>: <span id="state-A"></span><br>
<span class="hostB">host B</span>: <span id="state-B"></span></p>
<h3>who holds what</h3>
<table id="leases"></table>
<h3>domain (the daemon's manager)</h3>
<div class="diagram" id="domain">{_inline(domain_svg)}</div>
<h3>supervisor</h3>
<div class="diagram" id="supervisor">{_inline(supervisor_svg)}</div>
</div>
</main>
<script type="application/json" id="data">{blob}</script>
<script>{SCRIPT}</script>
</body>
</html>
"""
