"""A failure nobody expected, in a real server: an error reply or a 500, never a 1011, and
logged once in the service's own format.

The server is `python -m reports_service serve` with two faults put into its code before it
starts (the database is real and untouched): ``ReportService.report`` raises RuntimeError for
the report ``boom`` (a plain query, ``get``, and GET /api/reports/boom reach it), and
``ReportService.ping`` for the request id ``boom``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection

from reports_service.protocol import INTERNAL

from .clients import call, connect, recv
from .conftest import TOKEN
from .server import ROOT, Server, free_port

FAULTS = """
import runpy, sys
from reports_service.service import ReportService

real_report, real_ping = ReportService.report, ReportService.ping

async def report(self, name, grant):
    if name == "boom":
        raise RuntimeError("injected fault")
    return await real_report(self, name, grant)

def ping(self, request):
    if request.id == "boom":
        raise RuntimeError("injected fault")
    return real_ping(self, request)

ReportService.report, ReportService.ping = report, ping
sys.argv = ["reports-service", "serve", "--port", sys.argv[1]]
runpy.run_module("reports_service", run_name="__main__")
"""

OUR_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR reports_service\.\w+ \[[^\]]*\] "
    r"(failed to answer a message on /reports|unhandled error on GET /api/reports/boom)$",
    re.MULTILINE,
)
NOT_OURS = ("[FALCON]", "Exception in ASGI application", "Unhandled exception")


class FaultyServer(Server):
    """A server whose ReportService fails as FAULTS says."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.json_format = env["REPORTS_LOG_FORMAT"] == "json"
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log_path = Path(env["TMPDIR"]) / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", FAULTS, str(self.port)],
            cwd=ROOT,
            env={**env, "REPORTS_HOST": "127.0.0.1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_up()


@pytest.fixture(params=["text", "json"])
def faulty(
    request: pytest.FixtureRequest,
    db_env: dict[str, str],
    seeded_repository: object,
    tmp_path: Path,
) -> Iterator[FaultyServer]:
    env = {**db_env, "TMPDIR": str(tmp_path), "REPORTS_LOG_FORMAT": request.param}
    server = FaultyServer(env)
    yield server
    server.stop()


async def still_open(ws: ClientConnection) -> None:
    """The connection answers its next requests as before."""
    got = await call(ws, {"type": "get", "id": "after", "name": "report1"})
    assert got["result"]["name"] == "report1", got
    assert (await call(ws, {"type": "ping", "id": 2}))["result"]["pong"] is True


def check_log(log: str, json_format: bool, failures: int) -> None:
    """Each failure logged once, by the service, in its format; nothing else tells of it."""
    for text in NOT_OURS:
        assert text not in log, log
    if json_format:
        lines = [json.loads(line) for line in log.splitlines() if line]  # NOTE: every line
        errors = [line for line in lines if line["level"] == "ERROR"]
        assert len(errors) == failures, errors
        for line in errors:
            assert line["logger"].startswith("reports_service."), line
            assert "RuntimeError: injected fault" in line["exc"], line
    else:
        assert len(OUR_LINE.findall(log)) == failures, log
        assert log.count("Traceback") == failures, log
        assert log.count("RuntimeError: injected fault") == failures, log


async def test_a_failing_request_gets_an_error_reply_and_the_connection_stays(
    faulty: FaultyServer,
) -> None:
    ws = await connect(faulty)
    try:
        for request in ({"type": "ping", "id": "boom"}, {"type": "get", "id": 7, "name": "boom"}):
            reply = await call(ws, request)
            assert reply["error"] == {"code": "internal", "message": INTERNAL}, reply
            await still_open(ws)

        await ws.send("boom")  # a plain query gets a plain error
        assert await recv(ws) == {"error": INTERNAL}
        await still_open(ws)

        await ws.send(msgpack.packb({"type": "get", "id": 8, "name": "boom"}))
        data = await ws.recv()
        assert isinstance(data, bytes)  # NOTE: in the request's format
        reply = msgpack.unpackb(data)
        assert reply == {"id": 8, "error": {"code": "internal", "message": INTERNAL}}, reply
        await still_open(ws)
        assert ws.close_code is None
    finally:
        await ws.close()
    faulty.stop()
    check_log(faulty.log_path.read_text(), faulty.json_format, failures=4)


def test_a_failing_http_request_gets_a_500_problem(faulty: FaultyServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    request = urllib.request.Request(faulty.http + "/api/reports/boom", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(request, timeout=5)
    assert failed.value.code == 500
    assert failed.value.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(failed.value.read())
    assert (problem["status"], problem["code"]) == (500, "internal"), problem
    assert "injected" not in json.dumps(problem)
    request = urllib.request.Request(faulty.http + "/api/reports/report1", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["name"] == "report1"
    faulty.stop()
    check_log(faulty.log_path.read_text(), faulty.json_format, failures=1)
