"""The ``nop`` backend: VM-level, holds nothing.  Resource paths are accepted and ignored, as the
seed allows a VM-level lock manager to do.  Useful to run guests under the lifecycle checks alone,
and as the baseline of the benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lockfsm.backends import Capabilities, ConfigKey, LeaseView, PollingHolder

CAPABILITIES = Capabilities(
    per_disk=False,
    shared=False,
    hotplug=True,
    migration=True,
    atomic_handoff=False,
    holder_death_frees="nothing is held",
    self_fencing=False,
    spans_hosts="no",
)


class NopBackend:
    name = "nop"
    capabilities = CAPABILITIES
    config_keys: Mapping[str, ConfigKey] = {}

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def leases(
        self, resource_type: str, path: str, canonical: str, shared: bool
    ) -> list[dict[str, str]]:
        return []


class NopHolder(PollingHolder):
    def acquire(self, lease: Mapping[str, str], resource: str) -> None:
        raise AssertionError("the nop backend names no lease")  # pragma: no cover

    def release(self, leases: Sequence[Mapping[str, Any]]) -> None:
        raise AssertionError("the nop backend names no lease")  # pragma: no cover

    def reserve(self, lease: Mapping[str, str], resource: str) -> None:
        raise AssertionError("the nop backend names no lease")  # pragma: no cover

    def probe(self, lease: Mapping[str, str], resource: str) -> None:
        raise AssertionError("the nop backend names no lease")  # pragma: no cover

    def take_over(self, group: Sequence[tuple[Mapping[str, Any], str]]) -> None:
        raise AssertionError("the nop backend names no lease")  # pragma: no cover

    def unreserve(self, leases: Sequence[Mapping[str, Any]]) -> None:
        raise AssertionError("the nop backend names no lease")  # pragma: no cover

    def settle(self, lease: Mapping[str, str]) -> None:
        raise AssertionError("the nop backend names no lease")  # pragma: no cover

    def watch(self, notify: list[str]) -> None:
        pass  # nothing is held: nothing can be lost

    def next_check(self) -> float | None:
        return None

    def poll(self) -> str | None:
        return None

    def inheritable_fds(self) -> list[int]:
        return []


BACKEND = NopBackend


def make_holder(config: Mapping[str, Any], view: LeaseView) -> NopHolder:
    return NopHolder()


def holders(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Nothing is ever held."""
    return []


def hosts(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    return []  # nothing is shared between hosts


def wait_free(
    config: Mapping[str, Any], leases: Sequence[Mapping[str, Any]], timeout: float
) -> None:
    return  # nothing is ever held
