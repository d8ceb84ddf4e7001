"""Certificates for TLS tests, made with openssl: a CA, server certificates for loopback, client
certificates whose CN is an etcd user.  Pytest-free (tests and benchmarks use it)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


class CA:
    """A certificate authority in ``directory`` (made on construction)."""

    def __init__(self, directory: str, name: str = "lockfsm-test-ca") -> None:
        self.dir = directory
        self.name = name
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.cert = os.path.join(directory, f"{name}.crt")
        self.key = os.path.join(directory, f"{name}.key")
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", self.key, "-out", self.cert,
        )  # fmt: skip
        os.chmod(self.key, 0o600)

    def issue(self, cn: str, server: bool = False) -> Pair:
        """A certificate for ``cn`` signed by this CA: a server's names 127.0.0.1 and localhost
        (and serves TLS), a client's is for client authentication (etcd takes its CN)."""
        base = os.path.join(self.dir, f"{cn}{'-server' if server else ''}")
        ext = f"{base}.ext"
        with open(ext, "w") as f:
            if server:
                f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
                f.write("extendedKeyUsage=serverAuth,clientAuth\n")
            else:
                f.write("extendedKeyUsage=clientAuth\n")
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={cn}", "-keyout", f"{base}.key", "-out", f"{base}.csr",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{base}.csr", "-CA", self.cert, "-CAkey", self.key,
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{base}.crt",
        )  # fmt: skip
        os.chmod(f"{base}.key", 0o600)
        return Pair(f"{base}.crt", f"{base}.key")
