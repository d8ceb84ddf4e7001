"""The lockfsm-supervisor process and its control socket, through the public API, real
processes and the kernel's view of their locks: leases before the guest, the guest dies with its
supervisor, leases outlive a daemon crash, and a hostile or stale peer on the socket changes
nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest

from lockfsm import BackendError, DomainState, LeaseConflict, NewFlags, ResourceType
from lockfsm.embed.standin import Guest, Host, make_disks
from lockfsm.protocol import rundir, wire
from lockfsm.protocol.kernel import alive
from lockfsm.supervisor.process import EXIT_REFUSED
from tests.support.helpers import (
    inodes_locked_by,
    lease_inode,
    leases_of,
    locked_inodes,
    wait_until,
)

DISK = ResourceType.DISK
TIMEOUT = 10.0

# A virt daemon in its own process: starts one guest, says who runs it, then waits to be killed.
DAEMON = r"""
import json, subprocess, sys, time
import lockfsm
run_dir, lockspace, uuid, disk = sys.argv[1:5]
driver = lockfsm.load_driver(
    "fcntl", {"run_dir": run_dir, "lockspace_dir": lockspace, "shutdown_grace": 2.0}
)
mgr = driver.new_manager()
mgr.set_parameter("uuid", uuid)
mgr.set_parameter("name", "crashing-daemon-guest")
mgr.set_parameter("id", 7)
mgr.register_resource(lockfsm.ResourceType.DISK, disk)
proc = subprocess.Popen(
    [mgr.supervisor_path, *mgr.supervisor_args, "--", "sleep", "1000"],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
guest = mgr.get_child(timeout=10)
print(json.dumps({"supervisor": proc.pid, "guest": guest}), flush=True)
time.sleep(1000)
"""


# -- helpers --------------------------------------------------------------------------------------


def sock_of(g: Guest) -> str:
    launch = rundir.pointed(g.host.run_dir, g.uuid)
    assert launch is not None, f"no dom-{g.uuid} pointer in {g.host.run_dir}"
    return rundir.socket_path(g.host.run_dir, launch)


def lease_inodes(g: Guest) -> set[int]:
    return {lease_inode(g.host.lockspace, key) for key, _ in leases_of(g.mgr)}


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def hello(path: str) -> dict[str, Any]:
    return wire.call(path, {"op": "hello"}, TIMEOUT)


def snapshot(g: Guest) -> dict[str, Any]:
    """What must not change when a request is refused: the supervisor's view and the kernel's."""
    info = hello(sock_of(g))
    return {
        "state": info["state"],
        "guest_pid": info["guest_pid"],
        "gen": info["gen"],
        "resources": info["resources"],
        "status": info["status"],
        "error": info["error"],
        "locks": inodes_locked_by(g.supervisor_pid),
        "guest_alive": alive(g.pid or 0),
    }


def raw(path: str, data: bytes, close_write: bool = True) -> bytes:
    """Send raw bytes on the control socket; return the reply line, or b'' if it closed first."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        with suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
            if close_write:
                s.shutdown(socket.SHUT_WR)
        buf = b""
        while b"\n" not in buf:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0] if b"\n" in buf else b""


def resource(path: str) -> dict[str, Any]:
    key = hashlib.sha256(path.encode()).hexdigest()
    leases = [{"key": key, "mode": "exclusive"}]
    return {"type": "disk", "path": path, "canonical": path, "flags": 0, "leases": leases}


def path_before(directory: str, stem: str, other: str) -> str:
    """A path in ``directory`` whose lease key sorts before that of ``other``."""
    key = hashlib.sha256(other.encode()).hexdigest()
    for i in range(256):
        path = os.path.join(directory, f"{stem}{i}.img")
        if hashlib.sha256(path.encode()).hexdigest() < key:
            return path
    raise AssertionError(f"no name sorts before {other}")  # pragma: no cover


def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    return proc.wait(TIMEOUT)


# -- start, refusal, deaths -----------------------------------------------------------------------


def test_start_holds_leases_before_guest(host: Host, workdir: str) -> None:
    """The guest runs as the supervisor's child; every lease was locked before it started and
    stays locked by the supervisor (and the guest's inherited descriptors) while it runs;
    shutdown stops it and frees them."""
    disks = make_disks(workdir, "a.img", "b.img")
    seen = os.path.join(workdir, "locks-at-guest-start")
    guest = ["sh", "-c", f"cat /proc/locks > {seen}; exec sleep 1000"]
    g = host.start("starter", disks, guest=guest)
    assert g.pid is not None and alive(g.pid)
    assert parent_of(g.pid) == g.supervisor_pid
    assert g.mgr.state is DomainState.STARTED
    wait_until(lambda: comm(g.pid or 0) == "sleep", TIMEOUT, "the guest's exec of sleep")

    inodes = lease_inodes(g)
    assert len(inodes) == 3  # the two disks' and the guest's own lease on its uuid
    with open(seen) as f:
        granted = [line.split() for line in f if "->" not in line]
    at_start = {int(parts[5].rsplit(":", 1)[1]): parts[3] for parts in granted}
    assert all(at_start.get(ino) == "WRITE" for ino in inodes), at_start
    assert inodes_locked_by(g.supervisor_pid) == inodes
    assert inodes <= inodes_locked_by(g.pid)

    g.mgr.shutdown()
    assert g.mgr.state is DomainState.STOPPED
    assert wait_exit(g.proc) == 128 + signal.SIGTERM
    assert not alive(g.pid)
    assert not inodes & set(locked_inodes())


def test_control_socket_is_0600(host: Host, workdir: str) -> None:
    """The control socket is a socket file of mode 0600."""
    (disk,) = make_disks(workdir, "sock.img")
    g = host.start("sock", [disk])
    st = os.lstat(sock_of(g))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_second_start_is_refused(host: Host, other_host: Host, workdir: str) -> None:
    """A start of a disk held by another host's guest raises LeaseConflict naming the disk; its
    supervisor exits with EXIT_REFUSED having run no guest, and gives back the leases it took
    before the conflict."""
    (held,) = make_disks(workdir, "held.img")
    # Leases are taken in key order: the free disk's lease comes first, so is taken before the
    # conflict.
    (free,) = make_disks(workdir, os.path.basename(path_before(workdir, "free", held)))
    first = host.start("first", [held])
    before = inodes_locked_by(first.supervisor_pid)
    marker = os.path.join(workdir, "guest-ran")

    with pytest.raises(LeaseConflict) as err:
        other_host.start(
            "second", [free, held], guest=["sh", "-c", f"touch {marker}; exec sleep 1000"]
        )
    assert held in str(err.value)
    assert held in err.value.resource
    refused = other_host.procs[-1]
    assert refused.returncode == EXIT_REFUSED
    assert not os.path.exists(marker)
    assert alive(first.pid or 0)
    assert inodes_locked_by(first.supervisor_pid) == before
    third = other_host.start("third", [free])  # the lease taken before the conflict was given back
    assert alive(third.pid or 0)


def test_supervisor_death_kills_guest_and_frees(host: Host, other_host: Host, workdir: str) -> None:
    """SIGKILL of the supervisor kills the guest (PR_SET_PDEATHSIG) and its leases come free;
    another host can then start the disk, and shutdown of the old manager succeeds."""
    (disk,) = make_disks(workdir, "pdeath.img")
    g = host.start("pdeath", [disk])
    inodes = lease_inodes(g)
    os.kill(g.supervisor_pid, signal.SIGKILL)
    assert wait_exit(g.proc) == -signal.SIGKILL
    try:
        wait_until(lambda: not alive(g.pid or 0), 5, "the guest to die with its supervisor")
    finally:
        if alive(g.pid or 0):  # an orphan the fixture would not find
            os.kill(g.pid or 0, signal.SIGKILL)
    wait_until(lambda: not inodes & set(locked_inodes()), TIMEOUT, "the leases to come free")
    again = other_host.start("pdeath-again", [disk])
    assert alive(again.pid or 0)
    g.mgr.shutdown()
    assert g.mgr.state is DomainState.STOPPED


def test_guest_death_releases_and_exits_137(host: Host, other_host: Host, workdir: str) -> None:
    """SIGKILL of the guest: the supervisor releases every lease and exits with 128 + 9."""
    (disk,) = make_disks(workdir, "gdeath.img")
    g = host.start("gdeath", [disk])
    inodes = lease_inodes(g)
    os.kill(g.pid or 0, signal.SIGKILL)
    assert wait_exit(g.proc) == 128 + signal.SIGKILL
    assert not inodes & set(locked_inodes())
    assert alive(other_host.start("gdeath-again", [disk]).pid or 0)
    g.mgr.shutdown()
    assert g.mgr.state is DomainState.STOPPED


def test_shutdown_after_guest_exited(host: Host, workdir: str) -> None:
    """shutdown() succeeds when the guest already exited by itself (and its supervisor with it,
    with the guest's status)."""
    (disk,) = make_disks(workdir, "exits.img")
    trigger = os.path.join(workdir, "exit-now")
    guest = ["sh", "-c", f"while [ ! -e {trigger} ]; do sleep 0.01; done; exit 3"]
    g = host.start("exits", [disk], guest=guest)
    inodes = lease_inodes(g)
    open(trigger, "w").close()
    assert wait_exit(g.proc) == 3
    assert not inodes & set(locked_inodes())
    g.mgr.shutdown()
    assert g.mgr.state is DomainState.STOPPED


def test_sigterm_stops_guest_and_releases(host: Host, other_host: Host, workdir: str) -> None:
    """SIGTERM to the supervisor stops the guest and releases every lease."""
    (disk,) = make_disks(workdir, "term.img")
    g = host.start("term", [disk])
    inodes = lease_inodes(g)
    os.kill(g.supervisor_pid, signal.SIGTERM)
    assert wait_exit(g.proc) == 128 + signal.SIGTERM
    assert not alive(g.pid or 0)
    assert not inodes & set(locked_inodes())
    assert alive(other_host.start("term-again", [disk]).pid or 0)


# -- daemon restart (S4) --------------------------------------------------------------------------


def test_daemon_crash_then_attach(host: Host, other_host: Host, workdir: str) -> None:
    """S4: SIGKILL of the daemon's process group drops no lease at any instant; an ATTACH
    manager finds the same guest and can hot-plug and shut it down."""
    disk, extra = make_disks(workdir, "daemon.img", "extra.img")
    uuid = str(uuidlib.uuid4())
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, host.run_dir, host.lockspace, uuid, disk],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    sup = guest = 0
    try:
        assert daemon.stdout is not None
        started = json.loads(daemon.stdout.readline() or b"null")
        assert started, f"the daemon failed (status {daemon.wait(TIMEOUT)})"
        sup, guest = started["supervisor"], started["guest"]
        held = inodes_locked_by(sup)
        assert len(held) == 2  # the disk's lease and the guest's own (domain_lease)

        samples: list[set[int]] = []
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.001):
                samples.append(inodes_locked_by(sup))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            os.killpg(daemon.pid, signal.SIGKILL)  # the daemon and its whole process group
            daemon.wait(TIMEOUT)
            assert alive(sup) and alive(guest)
            mgr = host.manager("crashing-daemon-guest", uuid, flags=NewFlags.ATTACH, id=7)
            assert mgr.get_child(timeout=TIMEOUT) == guest
        finally:
            done.set()
            watcher.join(TIMEOUT)
        assert samples and all(s == held for s in samples)
        assert mgr.state is DomainState.STARTED
        assert [r.path for r in mgr.resources] == [disk]

        mgr.acquire_resource(DISK, extra)
        assert len(inodes_locked_by(sup)) == 3
        with pytest.raises(LeaseConflict):
            other_host.start("thief", [extra])
        mgr.release_resource(DISK, extra)
        assert inodes_locked_by(sup) == held
        mgr.shutdown()
        assert mgr.state is DomainState.STOPPED
        wait_until(lambda: not alive(sup), TIMEOUT, "the supervisor to exit")
        assert not alive(guest)
        assert alive(other_host.start("after", [disk]).pid or 0)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait(TIMEOUT)
        if daemon.stdout is not None:
            daemon.stdout.close()
        for pid in (sup, guest):
            if pid and alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# -- hot-plug -------------------------------------------------------------------------------------


def test_hotplug_round_trip(host: Host, other_host: Host, workdir: str) -> None:
    """Hot-plug of a disk held elsewhere raises LeaseConflict and changes nothing (not even when
    one of its two leases was free); a free disk is taken, excludes others, and is given back."""
    mine, theirs, spare = make_disks(workdir, "mine.img", "theirs.img", "spare.img")
    alias = path_before(workdir, "alias", theirs)  # its own lease is taken before the conflict
    os.symlink(theirs, alias)
    g = host.start("hot", [mine])
    other_host.start("holder", [theirs])
    before = snapshot(g)
    state, resources, history = g.mgr.state, g.mgr.resources, g.mgr.moves

    for path in (theirs, alias):
        with pytest.raises(LeaseConflict) as err:
            g.mgr.acquire_resource(DISK, path)
        assert path in err.value.resource
        assert (g.mgr.state, g.mgr.resources, g.mgr.moves) == (state, resources, history)
        assert snapshot(g) == before

    g.mgr.acquire_resource(DISK, spare)
    key = hashlib.sha256(spare.encode()).hexdigest()
    assert inodes_locked_by(g.supervisor_pid) == before["locks"] | {
        lease_inode(host.lockspace, key)
    }
    with pytest.raises(LeaseConflict):
        other_host.start("thief", [spare])
    g.mgr.release_resource(DISK, spare)
    assert snapshot(g) == before
    assert g.mgr.resources == resources
    assert alive(other_host.start("taker", [spare]).pid or 0)


# -- who may talk to the supervisor ---------------------------------------------------------------


def test_stale_controller_is_refused(host: Host, workdir: str) -> None:
    """After a second ATTACH, the earlier controllers' requests are refused as superseded and
    change nothing; the newest controller drives the supervisor."""
    disk, extra = make_disks(workdir, "stale.img", "stale-extra.img")
    g = host.start("stale", [disk])
    first = g.mgr
    middle = host.attach(g)
    newest = host.attach(g)
    before = snapshot(g)
    assert before["gen"] == 3

    for stale in (first, middle):
        history = stale.moves
        calls = (
            lambda m=stale: m.acquire_resource(DISK, extra),
            lambda m=stale: m.release_resource(DISK, disk),
            lambda m=stale: m.shutdown(),
        )
        for call in calls:
            with pytest.raises(BackendError, match="superseded"):
                call()
            assert stale.state is DomainState.STARTED
            assert [r.path for r in stale.resources] == [disk]
            assert stale.moves == history
            assert snapshot(g) == before
    request = {"op": "release", "gen": 2, "resource": resource(disk)}
    reply = json.loads(raw(sock_of(g), wire.encode(request)))
    assert reply["ok"] is False and "superseded" in reply["message"]
    assert snapshot(g) == before

    newest.acquire_resource(DISK, extra)
    newest.shutdown()
    assert wait_exit(g.proc) == 128 + signal.SIGTERM


def test_other_uid_is_refused(host: Host, workdir: str) -> None:
    """A peer of another uid gets an error reply and its request is not acted on, even when the
    socket file's mode would let it connect."""
    if os.geteuid() != 0:
        pytest.skip("switching to another uid needs root")
    (disk,) = make_disks(workdir, "uid.img")
    g = host.start("uid", [disk])
    path = sock_of(g)
    before = snapshot(g)
    request = wire.encode({"op": "shutdown", "gen": before["gen"], "grace": 0.0})
    os.chmod(host.run_dir, 0o711)
    os.chmod(path, 0o666)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                os.write(w, raw(path, request))
                code = 0
            except BaseException as e:
                os.write(w, repr(e).encode())
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read()
        _, status = os.waitpid(pid, 0)
    finally:
        with suppress(FileNotFoundError):  # gone if the supervisor wrongly obeyed
            os.chmod(path, 0o600)
        os.chmod(host.run_dir, 0o700)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out.startswith(b"{"), f"no reply for the other uid: {out!r}"
    reply = json.loads(out)
    assert reply["ok"] is False
    assert "65534" in reply["message"]
    assert snapshot(g) == before
    g.mgr.shutdown()  # the rightful controller still can


# -- malformed requests ---------------------------------------------------------------------------

_NESTED = b"[" * 30000 + b"]" * 30000  # deep but under the size limit

BAD_MESSAGES: dict[str, tuple[bytes, bool]] = {
    # id: (bytes sent, whether the write side is closed after them)
    "garbage": (b"garbage\n", False),
    "empty line": (b"\n", False),
    "not utf-8": (b"\xff\xfe{}\n", False),
    "truncated json": (b'{"op": "hel\n', False),
    "truncated, then eof": (b'{"op": "hello"', True),
    "oversized line": (b'{"op":"hello","pad":"' + b"x" * 70000 + b'"}\n', False),
    "oversized, no newline": (b"x" * 100000, False),
    "array": (b"[1, 2]\n", False),
    "string": (b'"hello"\n', False),
    "number": (b"42\n", False),
    "null": (b"null\n", False),
    "deeply nested": (_NESTED + b"\n", False),
    "no op": (b"{}\n", False),
    "unknown op": (b'{"op": "format_disk"}\n', False),
    "op not a string": (b'{"op": 1}\n', False),
    "op a list": (b'{"op": []}\n', False),
    "op an object": (b'{"op": {}}\n', False),
    "extra field": (b'{"op": "hello", "gen": 1}\n', False),
    "missing field": (b'{"op": "shutdown", "gen": 1}\n', False),
    "gen a string": (b'{"op": "shutdown", "gen": "1", "grace": 0.0}\n', False),
    "gen a bool": (b'{"op": "shutdown", "gen": true, "grace": 0.0}\n', False),
    "grace negative": (b'{"op": "shutdown", "gen": 1, "grace": -1}\n', False),
    "grace NaN": (b'{"op": "shutdown", "gen": 1, "grace": NaN}\n', False),
    "grace huge": (b'{"op": "shutdown", "gen": 1, "grace": 1e9}\n', False),
    "resource not an object": (b'{"op": "release", "gen": 1, "resource": "disk"}\n', False),
    "resource fields": (b'{"op": "acquire", "gen": 1, "resource": {"type": "disk"}}\n', False),
}


def _bad_resource_messages() -> dict[str, tuple[bytes, bool]]:
    slash = {**resource("/images/x.img"), "leases": [{"key": "../etc/x", "mode": "exclusive"}]}
    dot = {**resource("/images/x.img"), "leases": [{"key": ".", "mode": "exclusive"}]}
    other = resource("/images/not-held.img")
    cases = {
        "lease key with a slash": ("acquire", slash),
        "lease key naming the lockspace": ("acquire", dot),
        "release of a disk not held": ("release", other),
    }
    return {
        case: (wire.encode({"op": op, "gen": 1, "resource": res}), False)
        for case, (op, res) in cases.items()
    }


BAD_MESSAGES.update(_bad_resource_messages())


@pytest.fixture
def guest(host: Host, workdir: str) -> Iterator[Guest]:
    (disk,) = make_disks(workdir, "target.img")
    yield host.start("target", [disk])


@pytest.mark.parametrize("case", list(BAD_MESSAGES), ids=list(BAD_MESSAGES))
def test_bad_message_changes_nothing(guest: Guest, case: str) -> None:
    """A malformed request gets an {"ok": false} reply or a closed connection; the supervisor
    goes on serving with its state, its leases and its guest unchanged."""
    data, close_write = BAD_MESSAGES[case]
    before = snapshot(guest)
    line = raw(sock_of(guest), data, bool(close_write))
    if line:
        reply = json.loads(line)
        assert reply["ok"] is False
        assert reply["error"] in ("InvalidArgument", "BackendError")
        assert reply["message"]
    try:
        after = snapshot(guest)
    except (ConnectionError, FileNotFoundError):
        status = guest.proc.wait(TIMEOUT)
        assert guest.proc.stderr is not None
        tail = guest.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        pytest.fail(f"the supervisor died (status {status}), killing its guest: {tail}")
    assert after == before
    assert alive(guest.pid or 0)


def test_several_requests_on_one_connection(guest: Guest) -> None:
    """A bad line does not poison the connection: the next line on it is served."""
    path = sock_of(guest)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        s.sendall(b"nonsense\n" + wire.encode({"op": "hello"}))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    first, second = (json.loads(line) for line in data.splitlines())
    assert first["ok"] is False
    assert second["ok"] is True and second["guest_pid"] == guest.pid
