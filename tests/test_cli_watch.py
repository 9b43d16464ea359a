"""`reports-client watch` as a user runs it, against a real server: one line per change as it
happens, a replay with --since, JSON lines, a clear exit on a bad token or a bad command line,
and a server restart lived through without a line lost or repeated."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable

import pytest

from .cli_process import BIN, Cli, client_env
from .conftest import TOKEN
from .proxy import TcpProxy
from .server import Server, run_cli

pytestmark = pytest.mark.e2e


async def seed(server_env: dict[str, str], *args: str) -> None:
    done = await asyncio.to_thread(run_cli, server_env, *args)
    assert done.returncode == 0, done.stderr


async def test_a_line_for_each_change(server: Server, db_env: dict[str, str]) -> None:
    # NOTE: from version 4, the seeded database's latest: without --since, a change made
    #   before the watch has subscribed would not be printed.
    cli = await Cli.start(
        "reports-client", "watch", "--since", "4", env=client_env(server.url, TOKEN)
    )
    try:
        await seed(db_env, "add", "first", "--title", "First")
        await cli.said("added first")
        await seed(db_env, "add", "report1", "--title", "Report 1, again", "--replace")
        await seed(db_env, "remove", "first")
        await cli.said("removed first")
        assert await cli.stop(signal.SIGTERM) == 0
    finally:
        await cli.kill()
    assert cli.out == [
        'v5 added first "First"',
        'v6 updated report1 "Report 1, again"',
        'v7 removed first "First"',
    ]
    assert cli.err == []


async def test_since_replays_then_goes_on_live(server: Server, db_env: dict[str, str]) -> None:
    await seed(db_env, "add", "report5", "--title", "Report 5")
    cli = await Cli.start(
        "reports-client", "watch", "--json", "--since", "3", env=client_env(server.url, TOKEN)
    )
    try:
        await cli.said('"report5"')
        await seed(db_env, "add", "report6", "--title", "Report 6")
        await cli.said('"report6"')
        assert await cli.stop(signal.SIGINT) == 0
    finally:
        await cli.kill()
    assert [json.loads(line) for line in cli.out] == [
        {"type": "report.added", "name": f"report{n}", "version": n, "title": f"Report {n}"}
        for n in (4, 5, 6)
    ]
    assert cli.err == []


async def test_only_the_names_asked_for(server: Server, db_env: dict[str, str]) -> None:
    cli = await Cli.start(
        "reports-client", "watch", "report2", "--since", "0", env=client_env(server.url, TOKEN)
    )
    try:
        await seed(db_env, "add", "report2", "--title", "Two", "--replace")
        await cli.said('"Two"')
        assert await cli.stop() == 0
    finally:
        await cli.kill()
    assert cli.out == ['v2 added report2 "Report 2"', 'v5 updated report2 "Two"']


async def test_a_bad_token_exits_1_with_a_message(server: Server) -> None:
    cli = await Cli.start("reports-client", "watch", env=client_env(server.url, "wrong-0123456789"))
    try:
        assert await cli.wait() == 1
    finally:
        await cli.kill()
    assert len(cli.err) == 1, cli.err
    assert cli.err[0].startswith("reports-client watch: ") and "1008 invalid token" in cli.err[0]
    assert cli.out == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--since", "soon"], "argument --since: invalid int value: 'soon'"),
        (["--since", "-1"], "--since -1: must be at least 0"),
        (["--url", "http://127.0.0.1:1"], "must start with ws:// or wss://"),
        (["--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_usage_errors_exit_2(args: list[str], fragment: str) -> None:
    env = client_env("ws://127.0.0.1:1", TOKEN)
    result = subprocess.run(
        [str(BIN / "reports-client"), "watch", *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: reports-client watch")
    assert result.stderr.splitlines()[-1].endswith(fragment), result.stderr
    assert "Traceback" not in result.stderr


def test_no_token_is_a_usage_error() -> None:
    env = client_env("ws://127.0.0.1:1")
    result = subprocess.run(
        [str(BIN / "reports-client"), "watch"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        "an access token is needed: --token or REPORTS_TOKEN"
    )


async def test_survives_a_restart(
    make_server: Callable[..., Server], db_env: dict[str, str]
) -> None:
    """SIGTERM (1012) for the server behind a fixed address, changes made while none runs, and
    a second server: the watch says so on stderr and prints every change once."""
    first = await asyncio.to_thread(make_server)
    async with TcpProxy("127.0.0.1", first.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}"
        cli = await Cli.start("reports-client", "watch", "--since", "4", env=client_env(url, TOKEN))
        try:
            await seed(db_env, "add", "before", "--title", "Before")
            await cli.said("added before")
            await asyncio.to_thread(first.stop)
            await cli.complained("connection lost (1012 server restart), reconnecting in ")
            await seed(db_env, "add", "between", "--title", "Between")
            second = await asyncio.to_thread(make_server)
            proxy.target = ("127.0.0.1", second.port)
            await seed(db_env, "add", "after", "--title", "After")
            await cli.said("added after")
            await cli.complained("reconnected")
            assert await cli.stop() == 0
        finally:
            await cli.kill()
    assert cli.out == [
        'v5 added before "Before"',
        'v6 added between "Between"',
        'v7 added after "After"',
    ]
    assert "Traceback" not in cli.stderr
    assert all("1012 server restart" in line for line in cli.err if "reconnecting" in line)
