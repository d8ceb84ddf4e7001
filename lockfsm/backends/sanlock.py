"""The ``sanlock`` backend: disk-paxos leases on shared storage, held through a sanlock daemon.

This is the seed's "sync-manager".  Every host runs one sanlock daemon (its ``SANLOCK_RUN_DIR``)
that has joined one lockspace, ``<lease_dir>/__LOCKSPACE__``, with this host's ``host_id``.  A
disk's lease is a sanlock resource named by the first 47 hex digits of the SHA-256 of the disk's
canonical path, in its own 1 MiB lease file
``<lease_dir>/<name>``.  One lease per disk suffices: every lockfsm host names a disk by its
canonical path.

Naming half (the daemon): creates and initialises the lockspace file and the lease files with
``sanlock direct init`` (direct I/O, no daemon needed), and makes this host's daemon join the
lockspace.  Both go through the ``sanlock`` command, not the Python binding: a process talks to
only one sanlock daemon, the one of the first ``SANLOCK_RUN_DIR`` it connected with, and a
daemon (or a test) may drive several.  A file is initialised under a temporary name and linked
into place, so a lease file that exists is always initialised and is never written again.

Holding half (the supervisor, one process per guest): registers once with its host's daemon and
holds every lease through that registered connection.  The guest inherits the connection, so
the leases outlive the supervisor exactly until the guest is dead too (the daemon releases a
client's leases when its connection closes).

With ``libvirt_disk_leases`` on, a disk's leases are libvirt's sanlock driver's
(``lock_manager = "sanlock"``, ``auto_disk_leases = 1``), so that lockfsm hosts and libvirt hosts
protect each other's disks: the lockspace is libvirt's, ``__LIBVIRT__DISKS__`` in the file of that
name in ``lease_dir`` (libvirt's ``disk_lease_dir``), and a disk's lease is named by the lowercase
MD5 hex of its path as given, in the lease file ``<lease_dir>/<md5>``; where the canonical path
differs, the canonical path's lease is taken too (libvirt names a disk only as its domain XML
writes it).  The guest's own lease and explicit leases keep lockfsm's names (47 hex digits: never
an MD5's 32) in the same lockspace.  libvirt creates a lease file in place (exclusive create,
zero-fill, then init) and uses a file that exists at once: a lease file that exists but is not
initialised yet is waited for (INIT_WAIT), never written; ``virt-sanlock-cleanup`` deletes free
lease files (it holds the lease while it deletes): a file deleted between naming and acquiring is
made again by the holder.

Migration is atomic: the source reports the version of each exclusive lease it holds
(``handoff_data``), it travels in the cookie, and the target acquires with that version.  sanlock
refuses the acquire (-240) if anyone took the lease after the source, so there is no window in
which a third host could slip in unnoticed: there is nothing to reserve.

Fencing, honestly: sanlock kills the holding process (the supervisor, and with it the guest by
PR_SET_PDEATHSIG) when this host loses its lockspace.  That is the self-fencing the capability
table claims.  Without a watchdog (``wdmd``; these daemons run ``-w 0``) nothing resets a host
whose sanlock daemon itself is dead or hung: its guests keep running while the other hosts, after
8 x io_timeout + 60 s, consider its leases free.  Host fencing needs the watchdog.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lockfsm.backends import Capabilities, ConfigKey, LeaseView, PollingHolder
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict
from lockfsm.protocol import tables
from lockfsm.protocol.paths import default_state_dir, safe_dir

if TYPE_CHECKING:
    import subprocess

CAPABILITIES = Capabilities(
    per_disk=True,
    shared=True,
    hotplug=True,
    migration=True,
    atomic_handoff=True,  # acquire with the source's lease version
    holder_death_frees=(
        "yes, at once for a dead holder process; a crashed host's leases after 8*io_timeout+60 s"
    ),
    self_fencing=True,  # sanlock kills the holder; host fencing needs a watchdog (not here)
    spans_hosts="shared storage",
)

LOCKSPACE_FILE = "__LOCKSPACE__"
LIBVIRT_LOCKSPACE = "__LIBVIRT__DISKS__"  # libvirt's lockspace name and the name of its file
# Seconds (plus io_timeout) to wait for a lease file another host is still initialising.
INIT_WAIT = 3.0
#: The longest a supervisor waits for a lease file another host is initialising: well within
#: the daemon's request (30 s), so that a hot-plug it gave up on never takes the lease after.
SUPERVISOR_INIT_WAIT = 10.0
#: add_lockspace's answers while another client of the daemon joins (-115) or leaves (-11) it.
_JOIN_BUSY = (-115, -11)
LEASE_SIZE = 1 << 20  # align 1 MiB, sector 512: room for 2000 hosts
MAX_HOST_ID = 2000
SECTOR = 512
# sanlock names hold 48 bytes, but a 48-byte name has no NUL terminator and Debian's binding
# (3.8.5) then crashes the process in read_resource and inquire (SIGSEGV, tested): 47 at most.
NAME_LEN = 47
_NAME = re.compile(r"[A-Za-z0-9._-]{1,47}")

# The leader record sanlock writes at the start of a lease (and of each host's delta lease).
_LEADER = struct.Struct("<IIIIQQQQQ48s48sQ")
_DELTA_MAGIC = 0x12212010
_PAXOS_MAGIC = 0x06152010

# sanlock's answers to an acquire (sanlock_rv.h): negative, errno-style.
_LVER = -240
_HELD = {
    -243: "held by another host",
    -244: "owned by another host",
    -245: "held elsewhere",
    # With SANLK_ACQUIRE_OWNER_NOWAIT: the owner's host stopped renewing its delta lease but is
    # not yet dead (8 x io_timeout + 60 s); without the flag sanlock would wait inside acquire.
    -247: "owned by a host that stopped renewing, not yet dead",
}
_SHRETRY = -246
DAEMON_CHECK = 1.0  # seconds between looks at the registered connection (is the daemon alive?)
_LOCAL = (17, -17)  # EEXIST: another process on this host holds it
_BUSY = (11, -11, 16, -16)  # EAGAIN, EBUSY: shared holders, or a lease in transition
_NO_LOCKSPACE = (28, -28)  # ENOSPC: this host's daemon has not joined the lockspace
_NO_FILE = -2  # ENOENT: the lease file is gone (virt-sanlock-cleanup deleted it)
# The lease file is there but not initialised yet: empty (-90, EMSGSIZE) or zeros (-223,
# SANLK_LEADER_MAGIC), as a libvirt host leaves it between its create and its init.
_NOT_YET = (-90, -223)


# -- configuration -------------------------------------------------------------------------------


def _lease_dir(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a path string, not {value!r}")
    return safe_dir(value, "lease_dir", 0o700)


def _host_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HOST_ID:
        raise ValueError(f"{value!r} is not a host id in 1..{MAX_HOST_ID}")
    return value


def _no_host_id() -> int:
    raise ValueError("must be set: this host's id in the lockspace, 1..2000, unique per host")


def _io_timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 300:
        raise ValueError(f"{value!r} is not a whole number of seconds in 1..300")
    return value


def _run_dir(value: Any) -> str:
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def _lockspace_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a sanlock name (1-47 of A-Z a-z 0-9 . _ -)")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def space(config: Mapping[str, Any]) -> tuple[str, str]:
    """(lockspace name, lockspace file) of a validated configuration."""
    if config.get("libvirt_disk_leases"):
        return LIBVIRT_LOCKSPACE, os.path.join(config["lease_dir"], LIBVIRT_LOCKSPACE)
    return str(config["lockspace"]), os.path.join(config["lease_dir"], LOCKSPACE_FILE)


CONFIG_KEYS: Mapping[str, ConfigKey] = {
    "lease_dir": ConfigKey(
        _lease_dir,
        lambda: default_state_dir("sanlock"),
        "directory of the lockspace and lease files, on storage every host shares",
    ),
    "host_id": ConfigKey(_host_id, _no_host_id, "this host's id in the lockspace (1..2000)"),
    "io_timeout": ConfigKey(
        _io_timeout, lambda: 10, "sanlock io_timeout in seconds, written at init and join"
    ),
    "sanlock_run_dir": ConfigKey(
        _run_dir, lambda: "/run/sanlock", "SANLOCK_RUN_DIR of this host's sanlock daemon"
    ),
    "lockspace": ConfigKey(_lockspace_name, lambda: "lockfsm", "name of the sanlock lockspace"),
    "libvirt_disk_leases": ConfigKey(
        _flag,
        lambda: False,
        "share disk leases with libvirt's sanlock driver (auto_disk_leases): lease_dir is its\n"
        f"# disk_lease_dir, the lockspace its {LIBVIRT_LOCKSPACE}, a disk's lease named by the\n"
        "# MD5 of its path as written (and of its canonical path where that differs); every\n"
        "# host must write a disk's path the same way.  lockspace must be left unset.  The\n"
        "# same on every host of lease_dir: a host with it off uses other lease names and\n"
        "# does not exclude one with it on (switch every host at once, with no guest running)",
    ),
}


# -- on-disk records (pure reads, no daemon) -----------------------------------------------------


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _leader(path: str, offset: int) -> tuple[Any, ...] | None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        raw = os.pread(fd, _LEADER.size, offset)
    finally:
        os.close(fd)
    return _LEADER.unpack(raw) if len(raw) == _LEADER.size else None


def read_leader(path: str, offset: int = 0) -> tuple[int, str, str, int, int] | None:
    """(magic, lockspace name, resource name, owner host id, lease version) of the leader record
    at ``offset`` of ``path``, or None if the file is too short.  Raises OSError."""
    fields = _leader(path, offset)
    if fields is None:
        return None
    magic, _, _, _, _, _, owner, _, lver, space, name, _ = fields
    return magic, _cstr(space), _cstr(name), owner, lver


def owner_of(path: str) -> int | None:
    """The host id that holds the (exclusive) lease at ``path``, or None when it is free (its
    leader record's timestamp is 0).  Raises OSError."""
    fields = _leader(path, 0)
    if fields is None or not fields[11]:
        return None
    return int(fields[6])


def host_name(lockspace_file: str, host_id: int) -> str:
    """The name (``sanlock daemon -e``) host ``host_id`` wrote into its delta lease in the
    lockspace file ``lockspace_file``, or ''."""
    try:
        leader = read_leader(lockspace_file, (host_id - 1) * SECTOR)
    except OSError:
        return ""
    return leader[2] if leader and leader[0] == _DELTA_MAGIC else ""


# -- the naming half -----------------------------------------------------------------------------


def _sanlock_cmd(args: list[str], run_dir: str, timeout: float) -> subprocess.CompletedProcess[str]:
    import subprocess  # here, not at the top: the supervisor never runs the command

    env = {**os.environ, "SANLOCK_RUN_DIR": run_dir}
    try:
        return subprocess.run(
            ["sanlock", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise BackendError("the sanlock command is not installed") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"sanlock {args[0]} {args[1]} took over {timeout:g} s") from None


def _done_code(out: str) -> int | None:
    """The result sanlock's command prints as '<action> done <rv>'."""
    found = re.findall(r" done (-?\d+)", out)
    return int(found[-1]) if found else None


#: What each holder call asks of the sanlock daemon, as the diagrams' sequence charts label it
#: (None: the call asks nothing).
TRACE: dict[str, str | None] = {
    "acquire": "acquire {mode}",
    "reserve": "register (the connection the incoming guest inherits)",
    "take_over": "acquire {mode} with lver={version}",
    "settle": None,
    "release": "release",
    "unreserve": None,
}


class SanlockBackend:
    """The naming half (daemon side)."""

    name = "sanlock"
    capabilities = CAPABILITIES
    config_keys: Mapping[str, ConfigKey] = CONFIG_KEYS

    def __init__(self, config: Mapping[str, Any]) -> None:
        """Initialise the lockspace file unless it is (waiting for one another host is making)
        and make this host's daemon join it.  Raises InvalidArgument for a ``lockspace`` of
        lockfsm's own beside ``libvirt_disk_leases`` (before anything is made), BackendError
        when the lockspace cannot be made or joined."""
        self.config = config
        self.dir: str = config["lease_dir"]
        if config["libvirt_disk_leases"] and config["lockspace"] not in (
            "lockfsm",
            LIBVIRT_LOCKSPACE,
        ):
            raise InvalidArgument(
                f"lockspace {config['lockspace']!r}: with libvirt_disk_leases the lockspace is "
                f"libvirt's, {LIBVIRT_LOCKSPACE}: leave lockspace unset"
            )
        self.lockspace, self.lockspace_path = space(config)
        self.run_dir: str = config["sanlock_run_dir"]
        self.io_timeout: int = config["io_timeout"]
        self._ensure_initialised(self.lockspace_path, None)
        self._join(config["host_id"])

    def _spec(self, host_id: int) -> str:
        return f"{self.lockspace}:{host_id}:{self.lockspace_path}:0"

    def _join(self, host_id: int) -> None:
        """Make this host's daemon join the lockspace as ``host_id`` unless it has already."""
        spec = self._spec(host_id)
        probe = _sanlock_cmd(["client", "inq_lockspace", "-s", spec], self.run_dir, 10)
        if _done_code(probe.stdout) == 0:
            return
        if _done_code(probe.stdout) is None:
            raise BackendError(
                f"the sanlock daemon of {self.run_dir} does not answer: "
                f"{(probe.stderr or probe.stdout).strip()[-200:]}"
            )
        # Joining waits for the delta lease: ~2 x io_timeout, ~20 x io_timeout if unlucky.
        deadline = time.monotonic() + 30.0 * self.io_timeout + 30.0
        while True:
            joined = _sanlock_cmd(
                ["client", "add_lockspace", "-o", str(self.io_timeout), "-s", spec],
                self.run_dir,
                max(1.0, deadline - time.monotonic()),
            )
            code = _done_code(joined.stdout)
            if code not in _JOIN_BUSY or time.monotonic() >= deadline:
                break
            # Another client of this daemon (libvirtd at boot) is joining or leaving it: wait
            # until that is done, then ask again.
            time.sleep(min(1.0, float(self.io_timeout)))
            probe = _sanlock_cmd(["client", "inq_lockspace", "-s", spec], self.run_dir, 10)
            if _done_code(probe.stdout) == 0:
                return
        if code not in (0, -17):  # -17: joined already
            raise BackendError(
                f"the sanlock daemon of {self.run_dir} could not join lockspace "
                f"{self.lockspace} as host_id {host_id} (sanlock says {code}): "
                f"{(joined.stderr or joined.stdout).strip()[-200:]}"
            )

    def _ensure_initialised(self, path: str, resource: str | None) -> None:
        ensure_initialised(path, self.lockspace, resource, self.run_dir, self.io_timeout)

    def leases(
        self, resource_type: str, path: str, canonical: str, shared: bool
    ) -> list[dict[str, str]]:
        """The leases of a resource (a disk's own lease file initialised if it is missing).
        Raises BackendError when a lease file cannot be made, or is something else."""
        import hashlib  # here, not at the top: the supervisor never needs it

        mode = "shared" if shared else "exclusive"
        if resource_type == "disk" and self.config["libvirt_disk_leases"]:
            names = [path] if canonical == path else [path, canonical]
            keys = [hashlib.md5(n.encode("utf-8", "surrogateescape")).hexdigest() for n in names]
        else:
            text = f"lease:{path}" if resource_type == "lease" else canonical
            keys = [hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:NAME_LEN]]
        for key in keys:
            self._ensure_initialised(os.path.join(self.dir, key), key)
        return [{"key": key, "mode": mode} for key in keys]


def _initialised(path: str, lockspace: str, resource: str | None) -> bool | None:
    """Whether ``path`` holds the initialised lockspace (``resource`` None) or resource: False
    when there is no file, None when it is there but not initialised yet (empty, or zeros where
    the leader record goes: a libvirt host between its create and its init).  Raises
    BackendError for a file that is something else."""
    try:
        leader = read_leader(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise BackendError(f"lease file {path} cannot be read: {e}") from None
    if leader is None or leader[0] == 0:
        return None
    magic = _DELTA_MAGIC if resource is None else _PAXOS_MAGIC
    if (
        leader[0] == magic
        and leader[1] == lockspace
        and (resource is None or leader[2] == resource)
    ):
        return True
    raise BackendError(
        f"{path} exists but is not the sanlock "
        f"{'lockspace' if resource is None else 'lease ' + repr(resource)} of lockspace "
        f"{lockspace!r}: not used, not overwritten"
    )


def ensure_initialised(
    path: str,
    lockspace: str,
    resource: str | None,
    run_dir: str,
    io_timeout: int,
    wait: float | None = None,
) -> None:
    """Create and initialise lease file ``path`` unless it is already: zero-fill a private
    file to LEASE_SIZE and initialise it (``sanlock direct init``), then link it into place
    (link never replaces), so that an existing file is never written.  A file that exists but
    is not initialised yet (another host is making it, as libvirt does, in place) is waited for,
    INIT_WAIT + io_timeout seconds (or ``wait``).  Raises BackendError when the file cannot be
    made, stays uninitialised, or is something else."""
    state = _initialised(path, lockspace, resource)
    if state is True:
        return
    if state is False:
        import tempfile

        try:
            fd, tmp = tempfile.mkstemp(prefix=".init-", dir=os.path.dirname(path))  # mode 0600
        except OSError as e:
            raise BackendError(f"lease file {path} cannot be made: {e}") from None
        try:
            os.ftruncate(fd, LEASE_SIZE)
            os.close(fd)
            if resource is None:
                args = ["-o", str(io_timeout), "-s", f"{lockspace}:0:{tmp}:0"]
            else:
                args = ["-r", f"{lockspace}:{resource}:{tmp}:0"]
            done = _sanlock_cmd(["direct", "init", *args], run_dir, 60.0)
            if _done_code(done.stdout) != 0:
                raise BackendError(
                    f"sanlock direct init of {path} failed: "
                    f"{(done.stderr or done.stdout).strip()[-200:]}"
                )
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another host made it meanwhile: use theirs
        except OSError as e:
            raise BackendError(f"lease file {path} cannot be made: {e}") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # gone already: nothing to tidy
    waited = INIT_WAIT + io_timeout if wait is None else wait
    deadline = time.monotonic() + waited
    while (state := _initialised(path, lockspace, resource)) is not True:
        if state is False:
            raise BackendError(f"lease file {path} was deleted while being made: try again")
        if time.monotonic() > deadline:
            raise BackendError(
                f"lease file {path} exists but is still not initialised after {waited:g} s: "
                "the host that created it stopped half-way, or its storage is slow.  lockfsm "
                "never writes a lease file that exists; remove it once no host uses it"
            )
        time.sleep(0.05)


# -- the holding half ----------------------------------------------------------------------------


# sanlock_acquire() through libsanlock.so.1 (the binding cannot pass acquire flags).  Values and
# layouts from sanlock.h and sanlock_resource.h (sanlock 3.8).
_SANLK_RES_LVER = 0x1  # the lver field is set: acquire only that lease version
_SANLK_RES_SHARED = 0x4
_SANLK_ACQUIRE_OWNER_NOWAIT = 0x8  # answer -247 instead of waiting for a stalled owner's death
_SANLK_NAME_LEN = 48
_SANLK_PATH_LEN = 1024

_AcquireCall = Callable[[int, bytes, bytes, str, int, bool, int | None], int]
_acquire_call: _AcquireCall | None = None


def _acquire_function() -> _AcquireCall:
    """``acquire(fd, lockspace, name, path, offset, shared, lver) -> rv``: one resource of one
    disk, acquired on the registered connection ``fd`` with SANLK_ACQUIRE_OWNER_NOWAIT, so
    that it never waits for another host to be declared dead.  rv is 0 or a negative code."""
    global _acquire_call
    if _acquire_call is not None:
        return _acquire_call
    import ctypes  # here, not at the top: only a holder acquires

    class SanlkDisk(ctypes.Structure):
        _fields_ = [
            ("path", ctypes.c_char * _SANLK_PATH_LEN),  # NUL-terminated
            ("offset", ctypes.c_uint64),
            ("pad1", ctypes.c_uint32),
            ("pad2", ctypes.c_uint32),
        ]

    class SanlkResource(ctypes.Structure):  # with room for exactly one disk
        _fields_ = [
            ("lockspace_name", ctypes.c_char * _SANLK_NAME_LEN),
            ("name", ctypes.c_char * _SANLK_NAME_LEN),
            ("lver", ctypes.c_uint64),
            ("data64", ctypes.c_uint64),
            ("data32", ctypes.c_uint32),
            ("unused", ctypes.c_uint32),
            ("flags", ctypes.c_uint32),
            ("num_disks", ctypes.c_uint32),
            ("disks", SanlkDisk * 1),
        ]

    if ctypes.sizeof(SanlkDisk) != 1040 or SanlkResource.disks.offset != 128:
        raise BackendError("unexpected struct layout for libsanlock")  # pragma: no cover
    try:
        lib = ctypes.CDLL("libsanlock.so.1")
    except OSError as e:
        raise BackendError(f"cannot load libsanlock.so.1: {e}") from None
    func = lib.sanlock_acquire
    func.restype = ctypes.c_int
    func.argtypes = [
        ctypes.c_int,  # sock: our registered connection
        ctypes.c_int,  # pid: ignored when sock > -1
        ctypes.c_uint32,  # flags: SANLK_ACQUIRE_*
        ctypes.c_int,  # res_count
        ctypes.POINTER(ctypes.POINTER(SanlkResource)),
        ctypes.c_void_p,  # struct sanlk_options *: NULL, none
    ]

    def acquire(
        fd: int,
        lockspace: bytes,
        name: bytes,
        path: str,
        offset: int,
        shared: bool,
        lver: int | None,
    ) -> int:
        raw_path = os.fsencode(path)
        if len(raw_path) >= _SANLK_PATH_LEN or len(name) >= _SANLK_NAME_LEN:
            raise BackendError(f"sanlock lease {name!r} at {path}: name or path too long")
        res = SanlkResource()
        res.lockspace_name = lockspace
        res.name = name
        res.flags = _SANLK_RES_SHARED if shared else 0
        if lver is not None:
            res.lver = lver
            res.flags |= _SANLK_RES_LVER
        res.num_disks = 1
        res.disks[0].path = raw_path
        res.disks[0].offset = offset
        resources = (ctypes.POINTER(SanlkResource) * 1)(ctypes.pointer(res))
        return int(func(fd, -1, _SANLK_ACQUIRE_OWNER_NOWAIT, 1, resources, None))

    _acquire_call = acquire
    return acquire


def _binding(private_dir: str) -> Any:
    """The sanlock Python binding (Debian's python3-sanlock).  If this Python cannot import it
    (not Debian's), the .so is imported through a folder holding only a symlink to it."""
    try:
        import sanlock  # type: ignore[import-not-found]
    except ImportError:
        from importlib.machinery import EXTENSION_SUFFIXES

        so = f"sanlock{EXTENSION_SUFFIXES[0]}"
        real = os.path.join("/usr/lib/python3/dist-packages", so)
        if not os.path.exists(real):
            raise BackendError(f"the sanlock Python binding ({real}) is not installed") from None
        os.makedirs(private_dir, mode=0o700, exist_ok=True)
        try:
            os.symlink(real, os.path.join(private_dir, so))
        except FileExistsError:
            pass
        sys.path.insert(0, private_dir)
        try:
            import sanlock
        finally:
            sys.path.remove(private_dir)
    return sanlock


class SanlockHolder(PollingHolder):
    """The holding half (supervisor side): one registered connection to this host's daemon,
    through which every lease of the guest is held.  Whether a lease is held or only reserved
    is its lease machine's state (the view)."""

    def __init__(self, config: Mapping[str, Any], view: LeaseView) -> None:
        self.dir: str = config["lease_dir"]
        name, self.lockspace_file = space(config)
        self.lockspace = name.encode()
        self.host_id: int = config["host_id"]
        self.run_dir: str = config["sanlock_run_dir"]
        self.io_timeout: int = config["io_timeout"]
        self.private = os.path.join(config["run_dir"], ".sanlock-py")
        self.view = view
        self.sanlock: Any = None
        self.fd: int | None = None
        # key -> the version a take-over now expects, where an attempt that took the lease
        # gave it back: the acquire moved the version on, to our own.
        self.expect: dict[str, int] = {}
        self.lost: str | None = None
        self.checked = time.monotonic()

    def _connect(self) -> int:
        if self.fd is None:
            # Before the first call: the binding talks to the daemon of this run dir for good.
            os.environ["SANLOCK_RUN_DIR"] = self.run_dir
            self.sanlock = _binding(self.private)
            try:
                self.fd = int(self.sanlock.register())
            except self.sanlock.SanlockException as e:
                raise BackendError(
                    f"cannot register with the sanlock daemon of {self.run_dir}: {e}"
                ) from None
        return self.fd

    def _disks(self, key: str) -> list[tuple[str, int]]:
        return [(os.path.join(self.dir, key), 0)]

    def _holder(self, key: str) -> str:
        """Who holds lease ``key``, as far as its leader record tells (and, for a holder on
        this host, this host's daemon: the owner name, libvirt's VM name)."""
        try:
            owners = self.sanlock.read_resource_owners(
                self.lockspace, key.encode(), self._disks(key)
            )
        except self.sanlock.SanlockException:
            return ""
        ids = sorted({int(o["host_id"]) for o in owners})
        names = []
        for host_id in ids:
            if host_id == self.host_id:
                local = local_owners(self.run_dir, self.lockspace.decode()).get(key, [])
                who = ", ".join(f"{n} (pid {p})" if n else f"pid {p}" for p, n in local)
                names.append(f"{who or 'another process'} on this host (sanlock host_id {host_id})")
            else:
                name = host_name(self.lockspace_file, host_id)
                names.append(f"sanlock host_id {host_id}" + (f" ({name})" if name else ""))
        return ", ".join(names)

    def _version_now(self, key: str) -> int | None:
        try:
            return int(self.sanlock.read_resource(*self._disks(key)[0])["version"])
        except (self.sanlock.SanlockException, KeyError, TypeError, ValueError):
            return None

    def _conflict(self, code: int, key: str, resource: str, version: int | None) -> Exception:
        path = os.path.join(self.dir, key)
        if code in _NO_LOCKSPACE:
            return BackendError(
                f"{resource}: the sanlock daemon of {self.run_dir} has not joined lockspace "
                f"{self.lockspace.decode()} (lease file {path})"
            )
        if code == _LVER or (version is not None and code in (*_HELD, *_LOCAL, *_BUSY)):
            now = self._version_now(key)
            if code == _LVER or (now is not None and now != version):
                holder = self._holder(key)
                return LeaseConflict(
                    f"{resource}: the lease changed hands since the source prepared the "
                    f"migration (lease version {now if now is not None else 'unknown'}, the "
                    f"handoff expected version {version})"
                    + (f"; now held by {holder}" if holder else "")
                    + f" (lease file {path})",
                    resource,
                    holder,
                    final=True,
                )
        if code in _HELD or code in _LOCAL or code in _BUSY or code == _SHRETRY:
            holder = self._holder(key) or "another holder"
            return LeaseConflict(
                f"{resource} is held by {holder} (sanlock {code}, lease file {path})",
                resource,
                holder,
            )
        what = os.strerror(-code) if -200 < code < 0 else "see sanlock_rv.h"
        return BackendError(f"{resource}: sanlock acquire of {path} failed: {code} ({what})")

    def reserve(self, lease: Mapping[str, str], resource: str) -> None:
        # Nothing to reserve: the take-over's acquire carries the source's lease version, and
        # sanlock refuses it if anyone else took the lease meanwhile.  Connect now, though, so
        # that the incoming guest, started before the take-over, inherits the connection that
        # will hold the leases.
        self._connect()

    def acquire(self, lease: Mapping[str, Any], resource: str) -> None:
        self._acquire(lease, resource, None)

    def _acquire(self, lease: Mapping[str, Any], resource: str, version: Any) -> None:
        key = lease["key"]
        fd = self._connect()
        shared = lease["mode"] == "shared"
        lver = int(version) if version is not None and not shared else None
        # Never waits: SANLK_ACQUIRE_OWNER_NOWAIT.  Without it, a lease whose owner's host
        # stopped renewing would block this single-threaded supervisor inside the acquire
        # until that host is declared dead (8 x io_timeout + 60 s), and then take the lease.
        ((path, offset),) = self._disks(key)
        acquire = _acquire_function()
        code = acquire(fd, self.lockspace, key.encode(), path, offset, shared, lver)
        if (code == _NO_FILE and lver is None) or code in _NOT_YET:
            # Deleted since the daemon named it (virt-sanlock-cleanup deletes free lease
            # files): made again as the daemon makes it, then acquired; or another host
            # (libvirt) made it again after a cleanup and is initialising it: waited for.
            ensure_initialised(
                path,
                self.lockspace.decode(),
                key,
                self.run_dir,
                self.io_timeout,
                min(INIT_WAIT + self.io_timeout, SUPERVISOR_INIT_WAIT),
            )
            code = acquire(fd, self.lockspace, key.encode(), path, offset, shared, lver)
        if code == _NO_FILE and lver is None:
            raise BackendError(f"{resource}: its lease file {path} vanished again once made")
        if code == _NO_FILE:
            raise LeaseConflict(
                f"{resource}: its lease file {path} was deleted since the source prepared "
                "the migration (virt-sanlock-cleanup?): the lease version the handoff expects "
                "is gone with it",
                resource,
                "",
                final=True,
            )
        if code != 0:
            raise self._conflict(code, key, resource, version)

    def take_over(self, group: Sequence[tuple[Mapping[str, Any], str]]) -> None:
        """Acquire each lease with the version the cookie carries (sanlock refuses it, -240, if
        anyone took the lease after the source).  If one cannot be had, release those taken in
        this attempt: each release keeps the version our acquire moved it to, which the next
        attempt then expects, so that only a third holder in between (a version further on)
        fails it for good.  An attempt that failed for good expects nothing new: a later
        attempt then fails at once, at the first lease it moved, and takes nothing."""
        taken: list[Mapping[str, Any]] = []
        try:
            for lease, resource in group:
                key = lease["key"]
                self._acquire(lease, resource, self.expect.get(key, lease.get("version")))
                taken.append(lease)
        except BaseException as e:
            final = isinstance(e, LeaseConflict) and e.final
            for lease in taken:
                key = lease["key"]
                mine = lease["mode"] == "exclusive" and not final
                ours = self._version_now(key) if mine else None
                self._release(key)
                if ours is not None:
                    self.expect[key] = ours
            raise

    def _release(self, key: str) -> None:
        try:
            self.sanlock.release(self.lockspace, key.encode(), self._disks(key), slkfd=self.fd)
        except self.sanlock.SanlockException as e:
            # The daemon no longer lists it for us (it died, or dropped our lockspace): it is
            # not held by this supervisor any more either way.
            print(f"lockfsm-supervisor: sanlock release of {key}: {e}", file=sys.stderr)

    def release(self, leases: Sequence[Mapping[str, Any]]) -> None:
        missing = [
            le["key"] for le in leases if self.view.state(le["key"]) not in tables.LEASE_HOLDS
        ]
        if missing:
            raise BackendError(f"lease {missing[0]} is not held by this supervisor")
        for lease in leases:
            self._release(lease["key"])

    def unreserve(self, leases: Sequence[Mapping[str, Any]]) -> None:
        pass  # nothing was reserved: nothing to tell sanlock

    def probe(self, lease: Mapping[str, str], resource: str) -> None:
        # sanlock tells a lease's owner only by reading the lease area from disk (io_timeout
        # bound); the take-over's acquire, carrying the source's version, decides instead.
        return

    def settle(self, lease: Mapping[str, str]) -> None:
        pass  # nothing was reserved

    def handoff_data(self, lease: Mapping[str, Any]) -> dict[str, int]:
        key = lease["key"]
        if self.view.state(key) != "held" or lease["mode"] != "exclusive":
            return {}  # shared leases coexist: nothing to hand over atomically
        try:
            held = self.sanlock.inquire(slkfd=self.fd)
        except self.sanlock.SanlockException as e:
            raise BackendError(f"sanlock inquire: {e}") from None
        for res in held:
            if res["resource"] == key.encode() and res["lockspace"] == self.lockspace:
                return {"version": int(res["version"])}
        raise BackendError(f"sanlock does not list lease {key} as held by this supervisor")

    def watch(self, notify: list[str]) -> None:
        """Register the kill path: when the daemon must take this process's leases back (the
        lockspace's renewal failed, or it was removed), it runs ``notify`` instead of killing
        the supervisor, and the supervisor applies the domain's lock-failure policy, letting
        every lease go (sanlock kills it if that does not happen within its kill grace)."""
        fd = self._connect()
        program, args = notify[0], [*notify[1:], "sanlock", "revoked", "the", "leases"]
        if len(program) >= 128 or len(" ".join(args)) >= 128:
            raise BackendError(
                f"the kill path {' '.join(notify)!r} is over sanlock's 128-byte limits: "
                "shorten run_dir or install lockfsm-supervisor on a shorter path"
            )
        try:
            self.sanlock.killpath(program, args, slkfd=fd)
        except self.sanlock.SanlockException as e:
            raise BackendError(f"sanlock killpath: {e}") from None

    def next_check(self) -> float | None:
        if self.fd is None or self.lost is not None:
            return None
        return self.checked + DAEMON_CHECK

    def poll(self) -> str | None:
        """The daemon revokes leases through the kill path; what it cannot tell is its own
        death.  Its registered connection closing means it died: nothing renews this host's
        lockspace any more, and other hosts take the leases once they see the host dead (8 x
        io_timeout + 60 s): the leases are lost, and the guest is stopped by its policy now.
        Looked at every DAEMON_CHECK seconds (a peek: nothing of the connection is read)."""
        import socket

        self.checked = time.monotonic()
        if self.fd is not None and self.lost is None:
            with socket.socket(fileno=os.dup(self.fd)) as s:
                try:
                    if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        self.lost = (
                            f"the sanlock daemon of {self.run_dir} died: nothing renews this "
                            "host's lockspace"
                        )
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    self.lost = (
                        f"the connection to the sanlock daemon of {self.run_dir} failed: {e}"
                    )
        return self.lost

    def inheritable_fds(self) -> list[int]:
        return [] if self.fd is None else [self.fd]


BACKEND = SanlockBackend


def local_owners(run_dir: str, lockspace: str) -> dict[str, list[tuple[int, str]]]:
    """Lease name -> [(pid, owner name)] of the processes that hold it through the sanlock
    daemon of ``run_dir`` (``sanlock client status``): the owner name is the VM name for
    libvirt's QEMUs.  sanlock keeps owner names in the holding daemon only, never on disk:
    another host's holders are known by host id and host name alone.  {} when the daemon
    does not answer; never raises."""
    try:
        done = _sanlock_cmd(["client", "status"], run_dir, 10.0)
    except BackendError:
        return {}
    names: dict[int, str] = {}
    found: dict[str, list[tuple[int, str]]] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["p"] and len(parts) >= 2 and parts[1].isdigit():
            names[int(parts[1])] = parts[2] if len(parts) > 2 else ""
        elif parts[:1] == ["r"] and len(parts) >= 4 and parts[2] == "p" and parts[3].isdigit():
            fields = parts[1].split(":")
            if fields[0] == lockspace and len(fields) > 1:
                pid = int(parts[3])
                found.setdefault(fields[1], []).append((pid, names.get(pid, "")))
    return found


def make_holder(config: Mapping[str, Any], view: LeaseView) -> SanlockHolder:
    return SanlockHolder(config, view)


# -- who holds what (lockfsm status) ------------------------------------------------------------

_KEY = re.compile(r"[0-9a-f]{47}|[0-9a-f]{32}")  # lockfsm's names; libvirt's (MD5)


def holders(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every lease of the lockspace that a host owns, from its leader record (shared holders
    from the mode blocks): ``{"key", "kind": "held", "holder": {host id and name}}``, and for a
    holder on this host's daemon its owner names and pids (libvirt's: the VM names).  The
    records are read through this host's sanlock daemon (any daemon of the lockspace reads the
    same ones).  Raises BackendError when the binding cannot be loaded."""
    lease_dir = config["lease_dir"]
    # The binding reads through a daemon: this host's, unless this process already chose one.
    os.environ.setdefault("SANLOCK_RUN_DIR", config["sanlock_run_dir"])
    binding = _binding(os.path.join(config["run_dir"], ".sanlock-py"))
    name_of_space, space_file = space(config)
    lockspace = name_of_space.encode()
    local = local_owners(config["sanlock_run_dir"], name_of_space)
    rows = []
    for name in sorted(os.listdir(lease_dir)):
        if not _KEY.fullmatch(name):
            continue
        try:
            owners = binding.read_resource_owners(
                lockspace, name.encode(), [(os.path.join(lease_dir, name), 0)]
            )
        except binding.SanlockException:
            continue
        for o in owners:
            host_id = int(o["host_id"])
            holder: dict[str, Any] = {
                "manager": "sanlock",
                "host_id": host_id,
                "host": host_name(space_file, host_id),
            }
            if host_id == config["host_id"] and local.get(name):
                holder["owner"] = ", ".join(n or "?" for _, n in local[name])
                holder["pids"] = [p for p, _ in local[name]]
            rows.append({"key": name, "kind": "held", "holder": holder})
    return rows


def hosts(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The lockspace's hosts as this host's sanlock daemon sees their delta leases
    (``sanlock client gets -h 1``): LIVE alive; DEAD dead (its delta lease expired,
    8 x io_timeout + 60 s after its last renewal; its guests were killed by sanlock's
    fencing -- with a watchdog; without one, see PROTOCOL.md); FAIL and UNKNOWN unknown.
    Raises BackendError when the daemon does not answer."""
    done = _sanlock_cmd(["client", "gets", "-h", "1"], config["sanlock_run_dir"], 10.0)
    name_of_space, space_file = space(config)
    rows = []
    current = ""
    for line in done.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["s"] and len(parts) > 1:
            current = parts[1].split(":", 1)[0]  # the lockspace the next hosts are of
            continue
        if len(parts) < 7 or parts[0] != "h" or parts[6] == "FREE":
            continue
        if current != name_of_space:
            continue
        host_id, flag = int(parts[1]), parts[6]
        state = {"LIVE": "alive", "DEAD": "dead"}.get(flag, "unknown")
        name = host_name(space_file, host_id) or f"host_id {host_id}"
        rows.append(
            {
                "name": name,
                "state": state,
                "since": time.time() if state == "dead" else None,
                "detail": f"sanlock host_id {host_id}: {flag}",
                "host_id": host_id,
            }
        )
    if not rows and done.returncode != 0:
        raise BackendError(
            f"the sanlock daemon of {config['sanlock_run_dir']} does not answer: "
            f"{(done.stderr or done.stdout).strip()[-200:]}"
        )
    return rows


def wait_free(
    config: Mapping[str, Any], leases: Sequence[Mapping[str, Any]], timeout: float
) -> None:
    """Until every exclusive lease's leader record is free or owned by a dead host (which
    sanlock then lets another host acquire); shared leases coexist.  Polls every 0.5 s."""
    deadline = time.monotonic() + timeout
    exclusive = [le["key"] for le in leases if le["mode"] == "exclusive"]
    while True:
        dead = {r["host_id"] for r in hosts(config) if r["state"] == "dead"}
        busy = []
        for key in exclusive:
            try:
                owner = owner_of(os.path.join(config["lease_dir"], key))
            except OSError as e:
                raise BackendError(f"lease file {key}: {e}") from None
            if owner is not None and owner not in dead:
                busy.append((key, owner))
        if not busy:
            return
        if time.monotonic() >= deadline:
            key, owner = busy[0]
            who = host_name(space(config)[1], owner) or f"host_id {owner}"
            raise LeaseConflict(
                f"lease {key} is still held after {timeout:g} s, by sanlock host {who}",
                f"lease {key}",
                who,
            )
        time.sleep(0.5)
