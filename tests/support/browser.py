"""A real headless browser for the tests: Debian's Chromium, driven by its chromedriver over
plain HTTP WebDriver (urllib; no client library).  chromedriver runs in its own session on a free
loopback port and is stopped by pid, with the browser it started."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import suppress
from typing import Any

from tests.support.etcd_cluster import free_ports

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
]


def missing() -> str | None:
    """What is missing for a browser here, or None."""
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} (Debian: apt install chromium chromium-driver)"
    return None


class Browser:
    """One chromedriver and one Chromium session; :meth:`close` ends both."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="lfchrome")
        (port,) = free_ports(1)
        self.base = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen(
            [shutil.which("chromedriver") or "chromedriver", f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.session: str | None = None
        try:
            self._wait_ready()
            caps = {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": shutil.which("chromium") or CHROMIUM,
                            "args": [*FLAGS, f"--user-data-dir={self.profile}"],
                        },
                    }
                }
            }
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline or self.driver.poll() is not None:
                raise RuntimeError("chromedriver did not come up")
            time.sleep(0.1)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read()[:500]!r}") from None
        if isinstance(answer, dict) and "value" in answer:
            value = answer["value"]
            if "sessionId" in answer and isinstance(value, dict):
                value.setdefault("sessionId", answer["sessionId"])
            return value
        return answer

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def open(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """The value of ``script`` (a function body) run in the page."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def click(self, css: str) -> None:
        """A real click (WebDriver's element click) on the element ``css`` selects."""
        found = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        element = next(iter(found.values()))
        self._call("POST", self._s(f"/element/{element}/click"), {})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", self._s("/screenshot")))

    def close(self) -> None:
        if self.session is not None:
            with suppress(Exception):
                self._call("DELETE", self._s(""))
            self.session = None
        if self.driver.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.driver.pid, signal.SIGTERM)
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.driver.pid, signal.SIGKILL)
                self.driver.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
