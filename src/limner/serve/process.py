"""`limner serve` in a child process, ready when /readyz says so: for tests, benchmarks and scripts that
need a real server (its own process, its own port) rather than an app object."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with ServerProcess("--queue", "2") as server: server.url ...`; the log goes to a file (a pipe nobody
    reads would fill and block the server)."""

    def __init__(self, *flags: str, log: str | Path | None = None, ready_timeout: float = 300, env=None):
        self.flags, self.ready_timeout, self.env = list(flags), ready_timeout, env
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="limner-serve-", suffix=".log")[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "limner.cli", "serve", "--port", str(self.port),
                                          *self.flags], stdout=out, stderr=subprocess.STDOUT, env=self.env)
        end = time.monotonic() + self.ready_timeout
        while time.monotonic() < end:
            state = self.ready()
            if state == "ready":
                return self
            if state == "model_load_failed" or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"limner serve did not become ready:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *_):
        self.stop()

    def ready(self) -> str:
        """'ready', or the error code /readyz gives, or 'down' when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2):
                return "ready"
        except urllib.error.HTTPError as e:
            try:
                return json.loads(e.read())["error"]["code"] or "not_ready"
            except (ValueError, KeyError, TypeError):
                return "not_ready"
        except (urllib.error.URLError, OSError):
            return "down"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss_bytes(self) -> int:
        """The server's resident memory now (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
