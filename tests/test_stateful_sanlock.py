"""The two-host hypothesis stateful test of tests/test_stateful_migration.py, on sanlock: the
machine of :mod:`lockfsm.fuzz.sanlock` (the same
rules (any daemon call on any of hosts A, B and the rogue C, crashes, restarts, illegal calls,
runs of enabled moves), the same invariants (S1-S5, L1), judged from what the real sanlock
daemons report and from the processes instead of the kernel's lock table.

Three simulated hosts, each a real unprivileged sanlock daemon with its own host_id on one
lockspace (the session's ``cluster`` of tests/test_sanlock.py, started once).  Every example has
disks of its own and a guest uuid of its own, so lease names (sanlock resources) never cross
examples; its lease files are removed at its end.  The names are picked so that the exclusive
leases' sanlock names sort in an order hypothesis draws (supervisors take leases in that order,
and the model's predictions depend on it).  What sanlock says (``Entry``): for each lease
of the example (the disks and ``@guest``, the guest's own exclusive lease on its uuid), which
registered client pid holds it, exclusive ("x") or shared ("s"), from ``sanlock client status``
of every daemon; and each exclusive lease's version (lver) from its leader record on disk.

Where sanlock differs from fcntl, the model says so (and nothing else changes):

* an incoming target's reservation holds nothing (there is no gate): sanlock's handoff is
  protected by the lease version, not by a reservation.  So a second incoming target is NOT
  refused at start; a fresh start or a hot-plug is refused only by an executing holder; and
  between the source's release and the target's take-over a third host (C, or the old source)
  CAN take the leases.  The target's take-over then fails for good (LeaseConflict, final, at
  once): sanlock refuses an acquire carrying a lease version that is no longer the lease's;
* every successful exclusive acquire moves the lease's version on by one (a fresh start, a
  hot-plug, a take-over; a release keeps it), and the take-over carries the versions the
  source held at prepare_migrate (the cookie).  The model counts each exclusive lease's version
  (checked against the leader records and the cookie) and predicts the take-over by walking
  the cookie's exclusive leases in the supervisor's order (exclusive first, by key), as the
  supervisor does: a lease held at the cookie's version waits (the source has not handed off),
  a free one at the cookie's version is taken, one at another version ends the take-over for
  good.  A failed attempt gives back what it took *with its version moved*, so an attempt that
  took some leases and then waited makes the next attempt fail for good; a refused start moves
  the versions of the free leases it took before its conflict (key order) too: so S5's "a
  refused call changes nothing" holds for holders, states and processes, while versions are
  judged against the model after each step.  A stale cookie therefore fails at once, where
  fcntl would wait or take free leases;
* a killed supervisor's leases are freed when its registered connection closes, i.e. once the
  guest (which inherits it) is dead too; the test waits for the daemon to drop them.

A known backend race is tolerated and counted (``KNOWN_PARTIAL_TAKEOVER_RACE``): see there.

Profiles from tests/conftest.py; this file runs half the examples the fcntl one does (each step
starts supervisors that talk to sanlock daemons, 5-50 ms an acquire): 12 in the ci profile
(about 30 s), 1000 nightly.  tests/test_bites.py proves it fails when the take-over ignores the
cookie's lease versions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import Phase, settings

from lockfsm.fuzz.sanlock import SanlockTwoHosts
from lockfsm.fuzz.sanlock_daemons import Cluster
from tests.support.directed import run


@pytest.fixture(scope="module", autouse=True)
def sanlock_cluster(cluster: Cluster) -> Iterator[Cluster]:
    SanlockTwoHosts.CLUSTER = cluster
    try:
        yield cluster
    finally:
        SanlockTwoHosts.CLUSTER = None


def test_a_take_over_that_failed_for_good_takes_nothing_when_tried_again() -> None:
    """Found by ``lockfsm fuzz --driver sanlock`` on the unbroken protocol: the source (A, h
    hot-plugged) prepares and shuts down while B is incoming; A starts afresh without h; B's
    take-over takes the free h, finds d0 at a new version and fails for good.  A second
    completion on B took h again (its version moved on once more), because the failed attempt
    had told the next one to expect the version it moved h to.  A take-over that failed for good
    now fails at once when tried again, taking nothing."""
    program = [
        ("hot-plug h", "A"),
        ("prepare", "A"),
        ("restart daemon", "A"),
        ("incoming", "B"),
        ("shutdown", "A"),
        ("start", "A"),
        ("complete", "B"),
        ("complete", "B"),
    ]
    failure = run(program, SanlockTwoHosts, shared=True, order=["h", "d0", "d1", "@guest"])
    assert failure is None, failure


# Rules like the fcntl test's, half the examples: every step starts supervisors against sanlock.
SanlockTwoHosts.TestCase.settings = settings(
    max_examples=max(1, settings().max_examples // 2),
    deadline=None,
    phases=[p for p in Phase if p is not Phase.explain],
)
TestSanlockTwoHosts = SanlockTwoHosts.TestCase
