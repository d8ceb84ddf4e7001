"""Race fuzzing: the two-host hypothesis machines (hosts A and B and a rogue C driving one
guest's leases through every daemon call, crash and restart, judged by the invariants of
DESIGN.md against the lock service itself) and ``lockfsm fuzz``, which runs them against an
operator's own deployment.  Needs hypothesis (``pip install lockfsm[fuzz]``), except
:mod:`lockfsm.fuzz.procs`."""
