"""The diagrams: drawn from the tables and a recorded run, byte-stable, never stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lockfsm.tools import diagrams
from tests.support.needs import require


def test_committed_diagrams_are_fresh(tmp_path: Path) -> None:
    """Rendering the tables and the committed recording again gives the committed files."""
    require("dot")
    committed = diagrams.default_dir()
    shutil.copy(committed / diagrams.RECORDING, tmp_path / diagrams.RECORDING)
    written = diagrams.render(tmp_path)
    assert len(written) == 12
    for path in written:
        assert path.read_bytes() == (committed / path.name).read_bytes(), (
            f"diagrams/{path.name} is stale: run `lockfsm diagrams`"
        )


def test_a_new_recording_tells_the_same_story(tmp_path: Path) -> None:
    """The recorded run is real: recording it again gives the same moves and lease holders."""
    fresh = json.loads(diagrams.record(tmp_path).read_text())
    committed = json.loads((diagrams.default_dir() / diagrams.RECORDING).read_text())
    assert fresh == committed


def test_every_row_of_every_table_is_drawn() -> None:
    require("dot")
    from lockfsm.tools import spec

    for name, table in spec.load_all().items():
        source = diagrams.machine_graph(table).source
        assert source.count(" -> ") == len(table.expanded()) + 1, name  # +1: the start arrow
