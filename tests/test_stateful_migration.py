"""Live migration between two hosts, plus a rogue third, driven by hypothesis: real supervisors,
real guests, one fcntl lockspace, the kernel's locks as the judge.

The world: hosts A and B (a :class:`HostPair`: source and target of the protocol's prose) and a
rogue host C, each with its own run dir and its own daemon (driver), all on one lockspace.  One
guest (one uuid) with disks d0 and d1 and, in some examples, a SHARED disk s; h is a spare disk
for hot-plug.  Nothing but the locks tells the hosts apart: any of them may start the guest, be
the source or the target of a migration, migrate it back, crash or restart.  C starting the guest
is the "third host" of PROTOCOL.md: refused while A or B holds or reserves the leases, and a
legitimate owner once it got them.

Rules are the daemons' calls in any order, legal or not: start, prepare_migrate, the target's
incoming start (MIGRATE manager, cookie, supervisor, get_child), complete_migrate_in with and
without cancel on either side (the target's, while the source still holds the leases, either
waits up to handoff_timeout and fails, or runs in a background thread that a later rule joins),
shutdown, free, hot-plug, kill -9 of a supervisor or a guest, a daemon restart followed by ATTACH,
and calls that must be refused.  Each rule asserts what the model predicts: success, or which
error; one more rule picks only moves the model and the domain table allow, so that deep paths
(prepare, incoming, both completions, migrating back) are reached.

The invariants (DESIGN.md, PROTOCOL.md) are checked against the kernel (``/proc/locks``,
``/proc/<pid>/fdinfo``), not against the model alone; every assertion message starts with the
name of the invariant it protects:

* S1: no disk is locked on byte 0 by two executing guests' supervisors unless all are shared;
  incoming targets (migrating_in) do not execute and are left out;
* S2: the supervisor of every executing guest holds byte 0 of exactly its disks' leases, and the
  guest shares the descriptions taken at its start (so they outlive a killed supervisor);
* S3: an incoming target holds gates (byte 1) only, never a lease, until its take-over; the
  source keeps every lease while its guest lives (watched during the handoff) and its guest is
  dead when its completion returns; the target's completion returns only once no source guest
  executes; a third host is refused while a lease is held or reserved;
* S4: a daemon restart followed by ATTACH finds the same guest, resources, state and locks;
* S5: every refused call changes nothing: managers, kernel locks, processes;
* L1: when both sides completed, the target holds every lease and the source none, its
  supervisor gone with status 0; a take-over whose leases came free in time succeeds.

Profiles come from tests/conftest.py (``LOCKFSM_HYPOTHESIS_PROFILE=nightly`` for the long run).
tests/test_bites.py proves that this test fails when the protocol is broken.
"""

from __future__ import annotations

from hypothesis import Phase, settings

from lockfsm.fuzz.machine import TwoHosts

# The rest from the loaded profile.  No explain phase: it replays a failing program hundreds of
# times with real processes (minutes); the shrunk program says enough.
TwoHosts.TestCase.settings = settings(
    deadline=None, phases=[p for p in Phase if p is not Phase.explain]
)
TestTwoHosts = TwoHosts.TestCase
