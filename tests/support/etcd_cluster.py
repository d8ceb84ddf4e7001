"""Real etcd servers and lease agents for the tests and the benchmarks: members on loopback with
free non-default ports, each in its own session and data directory, stopped by pid; one
``lockfsm-etcd-agent`` per simulated host, also in its own session (a :class:`Site`: the agent and
the stand-in hosts, daemons, that use it).  Faults are real: SIGSTOP/SIGCONT, kill -9."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from lockfsm.backends.etcd.client import SyncEtcd
from lockfsm.embed.standin import Host, short_tmpdir
from lockfsm.fuzz.etcd import Agent, agent_command, keys_under, toml_text
from lockfsm.fuzz.procs import wait_until

if TYPE_CHECKING:
    from lockfsm.supervisor.leases import LeaseMachines
    from tests.support.certs import CA

__all__ = ["Agent", "Cluster", "Site", "agent_command", "held", "keys_under", "toml_text"]

#: The agents' TTL where a test does not say (long enough never to fence on a busy machine).
TTL = 4
# Fast elections: a dead leader is replaced in well under a second, and etcd's minimum lease
# TTL (1.5 election timeouts) stays below the tests' TTLs.
HEARTBEAT_MS = 50
ELECTION_MS = 500


def free_ports(count: int) -> list[int]:
    """Ports the kernel calls free now (bound to port 0, then let go)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Member:
    """One etcd server process."""

    def __init__(
        self, base: str, name: str, client: int, peer: int, cluster: str, tls: CA | None = None
    ) -> None:
        self.name, self.client, self.peer = name, client, peer
        self.tls = tls
        self.data = os.path.join(base, name)
        self.log_path = os.path.join(base, f"{name}.log")
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def endpoint(self) -> str:
        """The client URL: ``127.0.0.1:port``, or ``https://127.0.0.1:port`` with TLS."""
        return f"https://127.0.0.1:{self.client}" if self.tls else f"127.0.0.1:{self.client}"

    def start(self, new: bool = True) -> None:
        url = self.endpoint if self.tls else f"http://{self.endpoint}"
        tls: list[str] = []
        if self.tls is not None:  # clients must show a certificate of the CA (etcd's mTLS)
            pair = self.tls.issue(f"etcd-{self.name}", server=True)
            tls = [
                *("--cert-file", pair.cert, "--key-file", pair.key),
                *("--trusted-ca-file", self.tls.cert, "--client-cert-auth"),
            ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *("etcd", "--name", self.name, "--data-dir", self.data),
                    *("--listen-client-urls", url, "--advertise-client-urls", url),
                    *tls,
                    *("--listen-peer-urls", f"http://127.0.0.1:{self.peer}"),
                    *("--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}"),
                    *("--initial-cluster", self.cluster),
                    *("--initial-cluster-state", "new" if new else "existing"),
                    *("--heartbeat-interval", str(HEARTBEAT_MS)),
                    *("--election-timeout", str(ELECTION_MS)),
                    *("--logger", "zap", "--log-level", "warn"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.stopped = False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        self.stopped = sig == signal.SIGSTOP

    def kill(self) -> None:
        """kill -9 by pid (a stopped member is killed too)."""
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.stopped = False


class Cluster:
    """``size`` etcd members on loopback, one cluster; with ``tls``, clients speak TLS to them and
    must show a client certificate that CA signed (``--client-cert-auth``), and the cluster's
    own :meth:`client` is ``root`` (``tls.issue("root")``)."""

    def __init__(self, size: int, tls: CA | None = None) -> None:
        self.base = short_tmpdir("lfe")
        self.tls = tls
        self.root = tls.issue("root") if tls is not None else None
        ports = free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        spec = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        self.members = [
            Member(self.base, n, ports[2 * i], ports[2 * i + 1], spec, tls)
            for i, n in enumerate(names)
        ]
        self.prefix_count = 0
        try:
            for m in self.members:
                m.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def tls_config(self, cn: str) -> dict[str, str]:
        """The driver settings of a host whose client certificate has CN ``cn``."""
        assert self.tls is not None
        pair = self.tls.issue(cn)
        return {"ca_file": self.tls.cert, "cert_file": pair.cert, "key_file": pair.key}

    def client(self, members: list[Member] | None = None) -> SyncEtcd:
        """A client of ``members`` (all by default); with TLS, as ``root``."""
        from lockfsm.backends.etcd import credentials, parse_endpoint
        from lockfsm.backends.etcd.client import PLAIN

        creds = PLAIN
        if self.tls is not None and self.root is not None:
            creds = credentials(
                {"endpoints": self.endpoints, "ca_file": self.tls.cert}
                | {"cert_file": self.root.cert, "key_file": self.root.key}
            )
        return SyncEtcd([parse_endpoint(m.endpoint) for m in members or self.members], 0.5, creds)

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` against the cluster (as ``root`` with TLS); its output.  Raises
        AssertionError naming the command when it fails."""
        cmd = ["etcdctl", "--endpoints", ",".join(m.endpoint for m in self.members)]
        if self.tls is not None and self.root is not None:
            cmd += ["--cacert", self.tls.cert, "--cert", self.root.cert, "--key", self.root.key]
        proc = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}
        )
        if proc.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def enable_auth(self, roles: dict[str, str], users: dict[str, str | None]) -> None:
        """etcd's authentication, as the README tells an operator: a ``root`` user, ``roles``
        (name -> the key prefix it may read and write), ``users`` (name -> its role or None),
        then ``auth enable``.  Users have no password: a client certificate's CN names them."""
        self.etcdctl("user", "add", "root", "--new-user-password=not-used-with-certificates")
        self.etcdctl("user", "grant-role", "root", "root")
        for role, prefix in roles.items():
            self.etcdctl("role", "add", role)
            self.etcdctl("role", "grant-permission", role, "--prefix=true", "readwrite", prefix)
        for user, role in users.items():
            self.etcdctl("user", "add", user, "--new-user-password=not-used-with-certificates")
            if role is not None:
                self.etcdctl("user", "grant-role", user, role)
        self.etcdctl("auth", "enable")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Until a put through every running member succeeds."""
        for m in self.members:
            if m.stopped or m.proc is None or m.proc.poll() is not None:
                continue
            with self.client([m]) as c:

                def writes(c: SyncEtcd = c) -> bool:
                    from lockfsm.backends.etcd.client import put

                    try:
                        c.txn([], [put(b"/health", b"ok")])
                        return True
                    except Exception:
                        time.sleep(0.05)
                        return False

                wait_until(writes, timeout, f"etcd member {m.name} to serve writes")

    def leader(self) -> Member:
        """The member that is leader now, as the members report."""
        for m in self.members:
            if m.stopped or m.proc is None or m.proc.poll() is not None:
                continue
            with self.client([m]) as c:
                try:
                    me, leader = c.status()
                except Exception:
                    continue
            if me == leader:
                return m
        raise AssertionError("no etcd member is leader")

    def fresh_prefix(self) -> str:
        """A key prefix no other test used (one cluster serves many tests)."""
        self.prefix_count += 1
        return f"/t{os.getpid()}x{self.prefix_count}/"

    def stop(self) -> None:
        for m in self.members:
            m.kill()
        shutil.rmtree(self.base, ignore_errors=True)


class Site:
    """A simulated host: its lease agent (its own directory, the host's settings: the cluster's
    endpoints unless ``endpoints`` says, ``ttl``, ``prefix`` and ``config``), and the stand-in
    hosts (daemons) that use it."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        prefix: str,
        ttl: int = TTL,
        endpoints: list[str] | None = None,
        **config: Any,
    ) -> None:
        self.name = name
        self.dir = short_tmpdir("lfa")
        self.config: dict[str, Any] = {
            "endpoints": endpoints or cluster.endpoints,
            "ttl": ttl,
            "host_name": name,
            "prefix": prefix,
            "agent_socket": os.path.join(self.dir, "agent.sock"),
            **config,
        }
        try:
            self.agent = Agent({"run_dir": self.dir, **self.config})
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.hosts: list[Host] = []

    def host(self, **extra: Any) -> Host:
        """A daemon on this host (its own run dir), talking to this host's agent; ``extra``
        goes to the stand-in host (driver settings, ``stderr``)."""
        host = Host("etcd", self.dir, **self.config, **extra)
        self.hosts.append(host)
        return host

    def holder(self) -> LeaseMachines:
        """Lease machines and their holder in this process, as a supervisor of this host would
        have them."""
        from lockfsm.backends.etcd import EtcdHolder
        from lockfsm.supervisor.leases import LeaseMachines

        leases = LeaseMachines("etcd", {"run_dir": self.dir, **self.config})
        assert isinstance(leases.holder, EtcdHolder)
        return leases

    def close(self) -> None:
        for host in self.hosts:
            host.cleanup()
        self.hosts.clear()
        self.agent.release()
        shutil.rmtree(self.dir, ignore_errors=True)


def held(client: SyncEtcd, prefix: str) -> dict[str, dict[str, Any]]:
    """lease key -> {kind: holder value} for every key of the lockspace."""
    found: dict[str, dict[str, Any]] = {}
    for key, kind, data in keys_under(client, prefix):
        found.setdefault(key, {})[kind] = data
    return found
