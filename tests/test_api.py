"""Layer 2: the seed API, in process: bad input, illegal calls, configuration, the driver.

Every rejected call is followed by the check that nothing changed (S5): the manager's state, its
history, its resources, and the kernel's locks.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lockfsm
from lockfsm import (
    DomainState,
    IllegalTransition,
    InvalidArgument,
    NewFlags,
    ResourceFlags,
    ResourceType,
    Unsupported,
)
from lockfsm.embed.standin import Host, make_disks
from lockfsm.protocol import rundir, tables
from tests.support.helpers import lockspace_locks

UUID = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
DISK = ResourceType.DISK


def snapshot(mgr: lockfsm.LockManager) -> tuple[Any, ...]:
    locks = (
        lockspace_locks(mgr._driver.config["lockspace_dir"])
        if "lockspace_dir" in mgr._driver.config
        else {}
    )
    return (mgr.state, mgr.moves, mgr.resources, dict(mgr._params), locks)


def refused(
    mgr: lockfsm.LockManager,
    error: type[Exception],
    call: Callable[[], Any],
    match: str | None = None,
) -> Exception:
    """``call`` raises ``error`` (matching ``match``) and changes nothing."""
    before = snapshot(mgr)
    with pytest.raises(error, match=match) as info:
        call()
    assert snapshot(mgr) == before
    return info.value


@pytest.fixture
def driver(host: Host) -> lockfsm.LockDriver:
    return host.driver


@pytest.fixture
def mgr(driver: lockfsm.LockDriver) -> lockfsm.LockManager:
    m = driver.new_manager()
    m.set_parameter("uuid", UUID)
    m.set_parameter("name", "vm1")
    m.set_parameter("id", 7)
    return m


@pytest.fixture
def disks(workdir: str) -> list[str]:
    return make_disks(workdir, "a.img", "b.img", "c.img")


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("uuid", "not-a-uuid", "not-a-uuid"),
        ("uuid", "0b1c2d3e4f504a6b8c7d9e0f1a2b3c4d", "0b1c2d3e4f504a6b8c7d9e0f1a2b3c4d"),
        ("uuid", 12345, "12345"),
        ("id", -1, "-1"),
        ("id", True, "True"),
        ("id", "3", "'3'"),
        ("id", 2**40, str(2**40)),
        ("name", "x" * 300, "x" * 40),
        ("name", "bad\nname", "bad\\nname"),
        ("name", "nul\x00", "nul"),
        ("name", "", "''"),
        ("name", "a/b", "a/b"),
        ("colour", "blue", "colour"),
        (None, "x", "None"),
    ],
)
def test_bad_parameter_is_named_and_changes_nothing(
    mgr: lockfsm.LockManager, key: Any, value: Any, named: str
) -> None:
    err = refused(mgr, InvalidArgument, lambda: mgr.set_parameter(key, value))
    assert named in str(err)


def test_uuid_is_kept_in_lower_case(mgr: lockfsm.LockManager) -> None:
    mgr.set_parameter("uuid", UUID.upper())
    assert mgr._params["uuid"] == UUID


# -- resources --------------------------------------------------------------------------------


def test_bad_paths_are_named(mgr: lockfsm.LockManager, disks: list[str], workdir: str) -> None:
    cases = [
        ("relative/a.img", "not absolute"),
        (disks[0] + "\x00x", "NUL"),
        (os.path.join(workdir, "missing.img"), "cannot be used"),
        (workdir, "is a directory"),
        (42, "must be a string"),
        ("/" + "x" * 5000, "longer than"),
    ]
    for path, why in cases:
        err = refused(mgr, InvalidArgument, lambda p=path: mgr.register_resource(DISK, p))
        assert why in str(err)


def test_bad_type_and_flags(mgr: lockfsm.LockManager, disks: list[str]) -> None:
    refused(mgr, InvalidArgument, lambda: mgr.register_resource("disk", disks[0]), "ResourceType")  # type: ignore[arg-type]
    refused(mgr, InvalidArgument, lambda: mgr.register_resource(DISK, disks[0], 4), "unknown bits")
    refused(mgr, InvalidArgument, lambda: mgr.register_resource(DISK, disks[0], -1), "-1")
    refused(
        mgr,
        InvalidArgument,
        lambda: mgr.register_resource(ResourceType.LEASE, "no-colon"),
        "lockspace",
    )


def test_one_file_by_two_names_is_one_resource(
    mgr: lockfsm.LockManager, disks: list[str], workdir: str
) -> None:
    """A resource registered twice, or through a symlink, or through '..', is refused."""
    mgr.register_resource(DISK, disks[0])
    link = os.path.join(workdir, "link.img")
    os.symlink(disks[0], link)
    dotted = os.path.join(workdir, "sub", "..", "a.img")
    os.mkdir(os.path.join(workdir, "sub"))
    for path in (disks[0], link, dotted):
        err = refused(mgr, InvalidArgument, lambda p=path: mgr.register_resource(DISK, p))
        assert "names the same file" in str(err) and path in str(err)


def test_shared_and_readonly_take_shared_leases(mgr: lockfsm.LockManager, disks: list[str]) -> None:
    mgr.register_resource(DISK, disks[0], ResourceFlags.SHARED)
    mgr.register_resource(DISK, disks[1], ResourceFlags.READONLY)
    mgr.register_resource(DISK, disks[2])
    modes = [lease["mode"] for _, leases in mgr._registry.items.values() for lease in leases]
    assert modes == ["shared", "shared", "exclusive"]


def test_lease_names_follow_libvirt_lockd(
    mgr: lockfsm.LockManager, disks: list[str], workdir: str
) -> None:
    """SHA-256 of the path as given, plus the canonical path's when they differ."""
    import hashlib

    link = os.path.join(workdir, "l.img")
    os.symlink(disks[1], link)
    mgr.register_resource(DISK, disks[0])
    mgr.register_resource(DISK, link)
    keys = [[lease["key"] for lease in leases] for _, leases in mgr._registry.items.values()]
    sha = lambda p: hashlib.sha256(p.encode()).hexdigest()  # noqa: E731
    assert keys == [[sha(disks[0])], [sha(link), sha(disks[1])]]


# -- flags, drivers, configuration ------------------------------------------------------------


def test_new_manager_flags(driver: lockfsm.LockDriver) -> None:
    with pytest.raises(InvalidArgument, match="unknown bits"):
        driver.new_manager(8)
    with pytest.raises(InvalidArgument, match="exclude each other"):
        driver.new_manager(NewFlags.ATTACH | NewFlags.MIGRATE)


def test_a_backend_without_migration_refuses_every_migration_call(
    driver: lockfsm.LockDriver, mgr: lockfsm.LockManager
) -> None:
    driver.capabilities = driver.capabilities._replace(migration=False)
    with pytest.raises(Unsupported, match="migration"):
        driver.new_manager(NewFlags.MIGRATE)
    refused(mgr, Unsupported, lambda: mgr.prepare_migrate("qemu+ssh://b/system"), "migration")
    refused(mgr, Unsupported, lambda: mgr.complete_migrate_in(), "migration")
    refused(mgr, Unsupported, lambda: mgr.complete_migrate_in(cancel=True), "migration")


def test_unknown_driver_is_named() -> None:
    with pytest.raises(InvalidArgument, match="'teleport'"):
        lockfsm.load_driver("teleport")


def test_config_keys_are_checked(workdir: str) -> None:
    with pytest.raises(InvalidArgument, match="unknown configuration key 'colour'"):
        lockfsm.load_driver("fcntl", {"colour": 1, "run_dir": workdir})
    with pytest.raises(InvalidArgument, match=r"'lock_failure'.*'explode'"):
        lockfsm.load_driver("fcntl", {"lock_failure": "explode", "run_dir": workdir})
    with pytest.raises(InvalidArgument, match=r"'run_dir'.*not an absolute"):
        lockfsm.load_driver("nop", {"run_dir": "relative"})
    with pytest.raises(InvalidArgument, match=r"'run_dir'.*longer than"):
        lockfsm.load_driver("nop", {"run_dir": "/tmp/" + "x" * 90})
    os.chmod(workdir, 0o777)
    with pytest.raises(InvalidArgument, match="world-writable"):
        lockfsm.load_driver("nop", {"run_dir": workdir})


def test_config_from_toml_names_key_and_file(workdir: str) -> None:
    good = os.path.join(workdir, "good.toml")
    with open(good, "w") as f:
        f.write(
            f'run_dir = "{workdir}/run"\nlockspace_dir = "{workdir}/ls"\nlock_failure = "pause"\n'
        )
    d = lockfsm.load_driver("fcntl", good)
    assert d.config["lock_failure"] == "pause"
    assert oct(os.stat(f"{workdir}/ls").st_mode & 0o777) == "0o700"
    bad = os.path.join(workdir, "bad.toml")
    with open(bad, "w") as f:
        f.write('lockspace = "/x"\n')
    with pytest.raises(InvalidArgument, match=f"'lockspace'.*{bad}"):
        lockfsm.load_driver("fcntl", bad)


def test_fcntl_works_with_no_configuration() -> None:
    """No configuration at all: working default directories, writable by no one else."""
    d = lockfsm.load_driver("fcntl")
    for key in ("lockspace_dir", "run_dir"):
        st = os.stat(d.config[key])
        assert not st.st_mode & 0o022, f"{key} {d.config[key]} is writable by others"
    expected = "/run/lockfsm" if os.geteuid() == 0 else None
    if expected:
        assert d.config["run_dir"] == expected


def test_unload_refuses_while_managers_live(driver: lockfsm.LockDriver) -> None:
    m = driver.new_manager()
    m.set_parameter("name", "alive")
    with pytest.raises(IllegalTransition, match=r"not freed.*alive"):
        driver.unload()
    m.free()
    driver.unload()
    with pytest.raises(IllegalTransition, match="unloaded"):
        driver.new_manager()


def test_unload_force(driver: lockfsm.LockDriver) -> None:
    driver.new_manager()
    driver.unload(force=True)
    with pytest.raises(IllegalTransition):
        driver.unload()


# -- calls in the wrong state (S5), at every state ------------------------------------------


def _calls(mgr: lockfsm.LockManager, disks: list[str]) -> dict[str, Callable[[], Any]]:
    return {
        "set_parameter": lambda: mgr.set_parameter("name", "renamed"),
        "register_resource": lambda: mgr.register_resource(DISK, disks[2]),
        "get_child": lambda: mgr.get_child(timeout=0.2),
        "acquire_resource": lambda: mgr.acquire_resource(DISK, disks[2]),
        "release_resource": lambda: mgr.release_resource(DISK, disks[0]),
        "shutdown": mgr.shutdown,
        "free": mgr.free,
        "prepare_migrate": lambda: mgr.prepare_migrate("qemu://target/system"),
        "complete_migrate_in": mgr.complete_migrate_in,
        "check": mgr.check,
    }


def report_loss(mgr: lockfsm.LockManager, why: str = "test") -> None:
    """Report a lost lease to the manager's supervisor as the lock service's kill path does."""
    sock = rundir.socket_path(str(mgr._driver.config["run_dir"]), str(mgr._launch))
    subprocess.run([mgr.supervisor_path, "--lease-lost", sock, why], check=True, timeout=10)


@pytest.fixture
def in_state(
    host: Host, other_host: Host, disks: list[str]
) -> Iterator[Callable[[str], lockfsm.LockManager]]:
    """A manager in the state asked for, reached through the API (other_host: a target)."""

    def make(state: str) -> lockfsm.LockManager:
        mgr = host.manager("vm-s", UUID, [disks[0]])
        if state == "idle":
            return mgr
        host.launch(mgr)
        mgr.get_child(timeout=10)
        if state in ("migrating_out", "done", "migrating_in", "cancelled"):
            cookie = mgr.prepare_migrate("qemu://other/system")
            if state == "done":
                mgr.complete_migrate_in()
            if state in ("migrating_in", "cancelled"):
                target = other_host.manager("vm-s", UUID, [disks[0]], flags=NewFlags.MIGRATE)
                target.set_parameter("migration_cookie", cookie)
                other_host.launch(target)
                target.get_child(timeout=10)
                if state == "cancelled":
                    target.complete_migrate_in(cancel=True)
                return target
        if state == "failed":
            report_loss(mgr)
            mgr.check()
        if state == "stopped":
            mgr.shutdown()
        if state == "freed":
            mgr.free()
        return mgr

    yield make


@pytest.mark.parametrize("state", [s.value for s in DomainState])
def test_every_illegal_call_raises_and_changes_nothing(
    state: str, in_state: Callable[[str], lockfsm.LockManager], disks: list[str]
) -> None:
    mgr = in_state(state)
    assert mgr.state.value == state
    legal = set(tables.DOMAIN.events_from(state))
    for event, call in _calls(mgr, disks).items():
        if event in legal:
            continue
        err = refused(mgr, IllegalTransition, call)
        assert isinstance(err, IllegalTransition)
        assert (err.machine, err.state, err.call) == ("domain", state, event)
        assert f"'{event}'" in str(err) and f"'{state}'" in str(err)


def test_supervisor_args_only_for_a_fresh_start(driver: lockfsm.LockDriver) -> None:
    m = driver.new_manager()
    with pytest.raises(InvalidArgument, match="uuid, name, id"):
        _ = m.supervisor_args
    a = driver.new_manager(NewFlags.ATTACH)
    with pytest.raises(IllegalTransition, match="supervisor_args"):
        _ = a.supervisor_args


def test_get_child_without_a_launch(mgr: lockfsm.LockManager) -> None:
    refused(mgr, InvalidArgument, lambda: mgr.get_child(timeout=0.2), "supervisor_args")
    refused(mgr, InvalidArgument, lambda: mgr.get_child(timeout=-1), "-1")


def test_get_child_when_no_supervisor_runs(mgr: lockfsm.LockManager) -> None:
    _ = mgr.supervisor_args
    refused(mgr, lockfsm.BackendError, lambda: mgr.get_child(timeout=0.3), "answered")
    assert mgr.state is DomainState.IDLE


def test_attach_with_no_supervisor(driver: lockfsm.LockDriver) -> None:
    a = driver.new_manager(NewFlags.ATTACH)
    refused(a, InvalidArgument, lambda: a.get_child(timeout=0.2), "uuid, name, id")
    a.set_parameter("uuid", UUID)
    a.set_parameter("name", "vm1")
    a.set_parameter("id", 7)
    refused(a, lockfsm.BackendError, lambda: a.get_child(timeout=0.2), "no supervisor of uuid")


def test_capability_is_checked_first(
    driver: lockfsm.LockDriver, mgr: lockfsm.LockManager, disks: list[str]
) -> None:
    """A backend without hot-plug raises Unsupported from every hot-plug call, in any state."""
    driver.capabilities = driver.capabilities._replace(hotplug=False)
    refused(mgr, Unsupported, lambda: mgr.acquire_resource(DISK, disks[0]), "hotplug")
    refused(mgr, Unsupported, lambda: mgr.release_resource(DISK, disks[0]), "hotplug")


# -- what a daemon reads ----------------------------------------------------------------------


def test_history_and_one_log_line_per_move(
    mgr: lockfsm.LockManager, disks: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lockfsm.core"):
        mgr.register_resource(DISK, disks[0])
        with pytest.raises(IllegalTransition):
            mgr.shutdown()
        mgr.free()
    moves = [(h.source, h.event, h.dest) for h in mgr.history]
    assert moves[-2:] == [("idle", "register_resource", "idle"), ("idle", "free", "freed")]
    lines = [r for r in caplog.records if r.name == "lockfsm.core"]
    assert [r.getMessage().split(" duration")[0] for r in lines] == [
        "move machine=domain domain=vm1 from=idle event=register_resource to=idle",
        "move machine=domain domain=vm1 from=idle event=free to=freed",
    ]
    assert all(r.machine == "domain" and r.duration >= 0 for r in lines)  # type: ignore[attr-defined]


def test_threads_may_share_a_manager(mgr: lockfsm.LockManager, workdir: str) -> None:
    paths = make_disks(workdir, *(f"t{i}.img" for i in range(40)))
    threads = [threading.Thread(target=mgr.register_resource, args=(DISK, p)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(mgr.resources) == 40
    assert mgr.moves == 3 + 40


def test_the_package_imports_lazily() -> None:
    """The supervisor imports lockfsm; the package alone must not pull transitions or attrs."""
    import subprocess
    import sys

    code = (
        "import sys, lockfsm.supervisor; "
        "print(sorted(m for m in ('transitions', 'attrs', 'hashlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
