"""A real server for end-to-end tests: `python -m reports_service serve` on a free port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server process; `url` is its ws:// base, `http` its http:// base."""

    def __init__(self, env: Mapping[str, str], *args: str, port: int | None = None) -> None:
        self.env, self.args = env, args
        self.port = port or free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log_path = Path(env.get("TMPDIR", "/tmp")) / f"server-{self.port}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reports_service", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env={**env, "REPORTS_HOST": "127.0.0.1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http + "/hello", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def again(self) -> Server:
        """A new server process on the same port, database and settings (this one stopped)."""
        return Server(self.env, *self.args, port=self.port)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def run_cli(
    env: Mapping[str, str], *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python seed.py ARGS` as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "seed.py"), *args],
        cwd=ROOT,
        env=dict(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


__all__ = ["Server", "free_port", "run_cli"]
