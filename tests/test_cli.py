"""The seed script as a user runs it: a separate process, one clear line for every error."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .databases import sqlite_url
from .server import ROOT, free_port, run_cli


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr


def names(db_env: dict[str, str]) -> list[str]:
    listed = run_cli(db_env, "list")
    assert listed.returncode == 0, listed.stderr
    return [line.split("\t")[0] for line in listed.stdout.splitlines()]


def test_seed_is_idempotent(db_env: dict[str, str]) -> None:
    first = run_cli(db_env)
    assert first.returncode == 0, first.stderr
    assert "seeded 4 reports" in first.stdout
    again = run_cli(db_env)
    assert again.returncode == 0
    assert "seeded 0 reports (4 already there)" in again.stdout
    listed = run_cli(db_env, "list").stdout.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [
        [f"report{n}", f"Report {n}"] for n in range(1, 5)
    ]


def test_add_then_duplicate_fails_and_changes_nothing(db_env: dict[str, str]) -> None:
    assert run_cli(db_env, "add", "r", "--title", "First", "--content", "c").returncode == 0
    duplicate = run_cli(db_env, "add", "r", "--title", "Second")
    assert_one_line_error(duplicate, "already exists: r")
    assert "\tFirst\t" in run_cli(db_env, "list").stdout
    replaced = run_cli(db_env, "add", "r", "--title", "Second", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout == "replaced 1 report: r\n"
    assert "\tSecond\t" in run_cli(db_env, "list").stdout


def test_replace_says_which_were_added_and_which_replaced(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_cli(db_env, "add", "old", "--title", "Old").stdout == "added 1 report\n"
    path = tmp_path / "r.jsonl"
    path.write_text('{"name": "new", "title": "N"}\n{"name": "old", "title": "O2"}\n')
    both = run_cli(db_env, "add", "--file", str(path), "--replace")
    assert both.returncode == 0, both.stderr
    assert both.stdout == "added 1 report, replaced 1 report: old\n"
    fresh = run_cli(db_env, "add", "other", "--title", "X", "--replace")
    assert fresh.stdout == "added 1 report\n"


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_add_many_from_file(db_env: dict[str, str], tmp_path: Path, form: str) -> None:
    items = [{"name": f"bulk{i}", "title": f"Bulk {i}", "content": "x"} for i in range(250)]
    path = tmp_path / f"reports.{form}"
    text = json.dumps(items) if form == "json" else "\n".join(json.dumps(i) for i in items)
    path.write_text(text)
    added = run_cli(db_env, "add", "--file", str(path))
    assert added.returncode == 0, added.stderr
    assert "added 250 reports" in added.stdout
    assert len(names(db_env)) == 250


def test_file_is_all_or_nothing(db_env: dict[str, str], tmp_path: Path) -> None:
    assert run_cli(db_env, "add", "taken", "--title", "T").returncode == 0
    path = tmp_path / "r.jsonl"
    path.write_text('{"name": "new1", "title": "N"}\n{"name": "taken", "title": "T2"}\n')
    assert_one_line_error(run_cli(db_env, "add", "--file", str(path)), "already exists: taken")
    assert names(db_env) == ["taken"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"name": "a", "title": "A"}\n{broken\n', "line 2: invalid JSON"),
        ('[{"name": "a"}]', "item 1: name and title are required"),
        ('[{"name": "a", "title": "A", "colour": "red"}]', "unknown field 'colour'"),
        ('[{"name": "", "title": "A"}]', "name must not be empty"),
        ('[{"name": 5, "title": "A"}]', "name must be a string"),
        ('[{"name": "a", "title": "A"}, {"name": "a", "title": "B"}]', "more than once: a"),
        ("[1]", "expected an object"),
    ],
)
def test_bad_file_is_one_clear_line(
    db_env: dict[str, str], tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert_one_line_error(run_cli(db_env, "add", "--file", str(path)), fragment)
    assert names(db_env) == []


def test_missing_file(db_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(db_env, "add", "--file", str(tmp_path / "nope.json"))
    assert_one_line_error(result, "cannot read")


def test_remove(db_env: dict[str, str]) -> None:
    run_cli(db_env)
    assert run_cli(db_env, "remove", "report2").returncode == 0
    assert names(db_env) == ["report1", "report3", "report4"]
    assert_one_line_error(run_cli(db_env, "remove", "report2"), "no report named 'report2'")


def test_tokens(db_env: dict[str, str]) -> None:
    created = run_cli(db_env, "token", "create", "alice")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) >= 32
    fixed = run_cli(db_env, "token", "create", "bob", "--value", "bob-secret", "--write")
    assert fixed.stdout.strip() == "bob-secret"
    assert_one_line_error(run_cli(db_env, "token", "create", "alice"), "exists already")
    assert_one_line_error(run_cli(db_env, "token", "create", " "), "name must not be empty")
    listed = run_cli(db_env, "token", "list").stdout
    assert "alice\tread\t" in listed and "bob\tread,write\t" in listed and "active" in listed
    assert token not in listed and "bob-secret" not in listed
    assert run_cli(db_env, "token", "revoke", "bob").returncode == 0
    assert "revoked" in run_cli(db_env, "token", "list").stdout
    assert_one_line_error(run_cli(db_env, "token", "revoke", "bob"), "no active token")


def test_missing_database_file(tmp_path: Path) -> None:
    env = {"REPORTS_DATABASE_URL": sqlite_url(tmp_path / "absent.db")}
    assert_one_line_error(run_cli(env, "list"), "does not exist: run `reports-service migrate`")
    assert not (tmp_path / "absent.db").exists()


def test_unmigrated_database(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    env = {"REPORTS_DATABASE_URL": sqlite_url(tmp_path / "empty.db")}
    assert_one_line_error(run_cli(env, "add", "x", "--title", "X"), "run `reports-service migrate`")
    migrated = run_cli(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert run_cli(env, "add", "x", "--title", "X").returncode == 0


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    env = {"REPORTS_DATABASE_URL": "mysql://nowhere/db"}
    assert_one_line_error(run_cli(env, "list"), "unsupported database")
    for command in ("list", "migrate", "serve"):
        env = {"REPORTS_DATABASE_URL": "nonsense"}
        assert_one_line_error(run_cli(env, command), "REPORTS_DATABASE_URL is not a URL")
    env = {"REPORTS_DATABASE_URL": sqlite_url(tmp_path / "x.db"), "REPORTS_AUTH_TIMEOUT": "soon"}
    assert_one_line_error(run_cli(env, "list"), "REPORTS_AUTH_TIMEOUT")


def test_add_needs_a_title(db_env: dict[str, str]) -> None:
    assert_one_line_error(run_cli(db_env, "add", "x"), "add needs NAME and --title")


def test_settings_lists_every_variable(db_env: dict[str, str]) -> None:
    out = run_cli(db_env, "settings").stdout
    assert "REPORTS_DATABASE_URL" in out and "REPORTS_AUTH_TIMEOUT" in out


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["serve", "--port", "99999"], {}, "--port 99999: must be between 1 and 65535"),
        (["up", "--port", "0"], {}, "--port 0: must be between 1 and 65535"),
        (["serve", "--workers", "0"], {}, "--workers 0: must be at least 1"),
        (["list", "--limit", "-3"], {}, "--limit -3: must be at least 0"),
        (["serve"], {"REPORTS_PORT": "99999"}, "REPORTS_PORT=99999: must be between 1 and 65535"),
        (["list"], {"REPORTS_WORKERS": "0"}, "REPORTS_WORKERS=0: must be at least 1"),
        (["list"], {"REPORTS_AUTH_TIMEOUT": "0"}, "REPORTS_AUTH_TIMEOUT=0.0: must be more than 0"),
        (["list"], {"REPORTS_CACHE_MB": "nan"}, "REPORTS_CACHE_MB=nan: must be a finite number"),
    ],
)
def test_out_of_range_is_one_line(
    db_env: dict[str, str], args: list[str], env: dict[str, str], fragment: str
) -> None:
    assert_one_line_error(run_cli({**db_env, **env}, *args), fragment)


def test_usage_errors_exit_2_without_a_traceback(db_env: dict[str, str]) -> None:
    result = run_cli(db_env, "serve", "--port", "eighty")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: ")
    assert result.stderr.splitlines()[-1].endswith("argument --port: invalid int value: 'eighty'")


@pytest.mark.parametrize("command", ["serve", "up"])
def test_port_in_use_is_one_line(tmp_path: Path, command: str) -> None:
    env = {**os.environ, "REPORTS_DATABASE_URL": sqlite_url(tmp_path / "up.db")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(env, command, "--host", "127.0.0.1", "--port", str(port))
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert result.stdout == ""
    assert not (tmp_path / "up.db").exists()  # `up` checked the port before it migrated


@pytest.mark.parametrize("command", ["migrate", "serve", "up", "list"])
def test_missing_database_directory_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "nowhere" / "reports.db"
    env = {**os.environ, "REPORTS_DATABASE_URL": sqlite_url(path), "REPORTS_PORT": str(free_port())}
    assert_one_line_error(run_cli(env, command), str(path))
    assert not path.parent.exists()


@pytest.mark.parametrize("command", ["migrate", "serve", "list"])
def test_missing_migrations_are_one_line(tmp_path: Path, command: str) -> None:
    copy = tmp_path / "reports_service"
    shutil.copytree(
        ROOT / "reports_service", copy, ignore=shutil.ignore_patterns("migrations", "__pycache__")
    )
    (tmp_path / "reports.db").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPORTS_", "PYTHON"))}
    # NOTE: `-m` from tmp_path imports this copy, ahead of the checkout's editable install.
    result = subprocess.run(
        [sys.executable, "-m", "reports_service", command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_one_line_error(result, f"the migrations directory {copy / 'migrations'} is missing")
