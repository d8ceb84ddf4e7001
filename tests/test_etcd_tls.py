"""etcd in production, part 1: TLS and credentials (issue 15).

Real etcd servers started with ``--cert-file --key-file --trusted-ca-file --client-cert-auth``
(one member, and three), certificates made by the test with openssl, etcd's authentication
enabled with the README's ``etcdctl`` commands (a ``root`` user, a role on lockfsm's prefix, one
user per host named by its certificate's CN).  A host with good credentials starts, hot-plugs and
migrates guests over TLS; each bad credential stops the agent at start (and ``--check``) with one
line naming the cause, and leaves nothing in etcd; ``load_driver`` then fails too, and no guest
starts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import lockfsm
from lockfsm import DomainState, ResourceType
from lockfsm.embed.standin import short_tmpdir
from tests.support.certs import CA
from tests.support.etcd_cluster import Cluster, Site, agent_command, held, toml_text
from tests.support.helpers import HostsPair, key_of
from tests.support.needs import require

PREFIX = "/lockfsm-tls/"
ROLES = {"lockfsm": PREFIX, "elsewhere": "/another-app/"}
USERS = {"host-a": "lockfsm", "host-b": "lockfsm", "no-role": None, "other-prefix": "elsewhere"}


@pytest.fixture(scope="module")
def ca() -> CA:
    require("openssl")
    return CA(short_tmpdir("lfc"))


@pytest.fixture(scope="module", params=[1, 3], ids=["1-member", "3-members"])
def tls(request: pytest.FixtureRequest, ca: CA) -> Iterator[Cluster]:
    """A TLS etcd cluster with client-certificate authentication and etcd auth enabled."""
    require("etcd")
    require("etcdctl")
    cluster = Cluster(request.param, ca)
    try:
        cluster.enable_auth(ROLES, USERS)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def sites(tls: Cluster) -> Iterator[list[Site]]:
    """Hosts A and B, each with its own certificate (CN host-a, host-b)."""
    made = [Site(tls, name, PREFIX, **tls.tls_config(name)) for name in ("host-a", "host-b")]
    yield made
    for site in made:
        site.close()


def test_guests_start_hot_plug_and_migrate_over_tls(
    tls: Cluster, sites: list[Site], disks: list[str]
) -> None:
    """The endpoints are https://, the members' certificates are verified against ca_file, each
    host shows its own certificate, and the keys (read as root) name each host."""
    assert all(e.startswith("https://") for e in sites[0].config["endpoints"])
    a, b = sites[0].host(), sites[1].host()
    pair = HostsPair(a, b)
    g = pair.start("vm", disks[:1])
    g.mgr.acquire_resource(ResourceType.DISK, disks[1])  # hot-plug
    keys = {key_of(a, d) for d in disks[:2]}
    with tls.client() as db:
        assert {k: v["x"]["host"] for k, v in held(db, PREFIX).items() if k in keys} == {
            k: "host-a" for k in keys
        }
    with pytest.raises(lockfsm.LeaseConflict, match="host-a"):
        b.start("vm", disks[:1])
    pair.prepare()
    tgt = pair.incoming_start()
    pair.migrate()
    assert (g.mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)
    with tls.client() as db:
        assert {k: v["x"]["host"] for k, v in held(db, PREFIX).items() if k in keys} == {
            k: "host-b" for k in keys
        }
    g.mgr.shutdown()
    tgt.mgr.shutdown()


def test_a_rotated_certificate_takes_effect_at_the_agent_restart_and_stops_no_guest(
    tls: Cluster, ca: CA, sites: list[Site], disks: list[str]
) -> None:
    """Certificate rotation as an operator does it: new key and certificate files written over
    the old ones, then ``systemctl restart`` (SIGTERM, a new agent).  The new agent connects with
    the new certificate, resumes the host's lease; the guest keeps running, its keys unchanged;
    a new guest starts."""
    site = sites[0]
    a = site.host()
    g = a.start("vm", disks[:1])
    with tls.client() as db:
        before = held(db, PREFIX)
    with open(site.config["cert_file"], "rb") as f:
        old_cert = f.read()
    lease = site.agent.status()["lease"]
    rotated = ca.issue("host-a")  # the same paths: new key, new certificate
    assert rotated.cert == site.config["cert_file"] and rotated.key == site.config["key_file"]
    with open(rotated.cert, "rb") as f:
        assert f.read() != old_cert
    site.agent.stop()
    site.agent.start()
    assert site.agent.status()["lease"] == lease
    assert g.pid is not None and g.proc.poll() is None
    with tls.client() as db:
        assert held(db, PREFIX) == before
    h = a.start("vm2", disks[1:2])
    assert h.mgr.state is DomainState.STARTED
    h.mgr.shutdown()
    g.mgr.shutdown()


def bad_credentials(tls: Cluster, ca: CA, case: str) -> dict[str, Any]:
    """The TLS settings of host ``host-a`` gone wrong in one way."""
    good = tls.tls_config("host-a")
    if case == "wrong CA":
        stranger = CA(os.path.join(ca.dir, "stranger"), "stranger-ca")
        return {**good, "ca_file": stranger.cert}
    if case == "no client certificate":
        return {"ca_file": good["ca_file"]}
    if case == "client certificate of another CA":
        stranger = CA(os.path.join(ca.dir, "stranger2"), "stranger2-ca")
        pair = stranger.issue("host-a")
        return {**good, "cert_file": pair.cert, "key_file": pair.key}
    if case == "user without the role":
        return tls.tls_config("no-role")
    assert case == "role on another prefix"
    return tls.tls_config("other-prefix")


CASES = {
    "wrong CA": "is not signed by a CA of ca_file",
    "no client certificate": "requires a client certificate: set cert_file and key_file",
    "client certificate of another CA": "refused this host's client certificate",
    "user without the role": "etcd refused user 'no-role'",
    "role on another prefix": "etcd refused user 'other-prefix'",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_credentials_stop_the_agent_at_start_naming_the_cause(
    tls: Cluster, ca: CA, case: str, disks: list[str]
) -> None:
    """Agent start and ``--check`` both exit 1 with one line naming the cause; etcd holds no
    key of the host afterwards; load_driver (no agent serves) fails, so no guest starts."""
    if case.startswith("wrong CA") and len(tls.members) == 3:
        pytest.skip("one cluster size is enough for the client-side checks")
    run_dir = short_tmpdir("lfa")
    config = {
        "endpoints": tls.endpoints,
        "ttl": 4,
        "host_name": "host-a",
        "prefix": PREFIX,
        "run_dir": run_dir,
        **bad_credentials(tls, ca, case),
    }
    path = os.path.join(run_dir, "etcd.toml")
    with open(path, "w") as f:
        f.write(toml_text(config))
    with tls.client() as db:
        before = db.prefix(PREFIX.encode())
    for extra in (["--check"], []):
        proc = subprocess.run(
            [*agent_command(), *extra, path], capture_output=True, text=True, timeout=60
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, (extra, proc.stderr)
        assert len(lines) == 1 and CASES[case] in lines[0], (extra, proc.stderr)
        assert "Traceback" not in proc.stderr
    with tls.client() as db:
        assert held(db, PREFIX) == {}  # no lease key
        assert db.prefix(PREFIX.encode()) == before  # nothing written at all
    with pytest.raises(lockfsm.BackendError, match="lockfsm-etcd-agent"):
        lockfsm.load_driver("etcd", config)


def agent_check(workdir: str, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = os.path.join(workdir, "etcd.toml")
    with open(path, "w") as f:
        f.write(toml_text({"run_dir": workdir, "host_name": "host-a", **config}))
    return subprocess.run(
        [*agent_command(), "--check", path], capture_output=True, text=True, timeout=60
    )


def test_http_endpoints_refuse_tls_files(workdir: str, ca: CA) -> None:
    """A configuration error: exit status 2, one line naming the key."""
    out = agent_check(workdir, {"endpoints": ["127.0.0.1:2379"], "ca_file": ca.cert})
    assert out.returncode == 2, out.stderr
    assert "'ca_file' is for https:// endpoints" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_private_key_readable_by_others_is_refused(workdir: str, ca: CA) -> None:
    pair = ca.issue("loose")
    os.chmod(pair.key, 0o644)
    out = agent_check(
        workdir,
        {
            "endpoints": ["https://127.0.0.1:2379"],
            "ca_file": ca.cert,
            "cert_file": pair.cert,
            "key_file": pair.key,
        },
    )
    assert out.returncode == 2, out.stderr
    assert "key_file" in out.stderr and pair.key in out.stderr
