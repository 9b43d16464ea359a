"""The command-line clients as a user runs them: a process of their own, its output read as it
comes (and kept), its input typed line by line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from .server import ROOT
from .waiting import eventually

BIN = Path(sys.executable).parent


def client_env(url: str, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env["REPORTS_URL"] = url
    if token is not None:
        env["REPORTS_TOKEN"] = token
    return env


class Cli:
    """One running client; ``out`` and ``err`` are the lines it has written so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(process.stdout, self.out)),
            asyncio.create_task(self._read(process.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, command: str, *args: str, env: dict[str, str]) -> Cli:
        process = await asyncio.create_subprocess_exec(
            str(BIN / command),
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    @staticmethod
    async def _read(stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode().rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    async def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def said(self, fragment: str, within: float = 30.0) -> str:
        """The first line of stdout holding ``fragment``, once there is one."""
        return str(
            await eventually(lambda: next((x for x in self.out if fragment in x), None), within)
        )

    async def complained(self, fragment: str, within: float = 30.0) -> str:
        """The first line of stderr holding ``fragment``, once there is one."""
        return str(
            await eventually(lambda: next((x for x in self.err if fragment in x), None), within)
        )

    async def wait(self, within: float = 30.0) -> int:
        """Its exit status, once it has exited and its output has been read."""
        status = await asyncio.wait_for(self.process.wait(), within)
        await asyncio.wait_for(asyncio.gather(*self._readers), within)
        return status

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.wait()

    async def kill(self) -> None:
        """For a test's cleanup: gone, whatever state it is in."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


__all__ = ["BIN", "Cli", "client_env"]
