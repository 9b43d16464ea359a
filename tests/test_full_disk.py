"""A full disk end to end: a real server on a SQLite database on a 2 MiB tmpfs, filled up.

The property under test: while the disk is full, a put gets `unavailable` (the connection
stays open, the log has no traceback) and reads go on; once space is freed the service writes
again at once and keeps writing, without a restart, for more than the 1,000 pages (about
4 MB) of WAL after which SQLite checkpoints by default; no acknowledged write is lost.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reports_service.config import Settings
from reports_service.repository import repository_for

from .clients import call, connect
from .conftest import TOKEN, WRITE_TOKEN
from .databases import SQLiteTemplate
from .server import Server

DISK = "2m"
FREED = 1 << 20  # bytes freed once the disk is full
CONTENT = "x" * 2000
NAMES = [f"disk{n}" for n in range(20)]
# NOTE: each put writes the report and its changelog copy (and their index pages): well over
#   the 4 MB SQLite lets the WAL reach before its automatic checkpoint.
PUTS_AFTER = 1500
UNAVAILABLE = {"code": "unavailable", "message": "database unavailable, retry later"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test, unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full; the bytes written."""
    chunk = b"\0" * 4096
    written = 0
    with open(path, "wb", buffering=0) as filler:
        while True:
            try:
                written += filler.write(chunk)
            except OSError:
                return written


async def test_writes_resume_once_space_is_freed(
    small_disk: Path, sqlite_template: SQLiteTemplate, tmp_path: Path
) -> None:
    url = sqlite_template.new_database(small_disk)
    database = small_disk / "reports.db"
    repository = repository_for(Settings(database_url=url))
    await repository.create_token(name="test", token=TOKEN)
    await repository.create_token(name="writer", token=WRITE_TOKEN, can_write=True)
    await repository.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env.update(
        REPORTS_DATABASE_URL=url,
        REPORTS_CHANGELOG_RETENTION="20",  # NOTE: the changelog must not fill the disk itself
        REPORTS_RATE_LIMIT="0",
        TMPDIR=str(tmp_path),  # NOTE: the server's log, off the small disk
    )
    server = Server(env)
    acknowledged: dict[str, str] = {}
    numbers = itertools.count()
    try:
        writer = await connect(server, WRITE_TOKEN)
        reader = await connect(server)

        async def put() -> dict[str, Any]:
            n = next(numbers)
            name = NAMES[n % len(NAMES)]
            request = {"id": n, "type": "put", "name": name, "title": f"T{n}", "content": CONTENT}
            reply: dict[str, Any] = await call(writer, request)
            if "result" in reply:
                acknowledged[name] = f"T{n}"
            return reply

        for _ in NAMES:
            assert "result" in await put()
        filler = small_disk / "filler"
        fill(filler)
        for _ in range(200):
            reply = await put()
            if "error" in reply:
                break
        else:
            pytest.fail("every put succeeded on a full disk")
        assert reply["error"] == UNAVAILABLE, reply
        async with httpx.AsyncClient(
            base_url=server.http, headers={"Authorization": f"Bearer {WRITE_TOKEN}"}
        ) as client:
            response = await client.put(
                "/api/reports/disk0", json={"title": "HTTP", "content": CONTENT}
            )
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "unavailable"
            response = await client.get("/api/reports/disk0")
            assert response.json()["title"] == acknowledged["disk0"]
        get = await call(reader, {"id": "g", "type": "get", "name": NAMES[0]})
        assert get["result"]["title"] == acknowledged[NAMES[0]]
        listed = await call(reader, {"id": "l", "type": "list", "limit": 100})
        assert {r["name"] for r in listed["result"]["reports"]} >= set(NAMES)

        os.truncate(filler, max(0, filler.stat().st_size - FREED))
        failed = [reply for _ in range(PUTS_AFTER) if "error" in (reply := await put())]
        assert not failed, f"{len(failed)} of {PUTS_AFTER} puts failed, first: {failed[0]}"
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "1011" not in log, log[-3000:]
    assert "database or disk is full" in log
    check = sqlite3.connect(database)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = dict(check.execute("SELECT name, title FROM reports WHERE name LIKE 'disk%'"))
    finally:
        check.close()
    assert stored == acknowledged
