"""Real etcd servers and lease agents for the tests and the benchmarks: members on loopback with
free non-default ports, each in its own session and data directory, stopped by pid; one
``lockfsm-etcd-agent`` per simulated host, also in its own session (a :class:`Site`: the agent and
the stand-in hosts, daemons, that use it).  Faults are real: SIGSTOP/SIGCONT, kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from lockfsm.backends.etcd import AGENT_SOCKET, agent_call
from lockfsm.backends.etcd.client import SyncEtcd
from lockfsm.embed.standin import Host, short_tmpdir
from tests.support.helpers import wait_until

if TYPE_CHECKING:
    from lockfsm.supervisor.leases import LeaseMachines

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


def toml_text(config: dict[str, Any]) -> str:
    """A TOML file of ``config`` (strings, numbers and lists of strings only)."""
    lines = []
    for key, val in config.items():
        if val is None:
            continue
        lines.append(f"{key} = {json.dumps(val)}")
    return "\n".join(lines) + "\n"


class Member:
    """One etcd server process."""

    def __init__(self, base: str, name: str, client: int, peer: int, cluster: str) -> None:
        self.name, self.client, self.peer = name, client, peer
        self.data = os.path.join(base, name)
        self.log_path = os.path.join(base, f"{name}.log")
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client}"

    def start(self, new: bool = True) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *("etcd", "--name", self.name, "--data-dir", self.data),
                    *("--listen-client-urls", f"http://{self.endpoint}"),
                    *("--advertise-client-urls", f"http://{self.endpoint}"),
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
    """``size`` etcd members on loopback, one cluster."""

    def __init__(self, size: int) -> None:
        self.base = short_tmpdir("lfe")
        ports = free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        spec = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        self.members = [
            Member(self.base, n, ports[2 * i], ports[2 * i + 1], spec) for i, n in enumerate(names)
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

    def client(self, members: list[Member] | None = None) -> SyncEtcd:
        from lockfsm.backends.etcd import parse_endpoint

        return SyncEtcd([parse_endpoint(m.endpoint) for m in members or self.members], 0.5)

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


def agent_command() -> list[str]:
    """``lockfsm-etcd-agent`` next to this Python, else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "lockfsm-etcd-agent")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "lockfsm.agent"]


class Agent:
    """One simulated host's lease agent: a real ``lockfsm-etcd-agent`` process with the
    host's configuration file (its run dir holds the agent's socket)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        self.run_dir = config["run_dir"]
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self.path = config.get("agent_socket") or os.path.join(self.run_dir, AGENT_SOCKET)
        self.conf_file = os.path.join(self.run_dir, "etcd.toml")
        with open(self.conf_file, "w") as f:
            f.write(toml_text(self.config))
        self.log_path = os.path.join(self.run_dir, "agent.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*agent_command(), self.conf_file],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self.ready, 15, f"the lease agent of {self.config['host_name']}")
        except BaseException:
            self.kill()
            raise

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited {self.proc.returncode}: {self.log()}")
        try:
            return agent_call(self.path, {"op": "status"}, 1.0)["lease"] is not None
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        return agent_call(self.path, {"op": "status"}, 5.0)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a stopped agent is continued first), kill -9 if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


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
        self.agent.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def keys_under(client: SyncEtcd, prefix: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(lease key, kind "x"/"r"/"s", value as JSON) of every key of a lockspace prefix."""
    root = f"{prefix}L/".encode()
    for kv in client.prefix(root):
        lease_key, rest = kv.key[len(root) :].decode().split("/", 1)
        yield lease_key, rest[:1], json.loads(kv.value)


def held(client: SyncEtcd, prefix: str) -> dict[str, dict[str, Any]]:
    """lease key -> {kind: holder value} for every key of the lockspace."""
    found: dict[str, dict[str, Any]] = {}
    for key, kind, data in keys_under(client, prefix):
        found.setdefault(key, {})[kind] = data
    return found
