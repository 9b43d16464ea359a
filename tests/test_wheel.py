"""The wheel on its own: built, installed in a fresh virtual environment outside the checkout,
and run from an empty directory, as a user who never cloned the repository would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect

from reports_service.migrate import head_revision

from .server import ROOT, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LOCK = ROOT / "requirements" / "base.txt"


@dataclass
class Installed:
    """A virtual environment holding only the wheel (and its dependencies)."""

    venv: Path
    env: dict[str, str]

    def command(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.command("reports-service"), *args],
            cwd=cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _run(*args: str | Path, cwd: Path | None = None) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    # NOTE: built from a copy of exactly what the wheel is made of, so stale build/ output in
    #   the checkout cannot leak into it.
    source = root / "source"
    shutil.copytree(
        ROOT / "reports_service",
        source / "reports_service",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", source)
    (wheel,) = (root / "dist").glob("reports_service-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv)
    pip = (venv / "bin" / "python", "-m", "pip", "install", "-q")
    if LOCK.exists():
        _run(*pip, "--require-hashes", "-r", LOCK)
    _run(*pip, wheel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPORTS_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Installed(venv, env)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "anywhere"
    directory.mkdir()
    return directory


def test_the_package_comes_from_the_venv(installed: Installed, empty_dir: Path) -> None:
    code = "import reports_service.migrate as m; print(m.__file__); print(m.MIGRATIONS)"
    done = subprocess.run(
        [installed.command("python"), "-c", code],
        cwd=empty_dir,
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
    )
    module, migrations = done.stdout.splitlines()
    assert Path(module).is_relative_to(installed.venv)
    assert (Path(migrations) / "env.py").is_file()


def test_migrate_anywhere(installed: Installed, empty_dir: Path) -> None:
    done = installed.run(empty_dir, "migrate")
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout
        == f"database sqlite+aiosqlite:///reports.db is at migration {head_revision()}\n"
    )
    assert (empty_dir / "reports.db").is_file()


def test_missing_database_directory(installed: Installed, empty_dir: Path) -> None:
    path = empty_dir / "nowhere" / "reports.db"
    url = f"sqlite+aiosqlite:///{path}"
    done = installed.run(empty_dir, "serve", "--port", str(free_port()), REPORTS_DATABASE_URL=url)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"reports-service: error: the directory of database file {path} does not exist"
    ]


def _wait_until_ready(process: subprocess.Popen[str], port: int) -> None:
    while process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"`reports-service up` exited with {process.returncode}")


def test_up_in_an_empty_directory(installed: Installed, empty_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    with (
        open(tmp_path / "up.log", "w+") as log,
        subprocess.Popen(
            [installed.command("reports-service"), "up", "--port", str(port)],
            cwd=empty_dir,
            env=installed.env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        ) as up,
    ):
        try:
            assert up.stdout is not None
            said = [up.stdout.readline() for _ in range(3)]
            assert said[:2] == [
                f"database sqlite+aiosqlite:///reports.db is at migration {head_revision()}\n",
                "seeded 4 reports (0 already there)\n",
            ]
            token = said[2].removeprefix("access token for /reports (shown once, keep it): ")
            assert token != said[2], said
            _wait_until_ready(up, port)
            for path in ("/", "/static/app.js", "/static/client.js", "/static/style.css"):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as page:
                    assert page.status == 200 and page.read(), path
            with connect(f"ws://127.0.0.1:{port}/reports") as ws:
                ws.send(token.strip())
                ws.send("report1")
                assert ws.recv(timeout=30) == '{"report":"Report 1"}'
            up.send_signal(signal.SIGTERM)
            # NOTE: after its graceful shutdown uvicorn re-raises the signal, so the process
            #   ends by SIGTERM, as a supervisor expects.
            assert up.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            if up.poll() is None:
                up.kill()
        log.seek(0)
        logged = log.read()
    assert "Traceback" not in logged
    assert "Application shutdown complete." in logged, logged
    assert (empty_dir / "reports.db").is_file()


def test_missing_migrations_are_one_line(installed: Installed, empty_dir: Path) -> None:
    (package,) = installed.venv.glob("lib/python*/site-packages/reports_service")
    migrations = package / "migrations"
    aside = package.parent / "migrations-aside"
    migrations.rename(aside)
    try:
        done = installed.run(empty_dir, "migrate")
    finally:
        aside.rename(migrations)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"reports-service: error: the migrations directory {migrations} is missing: "
        "reinstall reports-service"
    ]
