"""The README's HTTP API examples, run as written against a real server.

Each ``sh`` block after ``<!-- readme-http -->`` holds one ``curl`` command and its ``http``
(httpie) twin; the block right after it is what the command prints. The ``curl`` commands run
in document order against ``reports-service up`` in an empty directory (so the versions in the
examples are those of a fresh database), with ``127.0.0.1:8000`` pointed at the test's port; a
``curl -N`` stream is cut after a few seconds. Every line shown must be printed, in order; ``…``
stands for text left out. httpie is not installed: each ``http`` line is checked to make the
same request as its ``curl`` line.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from .server import ROOT
from .test_readme_auth import stop, user_env, wait_until_up

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
MARKER = "<!-- readme-http -->"
EXAMPLE = re.compile(
    rf"^{re.escape(MARKER)}\n```sh\n(.*?)^```\n\n?```[a-z]*\n(.*?)^```", re.M | re.S
)
TOKEN = re.compile(r"keep it\): (\S+)")
STREAM_SECONDS = 3


@dataclass
class Example:
    commands: list[str]
    output: list[str]

    def one(self, program: str) -> str:
        [line] = [c for c in self.commands if c.startswith(f"{program} ")]
        return line


@dataclass
class Call:
    """What one command line asks the server: method, path, query, headers, JSON body."""

    method: str = "GET"
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None


def examples() -> list[Example]:
    found = EXAMPLE.findall(README.read_text(encoding="utf-8"))
    assert found, f"README.md has no examples marked {MARKER}"
    return [
        Example(
            [line for line in commands.splitlines() if line.strip()],
            [line for line in output.splitlines() if line.strip()],
        )
        for commands, output in found
    ]


def _query(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in pairs:
        query.setdefault(key, []).append(value)
    return query


def _header(call: Call, line: str) -> None:
    name, _, value = line.partition(":")
    if name.lower() not in ("content-type", "accept"):  # NOTE: httpie sets these for JSON
        call.headers[name.strip().lower()] = value.strip()


def parse_curl(line: str) -> Call:
    call = Call()
    words = iter(shlex.split(line)[1:])
    for word in words:
        if word == "-X":
            call.method = next(words)
        elif word == "-H":
            _header(call, next(words))
        elif word == "--json":
            call.body = json.loads(next(words))
        elif word.startswith("http"):
            url = urlsplit(word)
            call.path, call.query = url.path, _query(parse_qsl(url.query))
        else:
            assert word in ("-i", "-N", "-s"), f"an option the test does not know: {word}"
    return call


def parse_http(line: str) -> Call:
    call = Call()
    words = shlex.split(line)[1:]
    if words[0].isupper():
        call.method = words.pop(0)
    body: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    rest = iter(words)
    for word in rest:
        if word == "-A":
            assert next(rest) == "bearer"
        elif word == "-a":
            call.headers["authorization"] = f"Bearer {next(rest)}"
        elif word.startswith(":8000/"):
            call.path = word.removeprefix(":8000")
        elif "==" in word:
            pairs.append(tuple(word.split("==", 1)))  # type: ignore[arg-type]
        elif re.match(r"^[\w-]+:", word):
            _header(call, word)
        elif "=" in word:
            key, _, value = word.partition("=")
            body[key] = value
        else:
            assert word in ("--stream", "-S"), f"an option the test does not know: {word}"
    call.query = _query(pairs)
    call.body = body or None
    return call


def test_every_http_line_makes_the_curl_lines_request() -> None:
    for example in examples():
        curl, http = example.one("curl"), example.one("http")
        assert parse_http(http) == parse_curl(curl), f"{http!r} does not mirror {curl!r}"


def assert_printed(shown: list[str], printed: str, command: str) -> None:
    at = 0
    for line in shown:
        for piece in filter(None, (p.strip() for p in line.split("…"))):
            found = printed.find(piece, at)
            assert found >= 0, f"{command}\ndid not print {piece!r} (in order):\n{printed}"
            at = found + len(piece)


def test_the_curl_examples_print_what_the_readme_shows(tmp_path: Path) -> None:
    env = {**user_env(tmp_path), "REPORTS_SSE_KEEPALIVE": "1"}
    port = env["REPORTS_PORT"]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as out:
        server = subprocess.Popen(
            ["reports-service", "up"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_up(server, env, log_path)
            token = TOKEN.search(log_path.read_text())
            assert token, log_path.read_text()
            env["REPORTS_TOKEN"] = token.group(1)
            for example in examples():
                command = example.one("curl").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                streams = " -N " in command
                if streams:
                    command = command.replace("curl ", f"curl --max-time {STREAM_SECONDS} ", 1)
                ran = subprocess.run(
                    ["bash", "-c", command],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert ran.returncode == (28 if streams else 0), f"{command}\n{ran.stderr}"
                printed = ran.stdout.replace("\r\n", "\n")
                if example.output[0].startswith("HTTP/"):
                    assert printed.startswith(example.output[0]), f"{command}\n{printed}"
                shown = [line.replace(":8000", f":{port}") for line in example.output]
                assert_printed(shown, printed, command)
            # NOTE: the README says the service never logs a query string: a token in one.
            stream = f"http://127.0.0.1:{port}/api/changes?access_token={env['REPORTS_TOKEN']}"
            cut = subprocess.run(
                ["curl", "-sN", "--max-time", "1", stream], capture_output=True, check=False
            )
            assert cut.returncode == 28
        finally:
            stop(server)
    served = log_path.read_text(errors="replace").split(token.group(0), 1)[1]
    assert "GET /api/changes 200" in served, served
    assert env["REPORTS_TOKEN"] not in served, "the token reached the server's log"
