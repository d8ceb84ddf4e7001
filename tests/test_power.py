"""The measuring tools of tests/power.py: the reachable (A, B, call) triples of the two-host
machine's model (tests/support/reach.py) and a run's coverage against them."""

from __future__ import annotations

from tests import power
from tests.support import reach


def test_the_explored_model_keeps_one_writer_and_reaches_a_whole_migration() -> None:
    worlds, triples = reach.explore()
    for hosts, _, _ in worlds:
        executing = [h for h in hosts if h[1] in reach.EXECUTING]
        assert len(executing) <= 1, f"S1 in the machine's model: {hosts}"
    pairs = {(a, b) for a, b, _ in triples}
    assert ("migrating_out/migrating_out", "migrating_in/incoming") in pairs
    assert ("done/none", "started/running") in pairs  # the handoff, both sides completed
    assert ("started/running", "-/none", "A:prepare_migrate") in triples
    assert not any(t.startswith("C:") for _, _, t in triples)


def test_a_run_covers_what_it_reached_and_counts_what_the_model_cannot_reach() -> None:
    _, triples = reach.explore()
    some = sorted(triples)[:10]
    pairs, got, outside = power.coverage([*some, ("nowhere/none", "-/none", "A:free")])
    assert got == 100 * 10 / len(triples)
    assert 0 < pairs <= 100 * 10 / 279
    assert outside == 1
