"""Subprocesses of a benchmark run: started pinned to a core, always stopped at the end.

Every process is started through a :class:`Processes` registry, in its own session (so that a
Ctrl-C reaches only the orchestrator, which then stops them in order) and with a parent-death
signal (so that even a killed orchestrator leaves nothing behind). ``Processes.close()`` runs
on any exit of the ``with`` block: normal, exception or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from benchmarks import ROOT

PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A benchmark step failed: printed as one line."""


def log(message: str) -> None:
    """A progress line on stderr (stdout is kept for the results)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the orchestrator dies (Linux; inherited by exec)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def pinned(command: Sequence[str], cpu: str | None) -> list[str]:
    """``command`` run under ``taskset -c CPU`` (taskset execs it: same PID), or as is."""
    return ["taskset", "-c", cpu, *command] if cpu else list(command)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: Proc, timeout: float) -> None:
    """Wait until 127.0.0.1:PORT accepts connections (uvicorn binds after its startup)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on port {port} in {timeout}s:\n{proc.tail()}")


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of process ``pid`` (all its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # NOTE: after the ")" that ends the command name, utime and stime are fields 12 and 13.
    return int(fields[11]) + int(fields[12])


def cpu_share(pid: int, seconds: float) -> tuple[float, int]:
    """The share of one core that ``pid`` used over the next ``seconds``, and its ticks."""
    before, started = cpu_ticks(pid), time.monotonic()
    time.sleep(seconds)
    ticks, elapsed = cpu_ticks(pid) - before, time.monotonic() - started
    return ticks / os.sysconf("SC_CLK_TCK") / elapsed, ticks


class Proc:
    """One subprocess with its output in a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=dict(env),
            stdin=stdin,
            stdout=stdout if stdout is not None else self._log,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # NOTE: the orchestrator has no threads
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL after ``grace`` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()
        return self.popen.returncode


class Processes:
    """The registry: ``with Processes() as procs: procs.start(...)``; all stopped on exit."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []
        self._previous: Callable[[int, FrameType | None], object] | int | None = None

    def __enter__(self) -> Processes:
        # NOTE: SIGTERM becomes an exception here, so that `with` blocks unwind and stop
        #   every child as on Ctrl-C.
        self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        pipes: bool = False,
    ) -> Proc:
        """Start ``command``; with ``pipes``, its stdin and stdout are pipes to us."""
        stream = subprocess.PIPE if pipes else None
        proc = Proc(
            name,
            command,
            env=env,
            log_path=log_path,
            stdin=stream if pipes else subprocess.DEVNULL,
            stdout=stream,
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int:
        code = proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)
        return code

    def close(self) -> None:
        # NOTE: a second Ctrl-C while stopping must not leave the rest running.
        with _interrupts_deferred():
            while self._procs:
                self._procs.pop().stop()

    def __iter__(self) -> Iterator[Proc]:
        return iter(list(self._procs))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def run_checked(
    command: Sequence[str], *, env: Mapping[str, str], timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion (it dies with us too); fail with its output."""
    try:
        result = subprocess.run(
            list(command),
            cwd=ROOT,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=_die_with_parent,  # NOTE: the orchestrator has no threads
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no result in {timeout}s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise BenchError(f"{what} failed ({result.returncode}): {output[-800:]}")
    return result


def base_env() -> dict[str, str]:
    """The environment for children: ours without REPORTS_* settings, plus a quiet Python."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    return env
