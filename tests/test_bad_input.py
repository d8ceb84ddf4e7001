"""Bad input at every public call, and the lockspace's own safety.

Every call of the seed API is given the bad values of its kind (paths, parameters, flags, types,
timeouts, cookies, configuration) in the state where the call is otherwise legal: it raises
InvalidArgument whose message names the value, and nothing changes (S5): the manager's state,
history, resources and parameters, the supervisor's state and record, the run directory, and the
kernel's locks on the lockspace.  tests/test_api.py has the first cases of each kind and the calls
in the wrong state; this file runs every kind at every call.

Then the lockspace: directories and lease files are made writable by no one else whatever the
umask; a lease file that is a symlink, a directory, a FIFO, another user's, writable by others or
not empty is reported, not followed or overwritten; and lease files are never written, truncated
or replaced through a start, a hot-plug, a migration and a shutdown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lockfsm
from lockfsm import (
    BackendError,
    DomainState,
    IllegalTransition,
    InvalidArgument,
    NewFlags,
    ResourceFlags,
    ResourceType,
)
from lockfsm.daemon.values import COOKIE_PREFIX
from lockfsm.embed.standin import Guest, Host, Pair, make_disks, short_tmpdir
from lockfsm.errors import show
from lockfsm.protocol import rundir, wire
from tests.support.helpers import lockspace_locks

DISK = ResourceType.DISK
UUID = "4a0b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


# -- the world every case runs in -------------------------------------------------------------


class World:
    """One host with a started guest (disk a) and an idle manager (disk a registered), shared by
    every case: a refused call changes nothing, which each case checks."""

    def __init__(self) -> None:
        self.workdir = short_tmpdir("lfb")
        self.host = Host(lockspace=short_tmpdir("lfl"))
        self.a, self.b = make_disks(self.workdir, "a.img", "b.img")
        os.mkdir(os.path.join(self.workdir, "sub"))
        self.link = os.path.join(self.workdir, "link.img")
        os.symlink(self.a, self.link)
        self.guest = self.host.start("bad-input", [self.a])

    def idle(self) -> lockfsm.LockManager:
        return self.host.manager("idle", UUID, [self.a])

    def cleanup(self) -> None:
        self.host.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.host.lockspace, ignore_errors=True)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    yield w
    w.cleanup()


def snapshot(w: World, mgr: lockfsm.LockManager) -> dict[str, Any]:
    launch = rundir.pointed(w.host.run_dir, w.guest.uuid)
    assert launch is not None
    info = wire.call(rundir.socket_path(w.host.run_dir, launch), {"op": "hello"}, 10.0)
    info.pop("since")
    record = rundir.record_path(w.host.run_dir, launch)
    with open(record, "rb") as f:
        content = f.read()
    return {
        "manager": (mgr.state, mgr.history, mgr.resources, dict(mgr._params)),
        "supervisor": info,
        "record": (os.stat(record).st_ino, content),
        "run_dir": sorted(os.listdir(w.host.run_dir)),
        "lockspace": lockspace_locks(w.host.lockspace),
        "lease files": sorted(os.listdir(w.host.lockspace)),
    }


def refused(
    w: World,
    mgr: lockfsm.LockManager,
    call: Callable[[], Any],
    named: str,
    error: type[Exception] = InvalidArgument,
) -> None:
    before = snapshot(w, mgr)
    with pytest.raises(error) as info:
        call()
    assert named in str(info.value), f"{named!r} not named in: {info.value}"
    assert snapshot(w, mgr) == before


# -- the bad values of each kind ----------------------------------------------------------------


def bad_paths(w: World) -> list[tuple[str, Any, str]]:
    """(case, path, what the message must name)."""
    return [
        ("relative", "rel/a.img", "'rel/a.img'"),
        ("NUL", w.a + "\x00x", "NUL"),
        ("missing", os.path.join(w.workdir, "missing.img"), "missing.img"),
        ("directory", w.workdir, "directory"),
        ("trailing slash", w.a + "/", "Not a directory"),
        ("through a missing dir", os.path.join(w.workdir, "nope", "..", "b.img"), "nope"),
        ("lone surrogate", os.path.join(w.workdir, "\ud800.img"), "surrogates"),
        ("control character", os.path.join(w.workdir, "a\x1b.img"), "control character"),
        ("C1 control (NEL)", os.path.join(w.workdir, "a\x85.img"), "control character"),
        ("too long", "/" + "x" * 5000, "longer than 4096"),
        ("empty", "", "''"),
        ("bytes", w.a.encode(), "must be a string"),
        ("int", 42, "42"),
        ("None", None, "None"),
    ]


def aliases(w: World) -> list[tuple[str, Any, str]]:
    """Other names of the registered disk a: one file, one resource."""
    dotted = os.path.join(w.workdir, "sub", "..", "a.img")
    return [
        ("same path again", w.a, "names the same file"),
        ("symlink to a registered disk", w.link, "names the same file"),
        ("'..' alias of a registered disk", dotted, "names the same file"),
    ]


BAD_FLAGS = [(-1, "-1"), (4, "4"), (1 << 40, str(1 << 40)), (True, "True"), (1.0, "1.0"),
             ("1", "'1'"), (None, "None")]  # fmt: skip
BAD_TYPES = [("disk", "'disk'"), (0, "0"), (None, "None"), (NewFlags.ATTACH, "ATTACH")]


def _ids(cases: list[tuple[Any, ...]]) -> list[str]:
    return [str(c[0]) if isinstance(c[0], str) else repr(c[0]) for c in cases]


def _path_cases() -> list[str]:
    w = World.__new__(World)
    w.workdir, w.a, w.link = "/w", "/w/a.img", "/w/link.img"
    return [c for c, _, _ in bad_paths(w) + aliases(w)]


PATH_CASES = _path_cases()
ALIAS_CASES = PATH_CASES[-3:]


def _path(w: World, case: str) -> tuple[Any, str]:
    for c, path, named in bad_paths(w) + aliases(w):
        if c == case:
            return path, named
    raise KeyError(case)  # pragma: no cover


# -- resources: register, hot-plug, hot-unplug ------------------------------------------------


@pytest.mark.parametrize("case", PATH_CASES)
def test_register_resource_bad_path(world: World, case: str) -> None:
    mgr = world.idle()
    path, named = _path(world, case)
    refused(world, mgr, lambda: mgr.register_resource(DISK, path), named)


@pytest.mark.parametrize("case", PATH_CASES)
def test_acquire_resource_bad_path(world: World, case: str) -> None:
    """Hot-plug: a bad path, or another name of a disk the guest holds, takes nothing."""
    path, named = _path(world, case)
    mgr = world.guest.mgr
    refused(world, mgr, lambda: mgr.acquire_resource(DISK, path), named)


@pytest.mark.parametrize("case", [c for c in PATH_CASES if c not in ALIAS_CASES])
def test_release_resource_bad_path(world: World, case: str) -> None:
    """Hot-unplug by a bad path (another name of a held disk is a good one: it is unplugged)."""
    path, named = _path(world, case)
    mgr = world.guest.mgr
    refused(world, mgr, lambda: mgr.release_resource(DISK, path), named)


@pytest.mark.parametrize("call", ["register", "acquire", "release"])
@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS, ids=_ids(BAD_FLAGS))
def test_resource_flags_out_of_range(world: World, call: str, flags: Any, named: str) -> None:
    mgr = world.idle() if call == "register" else world.guest.mgr
    method = {
        "register": mgr.register_resource,
        "acquire": mgr.acquire_resource,
        "release": mgr.release_resource,
    }[call]
    disk = world.a if call == "release" else world.b
    refused(world, mgr, lambda: method(DISK, disk, flags), named)


@pytest.mark.parametrize("call", ["register", "acquire", "release"])
@pytest.mark.parametrize(("rtype", "named"), BAD_TYPES, ids=_ids(BAD_TYPES))
def test_resource_type_not_a_resource_type(world: World, call: str, rtype: Any, named: str) -> None:
    mgr = world.idle() if call == "register" else world.guest.mgr
    method = {
        "register": mgr.register_resource,
        "acquire": mgr.acquire_resource,
        "release": mgr.release_resource,
    }[call]
    refused(world, mgr, lambda: method(rtype, world.b), named)


def test_release_with_other_flags_or_unregistered(world: World) -> None:
    mgr = world.guest.mgr
    refused(world, mgr, lambda: mgr.release_resource(DISK, world.a, ResourceFlags.SHARED), "flags")
    refused(world, mgr, lambda: mgr.release_resource(DISK, world.b), "b.img")


@pytest.mark.parametrize(
    ("lease", "named"),
    [("no-colon", "no-colon"), ("a:b:c", "a:b:c"), ("ls:k/ey", "k/ey"), ("ls:" + "k" * 49, "kkk"),
     (":key", ":key"), ("ls:ké", "ké")],
)  # fmt: skip
def test_bad_explicit_lease(world: World, lease: str, named: str) -> None:
    mgr = world.idle()
    refused(world, mgr, lambda: mgr.register_resource(ResourceType.LEASE, lease), named)
    refused(
        world,
        world.guest.mgr,
        lambda: world.guest.mgr.acquire_resource(ResourceType.LEASE, lease),
        named,
    )


# -- parameters -------------------------------------------------------------------------------

BAD_PARAMETERS: list[tuple[Any, Any, str]] = [
    ("uuid", UUID + "\n", "control character"),
    ("uuid", "\ud800", "surrogates"),
    ("uuid", "g" * 8 + UUID[8:], "gggggggg"),
    ("uuid", UUID[:-1], UUID[:-1]),
    ("uuid", None, "None"),
    ("uuid", uuidlib.UUID(UUID), "UUID("),
    ("id", 2**31, str(2**31)),
    ("id", 1.5, "1.5"),
    ("id", None, "None"),
    ("id", 10**5000, "16610 bits"),
    ("name", "é" * 128, "longer than 255 bytes"),
    ("name", "a\x1b[31mred", "control character"),
    ("name", "a\x85b", "control character"),
    ("name", "a\x7f", "control character"),
    ("name", "\ud800", "surrogates"),
    ("name", b"bytes", "must be a string"),
    ("name", ["vm"], "['vm']"),
    ("lock_failure", "restart", "restart"),
    ("lock_failure", "explode", "explode"),
    ("lock_failure", None, "None"),
    ("migration_cookie", COOKIE_PREFIX, "MIGRATE"),
    ("ID", 1, "'ID'"),
    (1, 1, "1"),
    ("name\x00", "x", "name\\x00"),
]


@pytest.mark.parametrize(
    ("key", "value", "named"),
    BAD_PARAMETERS,
    ids=[f"{k}={show(v, 12)}" for k, v, _ in BAD_PARAMETERS],
)
def test_set_parameter_bad_value(world: World, key: Any, value: Any, named: str) -> None:
    mgr = world.idle()
    refused(world, mgr, lambda: mgr.set_parameter(key, value), named)


def _cookie(body: Any) -> str:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return COOKIE_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture(scope="module")
def good_cookie(world: World) -> dict[str, Any]:
    """A real cookie's content (from a guest that then cancels its migration)."""
    (disk,) = make_disks(world.workdir, "cookie.img")
    g = world.host.start("cookie", [disk])
    cookie = g.mgr.prepare_migrate("qemu+tcp://target/system")
    g.mgr.complete_migrate_in(cancel=True)
    g.mgr.shutdown()
    body = cookie[len(COOKIE_PREFIX) :]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return decoded


def _bad_cookies(good: dict[str, Any]) -> list[tuple[str, Any, str]]:
    lease = good["resources"][0]["leases"][0]
    res = good["resources"][0]
    return [
        ("not a cookie", "garbage", "not a lockfsm migration cookie"),
        ("not base64", COOKIE_PREFIX + "!!!", "garbled"),
        ("deeply nested", _cookie(b"[" * 10000 + b"]" * 10000), "garbled"),
        ("not an object", _cookie([1, 2]), "must carry exactly"),
        ("missing field", _cookie({k: v for k, v in good.items() if k != "uuid"}), "uuid"),
        ("bad uuid", _cookie({**good, "uuid": "not-a-uuid"}), "not-a-uuid"),
        ("bad id", _cookie({**good, "id": -5}), "-5"),
        ("hosturi control", _cookie({**good, "hosturi": "a\nb"}), "control character"),
        ("lease key with a slash",
         _cookie({**good, "resources": [{**res, "leases": [{**lease, "key": "../x"}]}]}), "../x"),
        ("resource path with NEL",
         _cookie({**good, "resources": [{**res, "path": "/a\x85b"}]}), "not a usable path"),
        ("over 64 KiB", COOKIE_PREFIX + "A" * 70000, "64 KiB"),
        ("an int", 42, "42"),
    ]  # fmt: skip


def test_migration_cookie_bad_values(world: World, good_cookie: dict[str, Any]) -> None:
    """Every bad cookie is refused by name on a MIGRATE manager (11 cases)."""
    for case, cookie, named in _bad_cookies(good_cookie):
        mgr = world.host.manager("target", good_cookie["uuid"], flags=NewFlags.MIGRATE)
        before = snapshot(world, mgr)
        with pytest.raises(InvalidArgument) as err:
            mgr.set_parameter("migration_cookie", cookie)
        assert named in str(err.value), (case, str(err.value))
        assert snapshot(world, mgr) == before, case


# -- the other calls --------------------------------------------------------------------------

BAD_HOSTURIS = [("", "''"), ("a\nb", "control character"), ("u" * 1025, "1024"), (42, "42"),
                (None, "None"), ("a\x00b", "control"), ("a\x85b", "control character")]  # fmt: skip


@pytest.mark.parametrize(("hosturi", "named"), BAD_HOSTURIS, ids=_ids(BAD_HOSTURIS))
def test_prepare_migrate_bad_hosturi(world: World, hosturi: Any, named: str) -> None:
    mgr = world.guest.mgr
    refused(world, mgr, lambda: mgr.prepare_migrate(hosturi), named)


BAD_TIMEOUTS = [(-1, "-1"), (0, "0"), (True, "True"), ("5", "'5'"), (None, "None")]
NAN_INF = [float("nan"), float("inf")]


@pytest.mark.parametrize(("timeout", "named"), BAD_TIMEOUTS, ids=_ids(BAD_TIMEOUTS))
def test_get_child_bad_timeout(world: World, timeout: Any, named: str) -> None:
    for mgr in (world.idle(), world.guest.mgr):
        refused(world, mgr, lambda m=mgr: m.get_child(timeout=timeout), named)


@pytest.mark.parametrize("timeout", NAN_INF)
def test_get_child_timeout_not_finite(world: World, timeout: float) -> None:
    mgr = world.idle()
    _ = mgr.supervisor_args
    refused(world, mgr, lambda: mgr.get_child(timeout=timeout), str(timeout))


@pytest.mark.parametrize("cancel", [1, 0, "yes", None, "False"])
def test_complete_migrate_in_bad_cancel(world: World, cancel: Any) -> None:
    mgr = world.guest.mgr
    refused(world, mgr, lambda: mgr.complete_migrate_in(cancel=cancel), repr(cancel))


BAD_NEW_FLAGS = [(8, "8"), (-1, "-1"), (True, "True"), ("1", "'1'"), (1.0, "1.0"),
                 (None, "None"), (3, "exclude each other"), (1 << 40, str(1 << 40))]  # fmt: skip


@pytest.mark.parametrize(("flags", "named"), BAD_NEW_FLAGS, ids=_ids(BAD_NEW_FLAGS))
def test_new_manager_bad_flags(world: World, flags: Any, named: str) -> None:
    driver = world.host.driver
    before = len(driver._managers)
    with pytest.raises(InvalidArgument, match=None) as err:
        driver.new_manager(flags)
    assert named in str(err.value)
    assert len(driver._managers) == before


def test_new_manager_flags_too_long_to_print(world: World) -> None:
    with pytest.raises(InvalidArgument):
        world.host.driver.new_manager(10**5000)


def test_load_driver_bad_name_and_config(workdir: str) -> None:
    """load_driver refuses by name, and makes no directory for a configuration it refuses."""
    a_file = os.path.join(workdir, "file")
    open(a_file, "w").close()
    open_dir = os.path.join(workdir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    cases: list[tuple[Any, Any, str]] = [
        ("teleport", None, "'teleport'"),
        ("FCNTL", None, "'FCNTL'"),
        (None, None, "None"),
        ("fcntl\x00", None, "fcntl\\x00"),
        ("fcntl", 42, "42"),
        ("fcntl", {"lockspace_dir": "relative"}, "relative"),
        ("fcntl", {"lockspace_dir": a_file}, "not a directory"),
        ("fcntl", {"lockspace_dir": os.path.join(workdir, "x\x00")}, "lockspace_dir"),
        ("fcntl", {"lockspace_dir": os.path.join(open_dir, "ls")}, "sticky"),
        ("fcntl", {"run_dir": 42}, "42"),
        ("fcntl", {"handoff_timeout": float("nan")}, "nan"),
        ("fcntl", {"lock_failure": "restart"}, "restart"),
    ]
    for name, config, named in cases:
        before = sorted(os.listdir(workdir)), sorted(os.listdir(open_dir))
        with pytest.raises(InvalidArgument) as err:
            lockfsm.load_driver(name, config)
        assert named in str(err.value), (name, config, str(err.value))
        assert (sorted(os.listdir(workdir)), sorted(os.listdir(open_dir))) == before


def test_a_freed_manager_refuses_by_state_before_looking_at_arguments(world: World) -> None:
    mgr = world.idle()
    mgr.free()
    for call in (
        lambda: mgr.register_resource(DISK, "relative"),
        lambda: mgr.set_parameter("id", -1),
        lambda: mgr.acquire_resource(DISK, None),  # type: ignore[arg-type]
        lambda: mgr.prepare_migrate(None),  # type: ignore[arg-type]
    ):
        refused(world, mgr, call, "'freed'", IllegalTransition)


# -- a second daemon --------------------------------------------------------------------------


def test_a_second_daemon_with_the_wrong_identity_changes_nothing(world: World) -> None:
    """A second daemon that attaches with the guest's uuid but another name or id is refused,
    naming the value; the supervisor's controller generation stays, the first daemon still
    drives it."""
    second = world.host.load()
    g = world.guest
    for key, value in (("name", "impostor"), ("id", 99)):
        mgr = second.new_manager(NewFlags.ATTACH)
        params = {"uuid": g.uuid, "name": g.name, "id": 1, key: value}
        for k, v in params.items():
            mgr.set_parameter(k, v)
        before = snapshot(world, g.mgr)
        with pytest.raises(InvalidArgument) as err:
            mgr.get_child(timeout=5)
        assert repr(value) in str(err.value)
        assert mgr.state is DomainState.IDLE
        assert snapshot(world, g.mgr) == before
    assert g.mgr.check() is DomainState.STARTED


def test_a_superseded_daemon_cannot_start_a_migration(workdir: str, host: Host) -> None:
    """Once a second daemon attached, the first's prepare_migrate is refused as superseded,
    and neither manager nor supervisor moves."""
    (disk,) = make_disks(workdir, "superseded.img")
    g = host.start("superseded", [disk])
    first = g.mgr
    host.restart_daemon()  # the second daemon, on the same run directory
    second = host.attach(g)
    before = (first.state, first.history, second.state, second.history)
    with pytest.raises(BackendError, match="superseded"):
        first.prepare_migrate("qemu+tcp://elsewhere/system")
    assert (first.state, first.history, second.state, second.history) == before
    info = wire.call(rundir.socket_path(host.run_dir, str(first._launch)), {"op": "hello"}, 5)
    assert (info["state"], info["migration"], info["gen"]) == ("running", None, 2)


# -- the lockspace ------------------------------------------------------------------------------


def _modes(top: str) -> dict[str, int]:
    found = {}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):  # a symlink's own mode means nothing
                found[os.path.relpath(path, top)] = stat.S_IMODE(st.st_mode)
    return found


def test_made_writable_by_no_one_else_whatever_the_umask(workdir: str) -> None:
    """Under umask 0: the lockspace, the run directory, their missing parents, the lease files,
    the records and the socket are writable by their owner only."""
    top = os.path.join(workdir, "deep")
    old = os.umask(0)
    try:
        host = Host(
            lockspace=os.path.join(top, "state", "lockfsm", "ls"),
            run_dir=os.path.join(top, "run", "lockfsm"),
        )
        try:
            (disk,) = make_disks(workdir, "umask.img")
            g = host.start("umask", [disk])
            g.mgr.acquire_resource(DISK, make_disks(workdir, "umask2.img")[0])
            modes = _modes(top)
        finally:
            host.cleanup()
    finally:
        os.umask(old)
    assert len([p for p in modes if p.startswith("state/lockfsm/ls/")]) >= 2  # and the domain's
    assert any(p.endswith(".json") for p in modes) and any(p.endswith(".sock") for p in modes)
    writable = {p: oct(m) for p, m in modes.items() if m & 0o022}
    assert writable == {}
    assert modes["state/lockfsm/ls"] == modes["run/lockfsm"] == 0o700


def test_a_lockspace_someone_else_could_swap_is_refused(workdir: str) -> None:
    parent = os.path.join(workdir, "theirs")
    os.mkdir(parent)
    os.chown(parent, 65534, 65534)
    with pytest.raises(InvalidArgument, match="belongs to uid 65534"):
        lockfsm.load_driver("fcntl", {"lockspace_dir": os.path.join(parent, "ls")})
    assert os.listdir(parent) == []
    sticky = os.path.join(workdir, "sticky")
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    lockfsm.load_driver("fcntl", {"lockspace_dir": os.path.join(sticky, "ls")})


def _plant(kind: str, path: str, workdir: str) -> Callable[[], Any]:
    """Put a foreign entry at lease file ``path``; return what must not change about it."""
    target = os.path.join(workdir, f"precious-{kind}")
    with open(target, "w") as f:
        f.write("precious")
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        with open(path, "w") as f:
            f.write("a lease from somewhere else\n" if kind == "non-empty" else "")
        os.chmod(path, 0o660 if kind == "group-writable" else 0o600)
        if kind == "another owner's":
            os.chown(path, 65534, 65534)
    os.utime(target, ns=(10**9, 10**9))

    def looks() -> Any:
        st = os.lstat(path)
        content = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                content = f.read()
        with open(target, "rb") as f:
            precious = (f.read(), os.stat(target).st_mtime_ns)
        return (st.st_ino, st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, content, precious)

    return looks


FOREIGN = {
    "symlink": "cannot be opened",
    "directory": "cannot be opened",
    "fifo": "not a regular file",
    "another owner's": "belongs to uid 65534",
    "group-writable": "writable by others (mode 660)",
    "non-empty": "holds 28 bytes",
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_a_foreign_lease_file_is_reported_not_used(host: Host, workdir: str, kind: str) -> None:
    """At start and at hot-plug: BackendError naming the lease file and why; the entry (and
    what a symlink points to) exactly as it was; nothing locked, nothing left in the run
    directory; a running guest keeps what it held."""
    disk, other = make_disks(workdir, "foreign.img", "fine.img")
    lease = os.path.join(host.lockspace, hashlib.sha256(disk.encode()).hexdigest())
    looks = _plant(kind, lease, workdir)
    before = looks()
    with pytest.raises(BackendError) as err:
        host.start("foreign", [disk])
    assert lease in str(err.value) and FOREIGN[kind] in str(err.value), str(err.value)
    assert looks() == before
    assert lockspace_locks(host.lockspace) == {}
    assert os.listdir(host.run_dir) == []

    g = host.start("fine", [other])
    held = lockspace_locks(host.lockspace)
    with pytest.raises(BackendError) as err:
        g.mgr.acquire_resource(DISK, disk)
    assert lease in str(err.value) and FOREIGN[kind] in str(err.value)
    assert looks() == before
    assert lockspace_locks(host.lockspace) == held
    assert [r.path for r in g.mgr.resources] == [other]


def _lease_files(lockspace: str) -> dict[str, tuple[int, int, int, int]]:
    found = {}
    for name in os.listdir(lockspace):
        st = os.lstat(os.path.join(lockspace, name))
        found[name] = (st.st_ino, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return found


def test_lease_files_are_never_written_truncated_or_replaced(lockspace: str, workdir: str) -> None:
    """Start, hot-plug, unplug, prepare, incoming, handoff, shutdown: each lease file keeps its
    inode, its size (0), its mode (0600) and its mtime from the moment it exists."""
    disk, spare = make_disks(workdir, "kept.img", "kept-spare.img")
    link = os.path.join(workdir, "kept-link.img")
    os.symlink(spare, link)
    existing = os.path.join(lockspace, hashlib.sha256(disk.encode()).hexdigest())
    open(existing, "w").close()
    os.chmod(existing, 0o600)
    os.utime(existing, ns=(10**9, 10**9))
    seen: dict[str, tuple[int, int, int, int]] = {}

    def unchanged() -> None:
        now = _lease_files(lockspace)
        for name, was in seen.items():
            assert now.get(name) == was, name
        for name, (_, size, mode, _) in now.items():
            assert (size, mode) == (0, 0o600), name
        seen.update(now)

    pair = Pair(lockspace)
    try:
        unchanged()
        g = pair.start("kept", [disk])
        unchanged()
        g.mgr.acquire_resource(DISK, link)
        unchanged()
        g.mgr.release_resource(DISK, link)
        unchanged()
        pair.prepare()
        unchanged()
        target: Guest = pair.incoming_start()
        unchanged()
        pair.migrate()
        unchanged()
        target.mgr.shutdown()
        g.mgr.shutdown()
        unchanged()
    finally:
        pair.cleanup()
    sha = [hashlib.sha256(p.encode()).hexdigest() for p in (disk, link, spare)]
    assert set(sha) <= set(seen)  # the disk's, the link's and its canonical path's (and any other)
    assert seen[os.path.basename(existing)][3] == 10**9
