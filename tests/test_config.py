"""Configuration files (conf/<driver>.toml, in the manner of libvirt's qemu-lockd.conf), the
`lockfsm config` command, and the disk-lease keys every driver reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lockfsm
from lockfsm import InvalidArgument, ResourceType
from lockfsm.daemon import config
from lockfsm.embed.standin import Host, make_disks
from tests.support.helpers import lockspace_locks

CONF = Path(__file__).resolve().parent.parent / "conf"
DRIVERS = ("fcntl", "sanlock", "etcd", "nop")


@pytest.mark.parametrize("driver", DRIVERS)
def test_each_driver_has_a_documented_file_that_loads(driver: str) -> None:
    """Every key of the driver is in its file with a line of documentation; the file as shipped
    (every key commented out: the defaults) is a valid configuration, except that sanlock needs
    its host_id, which the error names with the file."""
    path = CONF / f"{driver}.toml"
    text = path.read_text()
    keys = {**config.COMMON_KEYS, **lockfsm.backends.module(driver).BACKEND.config_keys}
    for key, spec in keys.items():
        assert f"# {key} = " in text and f"# {spec.doc}\n" in text, key
    if os.geteuid() == 0:  # the files show root's default directories
        assert text == config.example(driver) + "\n", f"{path} is stale: lockfsm config {driver}"
    if driver == "sanlock":
        with pytest.raises(InvalidArgument, match=rf"'host_id' in {path}: must be set"):
            config.load_for(driver, str(path))
    else:
        config.load_for(driver, str(path))


def test_uncommented_values_are_checked(workdir: str) -> None:
    """Uncomment the sanlock file's values (host_id given): it loads; a bad value names its key
    and the file."""
    text = (CONF / "sanlock.toml").read_text()
    lines = [
        line[2:] if line.startswith("# ") and " = " in line and "<unset>" not in line else line
        for line in text.splitlines()
    ]
    good = os.path.join(workdir, "sanlock.toml")
    Path(good).write_text("\n".join(lines).replace("host_id = ...    (required)", "host_id = 7"))
    assert config.load_for("sanlock", good)["host_id"] == 7
    bad = os.path.join(workdir, "bad.toml")
    Path(bad).write_text(Path(good).read_text().replace("io_timeout = 10", "io_timeout = 0"))
    with pytest.raises(InvalidArgument, match=rf"'io_timeout' in {bad}: 0 is not"):
        config.load_for("sanlock", bad)


def test_the_config_command(workdir: str) -> None:
    run = [sys.executable, "-m", "lockfsm", "config"]
    out = subprocess.run([*run, "fcntl"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == config.example("fcntl") + "\n"
    bad = os.path.join(workdir, "x.toml")
    Path(bad).write_text('lock_failure = "restart"\n')
    out = subprocess.run([*run, "fcntl", "--check", bad], capture_output=True, text=True)
    assert out.returncode == 2 and "'lock_failure'" in out.stderr and bad in out.stderr
    out = subprocess.run([*run, "zfs"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown driver 'zfs'" in out.stderr


@pytest.mark.parametrize("key", ["auto_disk_leases", "require_lease_for_disks"])
def test_lease_keys_are_booleans(key: str, workdir: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"'{key}': 'yes' is not true or false"):
        lockfsm.load_driver("fcntl", {key: "yes", "run_dir": workdir})


def test_without_auto_disk_leases_only_explicit_leases_are_taken(
    hosts: type[Host], workdir: str, lockspace: str
) -> None:
    """auto_disk_leases off: a disk takes no lease, an explicit lease does; and
    require_lease_for_disks (on by default then) refuses a guest with disks and no lease."""
    host = hosts(auto_disk_leases=False, domain_lease=False)  # type: ignore[call-arg]
    disks = make_disks(workdir, "a.img")
    bare = host.manager("vm", "6c1f9a3e-0d3b-4b8e-9f55-2f4a1c0de001", disks)
    with pytest.raises(InvalidArgument, match="require_lease_for_disks: 'vm' has disks"):
        _ = bare.supervisor_args
    mgr = host.manager("vm", "6c1f9a3e-0d3b-4b8e-9f55-2f4a1c0de001", disks)
    mgr.register_resource(ResourceType.LEASE, "vms:vm-lease")
    host.launch(mgr)
    mgr.get_child(timeout=10)
    assert len(lockspace_locks(lockspace)) == 1, "one lease: the explicit one, not the disk's"
    mgr.shutdown()


def test_require_lease_for_disks_can_be_turned_off(
    hosts: type[Host], workdir: str, lockspace: str
) -> None:
    host = hosts(  # type: ignore[call-arg]
        auto_disk_leases=False, require_lease_for_disks=False, domain_lease=False
    )
    mgr = host.manager("vm", "6c1f9a3e-0d3b-4b8e-9f55-2f4a1c0de001", make_disks(workdir, "a.img"))
    host.launch(mgr)
    mgr.get_child(timeout=10)
    assert lockspace_locks(lockspace) == {}
    mgr.shutdown()


def test_the_domain_lease_keeps_a_guest_on_one_host(
    hosts: type[Host], workdir: str, lockspace: str
) -> None:
    """domain_lease (on by default): a guest whose disks are all shared still runs on one host
    at a time -- its uuid's lease refuses a second start -- and the lease is lockfsm's own
    (a daemon cannot register it)."""
    a, b = hosts(), hosts()  # type: ignore[call-arg]
    shared = make_disks(workdir, "s.img")
    g = a.start("vm", shared=shared)
    mgr = b.manager("vm", g.uuid, shared=shared)
    b.launch(mgr)
    with pytest.raises(lockfsm.LeaseConflict, match="the own lease of guest " + g.uuid):
        mgr.get_child(timeout=10)
    other = b.start("vm2", shared=shared)  # another guest shares the disk
    assert other.pid is not None
    bad = b.driver.new_manager()
    with pytest.raises(InvalidArgument, match="'lockfsm-domains' is lockfsm's own"):
        bad.register_resource(ResourceType.LEASE, f"lockfsm-domains:{g.uuid}")
