"""``lockfsm-etcd-agent``: the per-host lease agent of the etcd backend.

One per host, started with the host's lockfsm configuration file (``lockfsm-etcd-agent
/etc/lockfsm/etcd.toml``; the systemd unit ``conf/lockfsm-etcd-agent.service`` does).  It holds
the host's one connection to etcd (every member an endpoint, TLS and authentication as
configured) and the host's one etcd lease, and serves the host's supervisors on a Unix socket.
Why an agent and not each supervisor, and the fencing timeline: specs/PROTOCOL.md, "The etcd
backend".  Its parts, one job each:

* :class:`~lockfsm.agent.keeper.HostLeaseKeeper`: the host's etcd lease, kept alive;
* :class:`~lockfsm.agent.store.LeaseStore`: the lockspace's keys (their schema:
  :class:`~lockfsm.agent.keys.KeySchema`), one transaction per operation;
* :class:`~lockfsm.agent.server.Agent`: the supervisors' connections and requests;
* :mod:`~lockfsm.agent.preflight`: the checks before it serves;
* :mod:`~lockfsm.agent.hoststate`: the lease kept across restarts.

Exit status: 0 after a stop (SIGTERM, SIGINT: the lease stays for the next agent) or
``--release-all``; 1 when it cannot serve (etcd unreachable, certificates, permissions, another
agent runs); 2 for a bad command line or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from lockfsm.backends import etcd as backend
from lockfsm.daemon import config as configuration
from lockfsm.errors import BackendError, LockFSMError

if TYPE_CHECKING:
    from lockfsm.agent.server import Agent

__all__ = ["main"]

EXIT_CANNOT_SERVE = 1
EXIT_USAGE = 2


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("lockfsm")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def notify_ready() -> None:
    """Tell systemd (Type=notify) the agent serves: it listens and holds its lease."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"READY=1\nSTATUS=serving its supervisors", address)
        except OSError as e:
            logging.getLogger("lockfsm.agent").warning("cannot notify systemd: %s", e)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lockfsm-etcd-agent",
        description="The etcd lease agent of one host: holds the host's etcd lease and serves "
        "the host's lockfsm supervisors.",
        epilog="SIGTERM stops the agent and keeps the lease: a new agent started before the "
        "guests' deadline takes it up, and no guest is stopped. SIGHUP is ignored. "
        "Exit status: 0 stopped, 1 cannot serve, 2 usage or configuration.",
    )
    p.add_argument("config", help="the host's lockfsm configuration file (the etcd driver's keys)")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="what the agent logs (to stderr; default info)",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument(
        "--check",
        action="store_true",
        help="check the configuration, the certificates and the permissions against etcd, "
        "then exit (0: this host's agent can serve)",
    )
    action.add_argument(
        "--release-all",
        action="store_true",
        help="tell this host's running agent to give everything up (a real host shutdown, "
        "after the guests are stopped): its etcd lease is revoked and every key of the host "
        "goes; the agent exits",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lockfsm-etcd-agent``."""
    try:
        args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s lockfsm-etcd-agent[%(process)d]: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        conf = configuration.load({**configuration.COMMON_KEYS, **backend.CONFIG_KEYS}, args.config)
        if args.release_all:
            reply = backend.agent_call(backend.agent_socket(conf), {"op": "release_host"}, 10.0)
            print(f"lockfsm-etcd-agent: released ({reply.get('released', 0)} lease(s) let go)")
            return 0
        try:
            from lockfsm.agent.server import Agent
        except ImportError as e:
            raise BackendError(
                f"the etcd agent needs the etcd client ({e.name}): pip install 'lockfsm[etcd]'"
            ) from None
        agent = Agent(conf)
    except BackendError as e:
        print(f"lockfsm-etcd-agent: {e}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    except LockFSMError as e:
        print(f"lockfsm-etcd-agent: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.check:
            asyncio.run(_check(agent))
            print(f"lockfsm-etcd-agent: {args.config}: ok, etcd {agent.etcd.endpoint} serves it")
            return 0
        asyncio.run(agent.run(notify_ready))
    except BackendError as e:
        print(f"lockfsm-etcd-agent: {e}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    return 0


async def _check(agent: Agent) -> None:
    from lockfsm.agent import preflight

    try:
        await preflight.check(agent.etcd, agent.keys, agent.conf, 2 * agent.budget)
    finally:
        await agent.etcd.close()


if __name__ == "__main__":
    sys.exit(main())
