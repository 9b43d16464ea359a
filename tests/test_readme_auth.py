"""The README's worked example of JWT authentication, run exactly as written.

The commands of the block after ``<!-- readme-auth-example -->`` run in an empty directory with
the test's Python first on the PATH: the key pair and the JWKS file, then the service (in the
background, on a free port), then the token and the client, whose output must hold what the
block after ``<!-- readme-auth-example-output -->`` shows.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .server import ROOT, free_port

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
SERVER = "reports-service up"
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def block_after(marker: str) -> list[str]:
    """The lines of the fenced block right after the HTML comment ``marker``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"^<!-- {re.escape(marker)} -->\n```[a-z]*\n(.*?)^```", text, re.M | re.S)
    assert found, f"README.md has no block marked <!-- {marker} -->"
    return [line for line in found.group(1).splitlines() if line.strip()]


def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: the venv's bin/ first on the PATH, no REPORTS_ settings but the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    port = free_port()
    env.update(REPORTS_HOST="127.0.0.1", REPORTS_PORT=str(port), TMPDIR=str(tmp_path))
    env["REPORTS_URL"] = f"ws://127.0.0.1:{port}"
    return env


def shell(lines: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_until_up(process: subprocess.Popen[bytes], env: dict[str, str], log: Path) -> None:
    url = f"http://127.0.0.1:{env['REPORTS_PORT']}/hello"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited:\n{log.read_text(errors='replace')}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the server did not start in 30 s:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_worked_example_works(tmp_path: Path) -> None:
    commands = block_after("readme-auth-example")
    [at] = [i for i, line in enumerate(commands) if SERVER in line]
    env = user_env(tmp_path)

    keys = shell(commands[:at], env, tmp_path)
    assert keys.returncode == 0, keys.stderr
    jwks = (tmp_path / "jwks.json").read_text()
    assert '"kid": "key-1"' in jwks and '"d"' not in jwks  # the public half only

    log_path = tmp_path / "server.log"
    with log_path.open("wb") as out:
        # NOTE: a session of its own, so the shell and the server it runs stop together.
        server = subprocess.Popen(
            ["bash", "-c", commands[at]],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_up(server, env, log_path)
            client = shell(commands[at + 1 :], env, tmp_path)
        finally:
            stop(server)
    assert client.returncode == 0, client.stderr
    for line in block_after("readme-auth-example-output"):
        assert line in client.stdout, f"the client did not print {line!r}:\n{client.stdout}"
    log = log_path.read_text(errors="replace")
    assert "alice" in log, log
    assert JWT.search(log) is None, "the token reached the server's log"
