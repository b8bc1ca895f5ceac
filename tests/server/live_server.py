"""A server in a subprocess on a free 127.0.0.1 port, for tests that need a real socket: the official
client, dropped connections, overload, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
TESSERA = Path(sys.executable).parent / "tessera"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, argv: list[str], port: int, startup_timeout: float = 180.0) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="tessera-server-", suffix=".log", delete=False)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready(startup_timeout)

    @classmethod
    def tessera(cls, *args: str, **kw) -> LiveServer:
        port = free_port()
        return cls([str(TESSERA), "serve", "--port", str(port), "--log-level", "warning",
                    "--disable-access-log", *args], port, **kw)

    @classmethod
    def fake(cls, *args: str, **kw) -> LiveServer:
        port = free_port()
        return cls([sys.executable, "-m", "tests.server.fake_server", "--port", str(port), *args], port, **kw)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-5000:]

    def metrics(self, headers: dict | None = None) -> dict[str, float]:
        text = httpx.get(self.base_url + "/metrics", headers=headers, timeout=5).text
        out = {}
        for m in re.finditer(r"^([a-z_:]+)(?:\{[^}]*\})? (\S+)$", text, re.M):
            out.setdefault(m.group(1), float(m.group(2)))
        return out

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        os.unlink(self._log.name)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
