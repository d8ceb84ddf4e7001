"""Before the agent serves: can it reach etcd, does it trust etcd, does etcd trust it, and may it
read and write the lockspace's keys?  Each failure is one clear sentence naming the cause.

The checks, in order: a status request to every member (TLS handshake, certificates), then a
read of the lockspace's prefix, then a transaction that would write under it (its compare never
holds, so nothing is written, but etcd checks the permission of every operation of a
transaction before running it).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from lockfsm.agent.keys import KeySchema
from lockfsm.backends.etcd.client import Etcd, EtcdError, create, get, prefix_end, put
from lockfsm.errors import BackendError


def certificate_cn(path: str) -> str | None:
    """The CN of the certificate at ``path``, or None if it cannot be read."""
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return None
    for rdn in decoded.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def who(config: Mapping[str, Any]) -> str:
    """How etcd knows this agent: its user, or its certificate's CN."""
    if config.get("user"):
        return f"user {config['user']!r}"
    if config.get("cert_file"):
        cn = certificate_cn(config["cert_file"])
        return f"user {cn!r} (the CN of {config['cert_file']})" if cn else f"{config['cert_file']}"
    return "an anonymous client"


def explain(error: BaseException, config: Mapping[str, Any], endpoint: str) -> str:
    """One sentence saying why etcd refused: certificates, authentication, permissions."""
    text = str(error)
    lower = text.lower()
    if "certificate_verify_failed" in lower or "certificate verify failed" in lower:
        ca = config.get("ca_file") or "the system's CAs"
        return (
            f"the certificate of etcd member {endpoint} is not signed by a CA of ca_file "
            f"({ca}), or does not name the host it was reached at"
        )
    refused = ("certificate_required", "bad_certificate", "bad certificate", "tsi_data_corrupted")
    if any(s in lower for s in refused):
        if not config.get("cert_file"):
            return (
                f"etcd member {endpoint} requires a client certificate: set cert_file and key_file"
            )
        return (
            f"etcd member {endpoint} refused this host's client certificate "
            f"({config['cert_file']}): it is not signed by a CA etcd trusts"
        )
    if "handshake" in lower or ("ssl" in lower and "http" in endpoint):
        return f"no TLS connection to etcd member {endpoint}: {text[:200]}"
    if "authentication failed" in lower or "invalid user id or password" in lower:
        return f"etcd refused {who(config)}: wrong user name or password"
    if "permission denied" in lower:
        return (
            f"etcd refused {who(config)} the keys under {config['prefix']!r}: grant it a role "
            "with readwrite on that prefix (README, section 'etcd in production')"
        )
    if "user name is empty" in lower or "user name not found" in lower:
        return f"etcd has auth enabled and does not know {who(config)}: add the user"
    return f"etcd member {endpoint}: {text[:300]}"


async def check(etcd: Etcd, keys: KeySchema, config: Mapping[str, Any], budget: float) -> None:
    """Raise BackendError with the cause if this agent cannot use the lockspace."""
    endpoint = etcd.endpoint
    try:
        await etcd.status(budget)
    except EtcdError as e:
        raise BackendError(explain(e, config, etcd.endpoint or endpoint)) from None
    probe = keys.prefix + b"agent-probe/" + str(config["host_name"]).encode()
    try:
        await etcd.range(keys.root, prefix_end(keys.root), budget)
        # A compare that never holds: etcd checks every operation's permission, writes nothing.
        await etcd.txn([create(probe, -1)], [put(probe, b"x")], [get(probe)], budget, True)
    except EtcdError as e:
        raise BackendError(explain(e, config, etcd.endpoint)) from None
