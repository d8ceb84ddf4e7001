"""Who may talk to a supervisor, and what a hostile or confused peer on its control socket can do:
nothing.  Real supervisors, real clients (another uid through setpriv), the kernel's locks.

After every refused message the supervisor must be up, and its state (hello), its record file
(same inode, same bytes), the run directory, the lockspace's locks and the supervisor's own lock
ranges must be exactly as before (S5).  tests/test_supervisor.py has the basic malformed lines
(garbage, truncated, not an object, wrong types); this file adds peers of other uids, messages at
and over the size bound, errors that must stay small, out-of-order requests in every supervisor
state a daemon meets, and many or stuck connections.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest

import lockfsm
from lockfsm.embed.standin import Guest, Host, Pair, make_disks, short_tmpdir
from lockfsm.protocol import rundir, wire
from lockfsm.protocol.kernel import alive, fd_locks
from tests.support.helpers import lockspace_locks, wait_until

TIMEOUT = 10.0
NOBODY = 65534

# A client in its own process (run as another uid): connect, send, print what happened.
CLIENT = r"""
import json, socket, sys
path, data = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(path)
except OSError as e:
    print(json.dumps({"connect": e.strerror}))
    sys.exit(0)
buf = b""
try:  # the supervisor may answer and close before the request is even read
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
except OSError:
    pass
try:
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
except OSError:
    pass
print(json.dumps({"connect": "ok", "reply": buf.split(b"\n")[0].decode()}))
"""


def as_user(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def as_uid(uid: int, path: str, request: dict[str, Any]) -> dict[str, Any]:
    """Send ``request`` to the socket at ``path`` from a process of ``uid`` (no groups)."""
    out = subprocess.run(
        [*as_user(uid), sys.executable, "-c", CLIENT, path, wire.encode(request).hex()],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if result.get("reply"):
        result["reply"] = json.loads(result["reply"])
    return result


def needs_setpriv() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running a client as another uid needs root and setpriv")


def sock_of(g: Guest) -> str:
    launch = rundir.pointed(g.host.run_dir, g.uuid)
    assert launch is not None
    return rundir.socket_path(g.host.run_dir, launch)


def snapshot(run_dir: str, launch: str, lockspace: str, pid: int, guest: int) -> dict[str, Any]:
    """What a refused message must leave exactly as it was."""
    info = wire.call(rundir.socket_path(run_dir, launch), {"op": "hello"}, TIMEOUT)
    info.pop("since")  # the moment of the reply
    record = rundir.record_path(run_dir, launch)
    st = os.stat(record)
    with open(record, "rb") as f:
        content = f.read()
    return {
        "supervisor": info,
        "record": (st.st_ino, st.st_mtime_ns, content),
        "run_dir": sorted(os.listdir(run_dir)),
        "lockspace": lockspace_locks(lockspace),
        "lock ranges": fd_locks(pid),
        "guest alive": alive(guest),
    }


def state_of(g: Guest) -> dict[str, Any]:
    launch = rundir.pointed(g.host.run_dir, g.uuid) or str(g.mgr._launch)
    return snapshot(g.host.run_dir, launch, g.host.lockspace, g.supervisor_pid, g.pid or 0)


def exchange(path: str, data: bytes, close_write: bool = True) -> list[dict[str, Any]]:
    """Send ``data`` on one connection; the replies, until the supervisor closes or goes quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        with suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
            if close_write:
                s.shutdown(socket.SHUT_WR)
        out = b""
        with suppress(ConnectionResetError):
            while chunk := s.recv(1 << 16):
                out += chunk
    return [json.loads(line) for line in out.splitlines()]


def refused(g: Guest, data: bytes, *words: str) -> dict[str, Any]:
    """``data`` gets one error reply whose message has every one of ``words``, and changes
    nothing."""
    before = state_of(g)
    replies = exchange(sock_of(g), data)
    assert len(replies) == 1, replies
    reply = replies[0]
    assert reply["ok"] is False, reply
    assert 0 < len(reply["message"]) <= wire.MAX_ERROR
    for word in words:
        assert word in reply["message"], (word, reply["message"])
    assert g.proc.poll() is None, "the supervisor died"
    assert state_of(g) == before
    return reply


@pytest.fixture
def guest(host: Host, workdir: str) -> Guest:
    disk, _ = make_disks(workdir, "hostile.img", "spare.img")
    return host.start("hostile", [disk])


def spare(g: Guest) -> str:
    return os.path.join(os.path.dirname(g.disks[0]), "spare.img")


def hotplug_resource(g: Guest, path: str) -> dict[str, Any]:
    """The resource a daemon would send to hot-plug ``path``."""
    leases = g.host.driver.backend.leases("disk", path, path, False)
    return {"type": "disk", "path": path, "canonical": path, "flags": 0, "leases": leases}


# -- peer credentials -------------------------------------------------------------------------


def test_another_uid_cannot_even_connect(guest: Guest) -> None:
    """The socket is 0600 in a 0700 run directory: another uid's connect is refused by the
    kernel, and nothing changes."""
    needs_setpriv()
    before = state_of(guest)
    result = as_uid(NOBODY, sock_of(guest), {"op": "shutdown", "gen": 1, "grace": 0.0})
    assert result == {"connect": "Permission denied"}
    assert state_of(guest) == before


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "hello"},
        {"op": "attach"},
        {"op": "shutdown", "gen": 1, "grace": 0.0},
        {"op": "lease_lost", "reason": "forged by another uid"},
        {"op": "prepare", "gen": 1, "migration": "0123456789abcdef", "hosturi": "x://y"},
    ],
    ids=lambda r: r["op"],
)
def test_peer_credentials_refuse_another_uid(guest: Guest, request_: dict[str, Any]) -> None:
    """Even where the socket's mode lets another uid connect, the supervisor reads the peer's
    credentials (SO_PEERCRED) and refuses it with an error that names its uid: no read, no
    attach (the generation stays), no forged lease loss, no shutdown."""
    needs_setpriv()
    path = sock_of(guest)
    before = state_of(guest)
    os.chmod(guest.host.run_dir, 0o711)
    os.chmod(path, 0o666)
    try:
        result = as_uid(NOBODY, path, request_)
    finally:
        with suppress(FileNotFoundError):
            os.chmod(path, 0o600)
        os.chmod(guest.host.run_dir, 0o700)
    assert result["connect"] == "ok"
    reply = result["reply"]
    assert reply["ok"] is False and str(NOBODY) in reply["message"], reply
    assert "state" not in reply and "resources" not in reply  # nothing read either
    assert state_of(guest) == before


# A supervisor of another user (65534), in its own directories: its owner and root may talk to it.
@pytest.fixture
def nobodys_supervisor(host: Host, workdir: str) -> Iterator[tuple[str, str, str, int, int]]:
    needs_setpriv()
    (disk,) = make_disks(workdir, "nobody.img")
    top = short_tmpdir("lfn")
    os.chmod(top, 0o755)
    run_dir, lockspace = os.path.join(top, "run"), os.path.join(top, "ls")
    for d in (run_dir, lockspace):
        os.mkdir(d, 0o700)
        os.chown(d, NOBODY, NOBODY)
    mgr = host.manager("nobodys", "5c1d8a50-6a52-4a71-9d36-3f4e4ab1c2d3", [disk])
    args = mgr.supervisor_args
    spec = json.loads(args[args.index("--launch") + 1])
    spec["config"].update(run_dir=run_dir, lockspace_dir=lockspace)
    args[args.index("--launch") + 1] = json.dumps(spec)
    # The work tree may sit where uid 65534 cannot read (a private checkout): it runs a copy of
    # the package, on the bare interpreter (the supervisor needs nothing but the stdlib).
    code = os.path.join(top, "code")
    shutil.copytree(
        os.path.dirname(lockfsm.__file__),
        os.path.join(code, "lockfsm"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for where, dirs, files in os.walk(code):
        for name in [*dirs, *files]:
            os.chmod(os.path.join(where, name), 0o755 if name in dirs else 0o644)
    os.chmod(code, 0o755)
    python = [sys.executable, "-S", "-m", "lockfsm.supervisor"]
    if args[:2] == ["-m", "lockfsm.supervisor"]:
        args = args[2:]
    proc = subprocess.Popen(
        [*as_user(NOBODY), *python, *args, "--", "sleep", "1000"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": code},
    )
    host.procs.append(proc)
    path = rundir.socket_path(run_dir, spec["launch"])
    wait_until(
        lambda: os.path.exists(path) and os.path.exists(rundir.pointer_path(run_dir, spec["uuid"])),
        what="nobody's supervisor",
    )
    info = wire.call(path, {"op": "hello"}, TIMEOUT)
    yield run_dir, spec["launch"], lockspace, proc.pid, int(info["guest_pid"])
    proc.kill()
    proc.wait(TIMEOUT)
    shutil.rmtree(top, ignore_errors=True)


def test_owner_and_root_may_talk_third_uid_may_not(
    nobodys_supervisor: tuple[str, str, str, int, int],
) -> None:
    """A supervisor running as uid 65534 answers its own uid and root, and refuses uid 65533,
    naming it, with nothing changed."""
    run_dir, launch, lockspace, pid, guest = nobodys_supervisor
    path = rundir.socket_path(run_dir, launch)
    before = snapshot(run_dir, launch, lockspace, pid, guest)
    assert before["supervisor"]["state"] == "running"
    assert as_uid(NOBODY, path, {"op": "hello"})["reply"]["ok"] is True
    assert wire.call(path, {"op": "hello"}, TIMEOUT)["ok"] is True  # root
    os.chmod(run_dir, 0o711)
    os.chmod(path, 0o666)
    third = as_uid(NOBODY - 1, path, {"op": "shutdown", "gen": 1, "grace": 0.0})
    assert third["reply"]["ok"] is False and str(NOBODY - 1) in third["reply"]["message"]
    os.chmod(path, 0o600)
    os.chmod(run_dir, 0o700)
    assert snapshot(run_dir, launch, lockspace, pid, guest) == before


# -- sizes ------------------------------------------------------------------------------------


def test_a_message_at_the_bound_is_served_one_byte_more_is_refused(guest: Guest) -> None:
    """MAX_MESSAGE bytes with the newline is the largest request."""
    hello = b'{"op":"hello"}'
    at = b" " * (wire.MAX_MESSAGE - len(hello) - 1) + hello + b"\n"
    assert len(at) == wire.MAX_MESSAGE
    (reply,) = exchange(sock_of(guest), at)
    assert reply["ok"] is True
    refused(guest, b" " + at, f"{wire.MAX_MESSAGE + 1} bytes", str(wire.MAX_MESSAGE))


@pytest.mark.parametrize(
    "data",
    [
        b'{"op": "' + "\u0080".encode() * 30000 + b'"}\n',
        b'{"op": "release", "gen": 1, "resource": {"path": "' + b"\\u0001" * 9000 + b'"}}\n',
        b'{"op": "hello", "' + "\u00e9".encode() * 30000 + b'": 1}\n',
        b'{"op": "prepare", "gen": 1, "migration": "'
        + b"\\u0085" * 10000
        + b'", "hosturi": "x"}\n',
    ],
    ids=["long op", "long resource", "long field name", "long migration id"],
)
def test_an_error_about_a_huge_value_is_a_short_reply(guest: Guest, data: bytes) -> None:
    """The error names the value, cut short: the reply is sent, and the supervisor lives (an
    error quoting the whole value was once bigger than a message may be, and raising while
    replying killed the supervisor and its guest)."""
    reply = refused(guest, data)
    assert len(wire.encode(reply)) < 4096


def test_a_start_with_long_paths_is_answered(host: Host, workdir: str) -> None:
    """A guest whose disks have long paths (its hello is over 64 KiB) is started and answered:
    replies have their own bound (it used to kill the supervisor at the first get_child)."""
    deep = workdir
    for i in range(15):
        deep = os.path.join(deep, chr(97 + i) * 250)
    os.makedirs(deep)
    disks = make_disks(deep, *(f"{i}.img" for i in range(12)))
    g = host.start("long-paths", disks)
    info = wire.call(sock_of(g), {"op": "hello"}, TIMEOUT)
    assert len(wire.encode(info)) > wire.MAX_MESSAGE
    assert sorted(r["path"] for r in info["resources"] if r["type"] == "disk") == sorted(disks)
    g.mgr.shutdown()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"op": "hello", "op": "shutdown"}\n', ["'op'", "more than once"]),
        (b'{"op": "shutdown", "gen": 1, "grace": 1' + b"0" * 400 + b"}\n", ["grace"]),
        (b'{"op": "shutdown", "gen": 1, "timeout": 1.0}\n', ["grace", "timeout"]),
        (b'{"op": "take_over", "gen": 1, "grace": 1.0}\n', ["timeout", "grace"]),
        (b'{"op": "hand_off"}\n', ["gen"]),
        (
            b'{"op": "prepare", "gen": 1, "migration": "0123456789abcdef", '
            b'"hosturi": "a\\u0007"}\n',
            ["hosturi", "control character"],
        ),
        (b'{"op": "lease_lost", "reason": ""}\n', ["reason"]),
    ],
    ids=[
        "field twice",
        "grace a huge int",
        "wrong field",
        "field of another op",
        "missing gen",
        "control character",
        "empty reason",
    ],
)
def test_wrong_fields_are_named(guest: Guest, data: bytes, words: list[str]) -> None:
    refused(guest, data, *words)


# -- out of order -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "fields", "words"),
    [
        ("take_over", {"timeout": 1.0}, ["'take_over'", "'running'"]),
        ("hand_off", {}, ["'hand_off'", "'running'"]),
        ("resume", {}, ["'resume'", "'running'"]),
        ("cancel", {}, ["'cancel'", "'running'"]),
        ("release", {"resource": "spare"}, ["spare.img", "not held"]),
        ("acquire", {"resource": "held"}, ["hostile.img", "already held"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_out_of_order_on_a_running_supervisor(
    guest: Guest, op: str, fields: dict[str, Any], words: list[str]
) -> None:
    """Migration steps before prepare, a take-over on a supervisor that is not incoming,
    hot-plug of what is (not) held: refused, naming the call and the state."""
    resources = {
        "spare": hotplug_resource(guest, spare(guest)),
        "held": hotplug_resource(guest, guest.disks[0]),
    }
    if "resource" in fields:
        fields = {"resource": resources[fields["resource"]]}
    refused(guest, wire.encode({"op": op, "gen": 1, **fields}), *words)


def test_out_of_order_on_a_migrating_source(guest: Guest) -> None:
    """While migrating out: no second prepare, no hot-plug either way, no take-over."""
    guest.mgr.prepare_migrate("qemu+tcp://target/system")
    gen = guest.mgr._gen
    cases = [
        (
            {"op": "prepare", "migration": "0123456789abcdef", "hosturi": "x://y"},
            ["'prepare'", "'migrating_out'"],
        ),
        (
            {"op": "acquire", "resource": hotplug_resource(guest, spare(guest))},
            ["'acquire'", "'migrating_out'"],
        ),
        (
            {"op": "release", "resource": hotplug_resource(guest, guest.disks[0])},
            ["'release'", "'migrating_out'"],
        ),
        ({"op": "take_over", "timeout": 1.0}, ["'take_over'", "'migrating_out'"]),
    ]
    for request, words in cases:
        refused(guest, wire.encode({**request, "gen": gen}), *words)


def test_out_of_order_on_an_incoming_target(lockspace: str, workdir: str) -> None:
    """An incoming target neither hands off, prepares, resumes nor hot-plugs; a second take-over
    while one waits is refused; and the source's controller cannot drive the target."""
    pair = Pair(lockspace)
    try:
        (disk,) = make_disks(workdir, "migrating.img")
        pair.start("migrating", [disk])
        pair.prepare()
        target = pair.incoming_start()
        gen = target.mgr._gen
        cases = [
            ({"op": "hand_off"}, ["'hand_off'", "'incoming'"]),
            (
                {"op": "prepare", "migration": "0123456789abcdef", "hosturi": "x://y"},
                ["'prepare'", "'incoming'"],
            ),
            ({"op": "resume"}, ["'resume'", "'incoming'"]),
            (
                {
                    "op": "acquire",
                    "resource": hotplug_resource(target, os.path.join(workdir, "migrating.img")),
                },
                ["'acquire'", "'incoming'"],
            ),
            ({"op": "shutdown", "grace": 0.0, "gen": gen + 1}, ["generation"]),
        ]
        for request, words in cases:
            refused(target, wire.encode({"gen": gen, **request}), *words)
        # A take-over that waits (the source still holds the lease), then a second one.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
            first.settimeout(TIMEOUT)
            first.connect(sock_of(target))
            first.sendall(wire.encode({"op": "take_over", "gen": gen, "timeout": 3.0}))
            time.sleep(0.1)
            refused(
                target,
                wire.encode({"op": "take_over", "gen": gen, "timeout": 1.0}),
                "already under way",
            )
    finally:
        pair.cleanup()


def test_a_stale_controller_after_attach_is_refused(host: Host, guest: Guest) -> None:
    """After a second daemon attaches, the first's generation is refused for every op that
    takes one, naming both generations; the state, record and locks stay."""
    host.attach(guest)
    for request in (
        {"op": "acquire", "resource": hotplug_resource(guest, spare(guest))},
        {"op": "release", "resource": hotplug_resource(guest, guest.disks[0])},
        {"op": "prepare", "migration": "0123456789abcdef", "hosturi": "x://y"},
        {"op": "shutdown", "grace": 0.0},
        {"op": "hand_off"},
        {"op": "cancel"},
        {"op": "resume"},
        {"op": "take_over", "timeout": 1.0},
    ):
        refused(guest, wire.encode({**request, "gen": 1}), "generation 1", "generation 2")


# -- connections --------------------------------------------------------------------------------


def test_a_partial_line_then_close_changes_nothing(guest: Guest) -> None:
    before = state_of(guest)
    for data in (b'{"op": "shutdown", "gen": 1, "grace": 0', b'{"op": "hello"}', b"\xff" * 1000):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sock_of(guest))
            s.sendall(data)
    wait_until(lambda: state_of(guest) == before, what="the supervisor unchanged")
    assert guest.proc.poll() is None


def test_a_truncated_request_is_answered(guest: Guest) -> None:
    refused(guest, b'{"op": "shutdown", "gen": 1, "grace": 0', "truncated")


def test_many_connections_at_once(guest: Guest) -> None:
    """200 clients at once, half of them hostile (garbage, oversized, stale, idle): every
    well-formed hello is answered, every bad line refused, and nothing changes."""
    path = sock_of(guest)
    before = state_of(guest)
    bad = [
        b"garbage\n",
        b"x" * 70000 + b"\n",
        wire.encode({"op": "shutdown", "gen": 0, "grace": 0.0}),
        b'{"op": "hello"',
    ]
    results: list[Any] = []
    idle: list[socket.socket] = []

    def client(i: int) -> None:
        try:
            data = wire.encode({"op": "hello"}) if i % 2 else bad[(i // 2) % len(bad)]
            results.append((i, exchange(path, data)))
        except Exception as e:  # reported by the assertion below
            results.append((i, e))

    for _ in range(20):  # connected and silent the whole time
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        idle.append(s)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in idle:
        s.close()
    assert len(results) == 200
    for i, replies in results:
        assert not isinstance(replies, Exception), (i, replies)
        if i % 2:
            assert [r["ok"] for r in replies] == [True], (i, replies)
        else:
            assert all(r["ok"] is False for r in replies), (i, replies)
    assert state_of(guest) == before


def test_running_out_of_descriptors_does_not_kill_the_supervisor(host: Host, workdir: str) -> None:
    (disk,) = make_disks(workdir, "fds.img")
    mgr = host.manager("fds", "7d0c4a8e-2f21-4f3b-9b1e-0d5f3c2a1b4e", [disk])
    proc = subprocess.Popen(
        [mgr.supervisor_path, *mgr.supervisor_args, "--", "sleep", "1000"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
    )
    host.procs.append(proc)
    pid = mgr.get_child(timeout=TIMEOUT)
    path = rundir.socket_path(host.run_dir, str(mgr._launch))
    held = []
    with suppress(OSError):
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            held.append(s)
            s.connect(path)
    time.sleep(0.3)
    for s in held:
        s.close()
    time.sleep(0.2)
    assert proc.poll() is None and alive(pid), "the supervisor died, and the guest with it"
    assert wire.call(path, {"op": "hello"}, TIMEOUT)["state"] == "running"


def test_a_peer_that_never_reads_does_not_stall_the_supervisor(guest: Guest) -> None:
    path = sock_of(guest)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as flood:
        flood.connect(path)
        flood.setblocking(False)
        data = wire.encode({"op": "hello"}) * 4000
        with suppress(BlockingIOError):
            while data:
                data = data[flood.send(data) :]
        time.sleep(0.2)
        started = time.monotonic()
        with suppress(TimeoutError):
            wire.call(path, {"op": "hello"}, 3.0)
        assert time.monotonic() - started < 1.0, "another client waited on the stuck one"
