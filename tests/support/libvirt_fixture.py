"""A real libvirt host for interoperation tests: libvirtd with the QEMU driver and either virtlockd
(the ``lockd`` lock manager, ``file_lockspace_dir`` lease files, as
``../shared/recipes/libvirt-lockd.sh`` does) or a sanlock daemon (the ``sanlock`` lock manager of
the ``libvirt-sanlock`` plugin, ``auto_disk_leases`` in ``disk_lease_dir``, host_id 1, as
``../shared/recipes/libvirt-sanlock.sh`` does), started as root without systemd.

Nothing on the machine is changed: the daemons run in a private mount namespace (``unshare
-m``) in which their configuration, run, state, cache and log directories are bind-mounted from
one temporary directory, and so are private copies of /etc/passwd and /etc/group that name the
``libvirt-qemu`` user libvirtd looks up.  The namespace lives as long as the daemons; paths under
/tmp (disk images, the lockspace) are the same inside and out.  The daemons are stopped by pid
(libvirtd first, its guests' QEMUs before it); bind-mount targets this module had to create are
removed again.

libvirt's QEMUs run with QEMU's own image locking off (``"locking": "off"`` on each file node):
in the namespace, the QEMU binary's path is a small wrapper that adds it.  On one machine QEMU's
image locks (bytes 100+ of the image) would otherwise refuse a libvirt QEMU beside a lockfsm QEMU
before libvirt asks for its lease, since libvirt takes its leases when the guest's CPUs start,
after QEMU opened the images.  With them off, the libvirt host is like another host whose storage
does not carry QEMU's locks: the leases alone keep the two sides apart, which is what is tested.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress

from lockfsm.embed.standin import short_tmpdir
from lockfsm.protocol.kernel import alive

QEMU = "/usr/bin/qemu-system-x86_64"
PROGRAMS = ("libvirtd", "virtlockd", "virsh", "unshare", "mount", QEMU, "qemu-img")
SANLOCK_PLUGIN = "/usr/lib/x86_64-linux-gnu/libvirt/lock-driver/sanlock.so"
SANLOCK_LOCKSPACE = "__LIBVIRT__DISKS__"
STATE_DIRS = ("/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")

LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_level = 3
log_filters = "1:locking"
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
"""
VIRTLOCKD_CONF = """\
log_level = 3
log_filters = "1:locking 1:util.lockspace"
log_outputs = "1:file:/var/log/libvirt/virtlockd.log"
"""
QEMU_CONF = """\
lock_manager = "{manager}"
cgroup_controllers = [ ]
namespaces = [ ]
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
"""
# What a libvirt host's /etc/libvirt/qemu-lockd.conf says to share a lockspace with lockfsm.
LOCKD_CONF = """\
auto_disk_leases = 1
require_lease_for_disks = 1
file_lockspace_dir = "{lockspace}"
"""

# What a libvirt host's /etc/libvirt/qemu-sanlock.conf says to share disk leases with lockfsm.
SANLOCK_CONF = """\
auto_disk_leases = 1
disk_lease_dir = "{lease_dir}"
host_id = {host_id}
require_lease_for_disks = 1
io_timeout = {io_timeout}
"""

# Runs inside the new mount namespace: the bind mounts, then both daemons (they fork away): with
# sanlock, its daemon first (libvirtd joins its lockspace at its own start only), unprivileged
# and without a watchdog, with a private /var/log for its sanlock.log.
START = """\
set -e
T=$1
mount --make-rprivate /
if [ "$3" = sanlock ]; then mount --bind "$T/varlog" /var/log; fi
mount --bind "$T/etc/passwd" /etc/passwd
mount --bind "$T/etc/group" /etc/group
mount --bind "$T/etc" /etc/libvirt
mount --bind "$T/run" /run
mount --bind "$T/lib" /var/lib/libvirt
mount --bind "$T/cache" /var/cache/libvirt
mount --bind "$T/log" /var/log/libvirt
mount --bind "$2" "$T/qemu/bin/qemu-real"
mount --bind "$T/qemu-unlocked" "$2"
mkdir -p /run/libvirt
if [ "$3" = sanlock ]; then
    SANLOCK_PRIVILEGED=0 sanlock daemon -w 0 -l 0 -h 0 -U root -G root -e "$4" -g 3
    for i in $(seq 200); do [ -S /run/sanlock/sanlock.sock ] && break; sleep 0.05; done
else
    /usr/sbin/virtlockd -d -f /etc/libvirt/virtlockd.conf -p /run/virtlockd.pid
fi
/usr/sbin/libvirtd -d -f /etc/libvirt/libvirtd.conf -p /run/libvirtd.pid
"""

# The QEMU binary as libvirt's QEMUs see it: the real one, each file node without image locking.
UNLOCKED = """\
#!{python} -I
import json, os, sys
args = sys.argv[1:]
for i in range(1, len(args)):
    if args[i - 1] == "-blockdev" and args[i].startswith("{{"):
        node = json.loads(args[i])
        if node.get("driver") == "file":
            args[i] = json.dumps({{**node, "locking": "off"}})
os.execv({real!r}, [sys.argv[0], *args])
"""


class VirshError(AssertionError):
    """virsh failed; the message is its own."""


def lease_name(lockspace: str, disk: str) -> str:
    """The lease file libvirt's lockd uses for ``disk`` (its path as the domain XML gives it)."""
    return os.path.join(lockspace, hashlib.sha256(disk.encode()).hexdigest())


def sanlock_lease(lease_dir: str, disk: str) -> str:
    """The lease file libvirt's sanlock driver uses for ``disk`` (its path as the domain XML
    gives it): ``<disk_lease_dir>/<md5 hex>``, the resource of the same name."""
    return os.path.join(lease_dir, hashlib.md5(disk.encode()).hexdigest())


def domain_xml(
    name: str, disk: str, fmt: str = "qcow2", shareable: bool = False, readonly: bool = False
) -> str:
    """A small TCG guest with one virtio disk (no OS: its firmware idles)."""
    extra = ("<shareable/>" if shareable else "") + ("<readonly/>" if readonly else "")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>{QEMU}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>{extra}
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Libvirt:
    """One libvirt host: ``start()`` it, run guests with :meth:`create`, ``stop()`` it.
    ``lock_manager`` is ``"lockd"`` (``lockspace`` is its ``file_lockspace_dir``), ``"sanlock"``
    (``lease_dir`` is its ``disk_lease_dir``, its sanlock daemon's run dir ``sanlock_run_dir``
    outside the namespace, its host name ``host_name``) or ``None`` (no lock manager)."""

    def __init__(
        self, lock_manager: str | None = "lockd", host_id: int = 1, io_timeout: int = 1
    ) -> None:
        self.top = short_tmpdir("lfv")
        self.lock_manager = lock_manager
        self.host_id, self.io_timeout = host_id, io_timeout
        self.lockspace = os.path.join(self.top, "lockspace")
        self.lease_dir = os.path.join(self.top, "leases")
        self.sanlock_run_dir = os.path.join(self.top, "run", "sanlock")
        self.host_name = f"libvirt{host_id}"
        self.images = os.path.join(self.top, "img")
        self.env = {
            **os.environ,
            "LIBVIRT_DEFAULT_URI": f"qemu:///system?socket={self.top}/run/libvirt/libvirt-sock",
        }
        self.made_dirs: list[str] = []
        self.start_seconds = 0.0

    # -- the daemons --------------------------------------------------------------------------

    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self.top, rel), "w") as f:
            f.write(text)

    def start(self, timeout: float = 90.0) -> None:
        """Configure and start virtlockd and libvirtd; return once libvirtd answers (its first
        answer waits for QEMU's capability probe, ~8 s).  Raises AssertionError if it does not."""
        for d in ("etc", "run", "lib", "cache", "log", "img", "varlog", "varlog/libvirt"):
            os.mkdir(os.path.join(self.top, d), 0o755)
        os.mkdir(self.lockspace, 0o700)
        os.mkdir(self.lease_dir, 0o700)
        self._write("etc/libvirtd.conf", LIBVIRTD_CONF)
        self._write("etc/virtlockd.conf", VIRTLOCKD_CONF)
        qemu_conf = QEMU_CONF.format(manager=self.lock_manager or "")
        if self.lock_manager is None:
            qemu_conf = qemu_conf.replace('lock_manager = ""\n', "")
        self._write("etc/qemu.conf", qemu_conf)
        self._write("etc/qemu-lockd.conf", LOCKD_CONF.format(lockspace=self.lockspace))
        self._write(
            "etc/qemu-sanlock.conf",
            SANLOCK_CONF.format(
                lease_dir=self.lease_dir, host_id=self.host_id, io_timeout=self.io_timeout
            ),
        )
        with suppress(FileNotFoundError):
            shutil.copy("/etc/libvirt/libvirt.conf", os.path.join(self.top, "etc"))
        # libvirtd's QEMU driver looks up the user "libvirt-qemu" even with user = "root" (the
        # libvirt-daemon-system package makes it): name it in the namespace's passwd only.
        for db, names in (
            ("passwd", ["libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin"]),
            ("group", ["libvirt-qemu:x:64055:", "kvm:x:64054:"]),
        ):
            with open(f"/etc/{db}") as f:
                text = f.read().rstrip("\n") + "\n"
            known = {x.split(":", 1)[0] for x in text.splitlines()}
            text += "".join(line + "\n" for line in names if line.split(":", 1)[0] not in known)
            self._write(f"etc/{db}", text)
        # The real binary, bind-mounted where QEMU finds its modules and firmware: it looks
        # for them relative to its own directory (../lib, ../share).
        real = os.path.join(self.top, "qemu", "bin", "qemu-real")
        os.makedirs(os.path.dirname(real))
        self._write("qemu/bin/qemu-real", "")
        for d in ("lib", "share", "libexec"):
            os.symlink(f"/usr/{d}", os.path.join(self.top, "qemu", d))
        self._write("qemu-unlocked", UNLOCKED.format(python=sys.executable, real=real))
        os.chmod(os.path.join(self.top, "qemu-unlocked"), 0o755)
        for d in STATE_DIRS:  # bind-mount targets
            if not os.path.isdir(d):
                os.mkdir(d, 0o755)
                self.made_dirs.append(d)
        began = time.monotonic()
        manager = self.lock_manager or "none"
        subprocess.run(
            ["unshare", "-m", "sh", "-c", START, "sh", self.top, QEMU, manager, self.host_name],
            check=True,
        )
        deadline = began + timeout
        while self.virsh("version", check=False).returncode != 0:
            if time.monotonic() > deadline or not alive(self.pid("libvirtd")):
                raise AssertionError(f"libvirtd did not answer within {timeout} s: {self.log()}")
            time.sleep(0.1)
        self.start_seconds = time.monotonic() - began

    def pid(self, daemon: str) -> int:
        """The pid of ``libvirtd``, ``virtlockd`` or ``sanlock``."""
        rel = "sanlock/sanlock.pid" if daemon == "sanlock" else f"{daemon}.pid"
        with open(os.path.join(self.top, "run", rel)) as f:
            return int(f.read())

    def log(self, daemon: str = "libvirtd", lines: int = 5) -> str:
        try:
            with open(os.path.join(self.top, "log", f"{daemon}.log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """Stop every guest, then libvirtd, then virtlockd, each by pid; remove what start made.
        Never raises."""
        qemu_run = os.path.join(self.top, "run", "libvirt", "qemu")
        for entry in os.listdir(qemu_run) if os.path.isdir(qemu_run) else []:
            if entry.endswith(".pid"):
                with suppress(OSError, ValueError), open(os.path.join(qemu_run, entry)) as f:
                    os.kill(int(f.read()), signal.SIGKILL)
        for daemon in ("libvirtd", "virtlockd", "sanlock"):
            try:
                pid = self.pid(daemon)
                if daemon == "sanlock":  # SIGTERM is ignored while a lockspace is joined
                    subprocess.run(
                        ["sanlock", "client", "shutdown", "-f", "1", "-w", "0"],
                        env={**os.environ, "SANLOCK_RUN_DIR": self.sanlock_run_dir},
                        capture_output=True,
                        timeout=10,
                        start_new_session=True,
                    )
                else:
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                continue
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for d in self.made_dirs:
            with suppress(OSError):
                os.rmdir(d)
        shutil.rmtree(self.top, ignore_errors=True)

    # -- guests -------------------------------------------------------------------------------

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run virsh against this libvirtd; with ``check``, raise VirshError with its message
        when it fails."""
        done = subprocess.run(
            ["virsh", "-q", *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:
            raise VirshError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
        return done

    def destroy_all(self) -> None:
        """Destroy every guest this libvirtd runs (a test's leftovers)."""
        for name in self.virsh("list", "--all", "--name").stdout.split():
            self.virsh("destroy", name, check=False)

    def image(self, name: str, fmt: str = "qcow2") -> str:
        path = os.path.join(self.images, name)
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, "16M"], check=True)
        return path

    def create(self, name: str, disk: str, *flags: str, **xml: object) -> int:
        """``virsh create`` a transient guest with one disk; returns its QEMU's pid.  ``flags``
        go to virsh (``--paused``); ``xml`` to :func:`domain_xml`.  Raises VirshError."""
        path = os.path.join(self.images, f"{name}.xml")
        with open(path, "w") as f:
            f.write(domain_xml(name, disk, **xml))  # type: ignore[arg-type]
        self.virsh("create", path, *flags)
        return self.qemu_pid(name)

    def qemu_pid(self, name: str) -> int:
        with open(os.path.join(self.top, "run", "libvirt", "qemu", f"{name}.pid")) as f:
            return int(f.read())

    def destroy(self, name: str) -> None:
        self.virsh("destroy", name)

    def state(self, name: str) -> str:
        return self.virsh("domstate", name).stdout.strip()
