"""Every command's output may be cut by a pipe (`seed.py token list | head -1`): the command
stops quietly, with exit status 141 (128 + SIGPIPE, as `seq 1000000 | head -1`), and no
traceback on stderr.

Each command prints more than a pipe holds (64 KiB), so it is still writing when its reader
closes the pipe after one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reports_service.pipes import CUT
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .conftest import TOKEN
from .server import ROOT, Server

PIPE_HOLDS = 65536
BIN = Path(sys.executable).parent


def cut_after_one_line(
    argv: list[str], env: dict[str, str], stdin: Path | None = None
) -> tuple[str, int, str]:
    """Run ``argv``, read one line of its output, close the pipe: (line, status, stderr)."""
    with (
        open(stdin or os.devnull, "rb") as given,
        subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=given, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process,
    ):
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline().decode()
        process.stdout.close()
        errors = process.stderr.read().decode()
        return line, process.wait(timeout=60), errors


def seed_py(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "seed.py"), *args]


@pytest.fixture
async def many_tokens(seeded_repository: ReportRepository) -> None:
    """Tokens whose `token list` lines add up to more than a pipe holds."""
    patterns = [f"a-rather-long-report-pattern-{n:04}-*" for n in range(100)]
    for n in range(30):
        await seeded_repository.create_token(name=f"t{n}", token=f"token-{n:04}", reports=patterns)


@pytest.mark.usefixtures("many_tokens")
def test_token_list_cut_by_a_pipe(db_env: dict[str, str]) -> None:
    line, status, errors = cut_after_one_line(seed_py("token", "list"), db_env)
    assert line.startswith("t") and "\treports [" in line, line
    assert (status, errors) == (CUT, "")


def test_report_list_cut_by_a_pipe(db_env: dict[str, str], tmp_path: Path) -> None:
    reports = [{"name": f"r{n}", "title": "T" * 100} for n in range(1000)]
    (tmp_path / "many.json").write_text(json.dumps(reports))
    added = subprocess.run(seed_py("add", "--file", str(tmp_path / "many.json")), env=db_env)
    assert added.returncode == 0
    line, status, errors = cut_after_one_line(seed_py("list"), db_env)
    assert line.startswith("r") and "\t" + "T" * 100 + "\t" in line, line
    assert (status, errors) == (CUT, "")


@pytest.mark.usefixtures("many_tokens")
def test_a_shell_pipe_into_head(db_env: dict[str, str]) -> None:
    pipeline = f"set -o pipefail; {sys.executable} seed.py token list | head -1"
    result = subprocess.run(
        ["bash", "-c", pipeline], cwd=ROOT, env=db_env, capture_output=True, text=True
    )
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert (result.returncode, result.stderr) == (CUT, "")


@pytest.mark.parametrize("client", ["echo-client", "reports-client"])
def test_a_client_cut_by_a_pipe(server: Server, tmp_path: Path, client: str) -> None:
    typed = tmp_path / "typed.txt"
    typed.write_text("report1\n" * (PIPE_HOLDS // 8 + 1000))
    env = {**os.environ, "REPORTS_URL": server.url, "REPORTS_TOKEN": TOKEN}
    line, status, errors = cut_after_one_line([str(BIN / client)], env, stdin=typed)
    assert "report1" in line or "Report 1" in line, line
    assert (status, errors) == (CUT, "")


async def test_watch_cut_by_a_pipe(server: Server, seeded_repository: ReportRepository) -> None:
    """`reports-client watch --since 0 | head -1`: more changes to print than a pipe holds."""
    reports = [NewReport(f"cut{n:04}", f"Cut {n} " + "x" * 60, "") for n in range(1500)]
    await seeded_repository.add_reports(reports)
    env = {**os.environ, "REPORTS_URL": server.url, "REPORTS_TOKEN": TOKEN}
    argv = [str(BIN / "reports-client"), "watch", "--since", "0", "--json"]
    line, status, errors = await asyncio.to_thread(cut_after_one_line, argv, env)
    assert json.loads(line)["version"] == 1
    assert (status, errors) == (CUT, "")
