"""The diagrams: drawn from the tables and recorded runs, byte-stable, never stale."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lockfsm import InvalidArgument
from lockfsm.tools import diagrams, recording, sequence
from tests.support.needs import require


def test_committed_diagrams_are_fresh(tmp_path: Path) -> None:
    """Rendering the tables and the committed recordings again gives the committed files."""
    require("dot")
    require("rsvg-convert")
    committed = diagrams.default_dir()
    for backend in diagrams.BACKENDS:
        name = diagrams.recording_path(committed, backend).name
        shutil.copy(committed / name, tmp_path / name)
    written = diagrams.render(tmp_path)
    assert len(written) == 9 + 3 * 3 * 2 + 1  # tables (dot, svg, png), charts, the page
    for path in written:
        assert path.read_bytes() == (committed / path.name).read_bytes(), (
            f"diagrams/{path.name} is stale: run `lockfsm diagrams`"
        )


def test_the_same_recording_gives_the_same_svg_and_png_bytes() -> None:
    require("rsvg-convert")
    run = diagrams.load_recording(diagrams.recording_path(diagrams.default_dir(), "etcd"))
    first = diagrams.charts(run)
    again = diagrams.charts(json.loads(json.dumps(run)))
    assert first == again
    name, svg = first[1]
    assert name == "sequence-etcd-migration"
    assert sequence.png(svg) == sequence.png(svg)


def shape(run: dict) -> dict[str, Counter[tuple[str, ...]]]:  # type: ignore[type-arg]
    """Per scene, how many of each message (kind, host, call/op, outcome, lease set) and state
    move it holds: what a run says, without the order of concurrent events or of the leases
    (taken by key, a hash of each run's paths), nor how many times a failed attempt was made
    (a take-over tried again while the source still holds: timing)."""
    scenes: dict[str, Counter[tuple[str, ...]]] = {}
    scene = ""
    for ev in run["events"]:
        if ev["kind"] == "scene":
            scene = ev["name"]
            scenes[scene] = Counter()
            continue
        key = [ev["kind"], ev.get("host", "")]
        for field in ("call", "carries", "op", "outcome", "machine", "source", "dest", "note"):
            if field in ev:
                key.append(f"{field}={ev[field]}")
        if "leases" in ev:
            key.append(",".join(sorted(ev["leases"])))
        if "lease" in ev:
            key.append(ev["lease"])
        if ev["kind"] == "service" and ev["outcome"] != "ok":
            scenes[scene][tuple(key)] = 1  # an attempt tried again: how often is timing
        else:
            scenes[scene][tuple(key)] += 1
    return scenes


def test_a_new_fcntl_recording_tells_the_same_story() -> None:
    """The fcntl run is recorded again, live (real supervisors, real OFD locks): every scene
    has the committed run's messages and moves, and each host's states and leases end as they
    did."""
    fresh = recording.record_fcntl()
    committed = diagrams.load_recording(diagrams.recording_path(diagrams.default_dir(), "fcntl"))
    assert [e["name"] for e in fresh["events"] if e["kind"] == "scene"] == [
        name for name, _ in recording.SCENES
    ]
    assert shape(fresh) == shape(committed)
    assert recording.steps(fresh)[-1] == recording.steps(committed)[-1]


def test_every_chart_has_the_lanes_and_an_arrow_for_every_message() -> None:
    run = diagrams.load_recording(diagrams.recording_path(diagrams.default_dir(), "sanlock"))
    whole = sequence.chart(run["events"], "all", "sanlock")
    for lane in sequence.LANES:
        assert f">{lane}" in whole, lane
    arrows = sum(e["kind"] not in ("scene", "state", "service_note") for e in run["events"])
    assert whole.count("<line ") == arrows + len(sequence.LANES)
    assert "acquire exclusive with lver=" in whole  # the take-over carries the lease version
    etcd = diagrams.load_recording(diagrams.recording_path(diagrams.default_dir(), "etcd"))
    assert any(e.get("note") == "x := handoff marker" for e in etcd["events"])
    fcntl = diagrams.load_recording(diagrams.recording_path(diagrams.default_dir(), "fcntl"))
    assert any("gate byte 1" in str(e.get("does")) for e in fcntl["events"])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "is not a recorded run"),
        ('{"backend": "fcntl", "events": [{"kind": "wave"}]}', "event 0 is not an event"),
        ('{"backend": "fcntl", "events": [{"kind": "seed", "host": "C"}]}', "host 'C'"),
        ('{"backend": "fcntl", "events": [{"kind": "seed", "host": "A"}]}', "lacks call, carries"),
    ],
)
def test_a_malformed_recording_is_refused_naming_the_file(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "run-fcntl.json"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as e:
        diagrams.render(tmp_path)
    assert str(path) in str(e.value) and says in str(e.value)
    assert "\n" not in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # nothing written


def test_a_malformed_later_recording_leaves_nothing_written(tmp_path: Path) -> None:
    """The package's recorded runs are copied into ``--out`` only once every recording there
    has been read: a bad one refuses the whole call, and nothing is left half-written."""
    path = tmp_path / "run-etcd.json"
    path.write_text('{"backend": "etcd", "events": [{"kind": "state", "host": "A"}]}')
    with pytest.raises(InvalidArgument, match="lacks machine, dest"):
        diagrams.render(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_out_must_be_a_directory(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("")
    with pytest.raises(InvalidArgument, match=f"--out {afile} is not a directory"):
        diagrams.main(str(afile))


def test_every_row_of_every_table_is_drawn() -> None:
    require("dot")
    from lockfsm.tools import spec

    for name, table in spec.load_all().items():
        source = diagrams.machine_graph(table).source
        assert source.count(" -> ") == len(table.expanded()) + 1, name  # +1: the start arrow


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sanlock", "etcd"])
def test_a_new_recording_on_a_real_lock_service_tells_the_same_story(backend: str) -> None:
    """sanlock (two real daemons) and etcd (a real member, a real agent per host): recorded
    again, each run has the committed one's messages, moves and final leases."""
    from tools import record_runs

    if backend == "sanlock":
        from tests.support.needs import require_sanlock

        require_sanlock()
        fresh = record_runs.record_sanlock()
    else:
        require("etcd")
        fresh = record_runs.record_etcd()
    committed = diagrams.load_recording(diagrams.recording_path(diagrams.default_dir(), backend))
    assert shape(fresh) == shape(committed)
    assert recording.steps(fresh)[-1] == recording.steps(committed)[-1]
