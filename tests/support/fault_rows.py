"""The fault matrix's rows (tests/test_faults.py): what a row is -- a backend, the process
faulted (the target), the signal, the step of the guest's life it comes at -- and how the rows
are enumerated: the whole cross product, and the default rows that cover every (target,
signal) and every step at least once per backend.  What each row is documented to do is
tests/support/fault_outcomes.py; running one is tests/support/fault_driver.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.support.fault_outcomes import documented

BACKENDS = ("fcntl", "sanlock", "etcd")
TARGETS = ("guest", "supervisor", "daemon", "lock service", "lease agent")
SIGNALS = ("SIGKILL", "SIGSTOP")
#: The etcd lease agent as an operator treats it: killed or stopped as a service (``systemctl
#: restart``) and started again at once, and sent SIGHUP (``systemctl reload``).
AGENT_SIGNALS = (*SIGNALS, "SIGKILL+restart", "SIGTERM+restart", "SIGHUP")
#: The steps at which an etcd supervisor's SIGSTOP lasts past its lease's deadline (a call to it
#: times out, a grace period passes) while it holds keys: the agent fences it.  (A target's
#: supervisor holds reservations only: nothing to fence.)
FENCED_STEPS = (
    "started",
    "hot-plugged",
    "migration prepared",
    "shutdown in progress",
    "target incoming, fault on the source",
    "target waiting, fault on the source",
)
STEPS = (
    "started",
    "hot-plugged",
    "migration prepared",
    "target incoming",
    "target waiting in complete_migrate_in",
    "shutdown in progress",
)
TARGET_SIDE = ("target incoming", "target waiting in complete_migrate_in")
#: More steps, in the full product only: the target's steps with the fault on the source's side.
SOURCE_FAULTED = (
    "target incoming, fault on the source",
    "target waiting, fault on the source",
)
ALL_STEPS = STEPS + SOURCE_FAULTED


def phase(step: str) -> str:
    """started, hot-plugged, prepared, incoming, waiting or shutdown."""
    for word, name in (
        ("waiting", "waiting"),
        ("incoming", "incoming"),
        ("prepared", "prepared"),
        ("shutdown", "shutdown"),
        ("hot-plugged", "hot-plugged"),
    ):
        if word in step:
            return name
    return "started"


def effect(backend: str, target: str, sig: str) -> str:
    """The kind of fault, which decides the documented end state."""
    if target == "guest":
        return "gone" if sig == "SIGKILL" else "paused"
    if target == "supervisor":
        return "gone" if sig == "SIGKILL" else "supervisor stopped"
    if target == "daemon":
        return "daemon killed" if sig == "SIGKILL" else "daemon stopped"
    if target == "lease agent":
        if sig.endswith("+restart"):
            return "agent restarted"
        if sig == "SIGHUP":
            return "hangup"
        return "fenced" if sig == "SIGKILL" else "stall"
    if backend == "fcntl":
        return "n/a"
    if backend == "sanlock":
        return "crash" if sig == "SIGKILL" else "stall"
    return "failover"


@dataclass(frozen=True)
class Row:
    """One row; ``expected`` is its documented end state (fault_outcomes.py), filled in where
    it is not given."""

    backend: str
    target: str
    sig: str
    step: str
    expected: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.expected:
            object.__setattr__(self, "expected", documented(self))

    @property
    def kind(self) -> str:
        """The kind of fault, which decides the documented end state."""
        kind = effect(self.backend, self.target, self.sig)
        if kind == "supervisor stopped" and self.backend == "etcd" and self.step in FENCED_STEPS:
            return "supervisor fenced"
        return kind

    @property
    def side(self) -> str:
        """The faulted side: "target" (its steps) or "source"."""
        return "target" if self.step in TARGET_SIDE else "source"

    @property
    def at(self) -> str:
        """The step's phase: started, hot-plugged, prepared, incoming, waiting or shutdown."""
        return phase(self.step)

    @property
    def source_faulted(self) -> bool:
        """A target's step with the fault on the source (the full product's extra steps)."""
        return self.step in SOURCE_FAULTED

    @property
    def id(self) -> str:
        step = self.step.split(" in ")[0].replace(", fault on the ", "-").replace(" ", "-")
        sig = self.sig.replace(" ", "-")
        return f"{self.backend}-{self.target.replace(' ', '-')}-{sig}-{step}"


def targets(backend: str) -> tuple[str, ...]:
    return TARGETS if backend == "etcd" else TARGETS[:4]


def signals(backend: str, target: str) -> tuple[str, ...]:
    """The faults a target gets: kill -9 and SIGSTOP, and the etcd agent's service signals."""
    return AGENT_SIGNALS if target == "lease agent" else SIGNALS


def all_rows() -> list[Row]:
    return [
        Row(b, t, s, st)
        for b in BACKENDS
        for t in targets(b)
        for s in signals(b, t)
        for st in ALL_STEPS
    ]


def default_rows() -> set[Row]:
    """Per backend, each (target, signal) once, at steps that rotate so that every step is hit
    at least once (fcntl's lock service is not applicable: its cells count as covered)."""
    chosen = set()
    for offset, b in enumerate(BACKENDS):
        pairs = [(t, s) for t in targets(b) for s in signals(b, t)]
        live = [(t, s) for t, s in pairs if effect(b, t, s) != "n/a"]
        for i, (t, s) in enumerate(live):
            st = STEPS[(i + 2 * offset) % len(STEPS)]
            chosen.add(Row(b, t, s, st))
        for t, s in pairs:
            if (t, s) not in live:
                chosen.add(Row(b, t, s, STEPS[0]))
    return chosen
