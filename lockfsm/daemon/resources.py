"""The resources of one guest, as its manager knows them: each with the leases its backend names,
plus the guest's own lease on its uuid.

Two paths that name one file are one resource (its identity is its canonical path).  The
registry answers the domain table's resource guards and makes what crosses to the supervisor
(the launch spec's resources) and what a migration cookie must match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lockfsm.daemon.flags import ResourceFlags, ResourceType, check_flags
from lockfsm.daemon.values import MigrationCookie, Resource
from lockfsm.errors import InvalidArgument

#: The lockspace of the guests' own leases (``domain_lease``): ``lockfsm-domains:<uuid>``.
DOMAIN_LOCKSPACE = "lockfsm-domains"

Leases = list[dict[str, Any]]


def is_domain_lease(type: object, path: object) -> bool:
    """Whether ``(type, path)`` is a guest's own lease, which lockfsm keeps itself."""
    kind = type.value if isinstance(type, ResourceType) else type
    return kind == "lease" and str(path).startswith(f"{DOMAIN_LOCKSPACE}:")


class ResourceRegistry:
    """The registered resources of one guest and their leases, named by ``backend`` under
    ``config`` (``auto_disk_leases``, ``domain_lease``)."""

    def __init__(self, backend: Any, config: Mapping[str, Any]) -> None:
        self.backend = backend
        self.config = config
        self.items: dict[tuple[ResourceType, str], tuple[Resource, Leases]] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def resources(self) -> tuple[Resource, ...]:
        return tuple(r for r, _ in self.items.values())

    def idents(self) -> set[tuple[ResourceType, str]]:
        return set(self.items)

    def user_resource(self, type: object, path: object, flags: object) -> Resource:
        """A resource the daemon names.  Raises InvalidArgument for a bad one, or a lease in
        the lockspace lockfsm keeps for the guests' own leases."""
        res = Resource.make(type, path, flags)
        if is_domain_lease(res.type, res.path):
            raise InvalidArgument(
                f"lease {res.path!r}: the lockspace {DOMAIN_LOCKSPACE!r} is lockfsm's own "
                "(each guest's lease on its uuid)"
            )
        return res

    def registered(self, type: object, path: object, flags: object) -> Resource:
        """The registered resource ``(type, path, flags)`` names, even if the file is gone (an
        unregistered one is refused later by the resource_known guard).  Raises
        InvalidArgument for flags other than those it was registered with."""
        bits = check_flags(ResourceFlags, flags, "resource flags")
        for res, _ in self.items.values():
            if res.type is type and path in (res.path, res.canonical):
                if res.flags != bits:
                    raise InvalidArgument(
                        f"{res.describe()} was registered with flags {res.flags}, not {bits}"
                    )
                return res
        return Resource.make(type, path, flags)

    def clash(self, res: Resource) -> str | None:
        """Why ``res`` cannot be added (a registered resource names the same file), or None."""
        have = self.items.get(res.ident)
        if have is None:
            return None
        return f"{res.describe()} names the same file as registered {have[0].describe()}"

    def known(self, res: Resource) -> str | None:
        """Why ``res`` is not registered, or None."""
        return None if res.ident in self.items else f"{res.describe()} is not registered"

    def leases_of(self, res: Resource) -> Leases:
        """The leases the backend names for ``res`` (none for a disk with auto_disk_leases
        off)."""
        if res.type is ResourceType.DISK and not self.config["auto_disk_leases"]:
            return []
        return list(self.backend.leases(res.type.value, res.path, res.canonical, res.shared))

    def add(self, res: Resource, leases: Leases | None = None) -> None:
        self.items[res.ident] = (res, self.leases_of(res) if leases is None else leases)

    def remove(self, res: Resource) -> None:
        del self.items[res.ident]

    def leases(self, res: Resource) -> Leases:
        return self.items[res.ident][1]

    def replace(self, wired: Iterable[dict[str, Any]]) -> None:
        """Take the resources a supervisor reports (ATTACH), the guest's own lease left out."""
        self.items = {
            (ResourceType(r["type"]), r["canonical"]): (Resource.from_wire(r), list(r["leases"]))
            for r in wired
            if not is_domain_lease(r["type"], r["path"])
        }

    def domain_lease(self, uuid: str | None) -> list[tuple[Resource, Leases]]:
        """The guest's own exclusive lease, on its uuid (``domain_lease``): whatever its disks,
        the guest runs on one host at a time, and a migration target takes over only once the
        source has handed off (a guest with shared disks only has nothing else exclusive)."""
        if not self.config["domain_lease"] or uuid is None:
            return []
        res = Resource.make(ResourceType.LEASE, f"{DOMAIN_LOCKSPACE}:{uuid}")
        leases = self.backend.leases(res.type.value, res.path, res.canonical, False)
        return [(res, leases)] if leases else []

    def everything(self, uuid: str | None) -> list[tuple[Resource, Leases]]:
        """What the supervisor holds: the registered resources and the guest's own lease."""
        return [*self.items.values(), *self.domain_lease(uuid)]

    def to_wire(self, uuid: str | None, cookie: MigrationCookie | None) -> list[dict[str, Any]]:
        """The launch spec's resources, with the source's handoff data (a lease version) where
        the cookie has it."""
        return [r.to_wire(_with_handoff(leases, cookie)) for r, leases in self.everything(uuid)]

    def missing_lease(self, label: str, per_disk: bool) -> str | None:
        """require_lease_for_disks: why a guest with disks but no lease may not start, or None."""
        require = self.config["require_lease_for_disks"]
        if require is None:
            require = not self.config["auto_disk_leases"]
        if not require or not per_disk:
            return None
        disks = [r for r, _ in self.items.values() if r.type is ResourceType.DISK]
        if disks and not any(leases for _, leases in self.items.values()):
            return (
                f"require_lease_for_disks: {label!r} has disks ({disks[0].path}"
                f"{', ...' if len(disks) > 1 else ''}) but no lease: register a "
                "ResourceType.LEASE, or turn auto_disk_leases on"
            )
        return None

    def cookie_mismatch(
        self, cookie: MigrationCookie | None, uuid: str | None, driver: str
    ) -> str | None:
        """Why the migration cookie does not fit this guest, or None."""
        if cookie is None:
            return "set_parameter migration_cookie first"
        if cookie.uuid != uuid:
            return f"the migration_cookie is for uuid {cookie.uuid}, not {uuid}"
        if cookie.driver != driver:
            return f"the migration_cookie is for the {cookie.driver} driver, not {driver}"
        ours = {(le["key"], le["mode"]) for _, leases in self.everything(uuid) for le in leases}
        if ours != cookie.leases():
            names = sorted(r["path"] for r in cookie.resources)
            mine = sorted(r.path for r in self.resources)
            return f"registered resources {mine} are not the cookie's {names}"
        return None


def _with_handoff(leases: Leases, cookie: MigrationCookie | None) -> Leases:
    if cookie is None:
        return leases
    theirs = {le["key"]: le for r in cookie.resources for le in r["leases"]}
    return [
        {**le, **{k: v for k, v in theirs[le["key"]].items() if k == "version"}} for le in leases
    ]
