"""``lockfsm-etcd-agent``: the per-host lease agent of the etcd backend.

One per host, started with the host's lockfsm configuration file (``lockfsm-etcd-agent
/etc/lockfsm/etcd.toml``).  It holds the host's one connection to etcd (every member an
endpoint, see lockfsm/backends/etcd/client.py) and the host's one etcd lease, and serves the
host's supervisors on a Unix socket.  Why an agent and not each supervisor, and the fencing
timeline: specs/PROTOCOL.md, "The etcd backend".  Its parts, one job each:

* :class:`~lockfsm.agent.keeper.HostLeaseKeeper`: the host's etcd lease, kept alive;
* :class:`~lockfsm.agent.store.LeaseStore`: the lockspace's keys (their schema:
  :class:`~lockfsm.agent.keys.KeySchema`), one transaction per operation;
* :class:`~lockfsm.agent.server.Agent`: the supervisors' connections and requests.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from lockfsm.agent.server import Agent
from lockfsm.backends import etcd as backend
from lockfsm.daemon import config as configuration
from lockfsm.errors import BackendError, LockFSMError

__all__ = ["Agent", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lockfsm-etcd-agent CONFIG``: CONFIG is the host's lockfsm TOML file
    (the keys of the etcd driver).  Exit status 2 for a bad command line or configuration, 1
    when the agent cannot serve."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: lockfsm-etcd-agent CONFIG.toml", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s lockfsm-etcd-agent[%(process)d]: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        conf = configuration.load({**configuration.COMMON_KEYS, **backend.CONFIG_KEYS}, args[0])
        agent = Agent(conf)
    except LockFSMError as e:
        print(f"lockfsm-etcd-agent: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(agent.run())
    except BackendError as e:
        print(f"lockfsm-etcd-agent: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
