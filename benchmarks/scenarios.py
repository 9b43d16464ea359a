"""The measurements of a benchmark run. Each is a :class:`Scenario`; to add one, write a class
with ``key``, ``title`` and ``run(ctx) -> Section`` and list it in :data:`SCENARIOS`.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import dataclasses
import json
import os
import re
import selectors
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from benchmarks import ROOT, TOKEN
from benchmarks.databases import drop_postgres, migrated, postgres, seed_py, sqlite_url
from benchmarks.procs import (
    BenchError,
    Proc,
    Processes,
    cpu_share,
    log,
    pinned,
    python,
    rss_kib,
    run_checked,
)
from benchmarks.report import Check, Section, divide, median, num, percent, ratio, table
from benchmarks.targets import (
    BARE,
    BASELINE,
    BROADCAST,
    POSTGRES,
    SQLITE,
    SQLITE_BIG,
    Server,
    Target,
    bare_broadcast,
    service,
    start_server,
)
from benchmarks.writes import missing

# The targets: against the tutorial (by connection count), against the bare echo.
MIN_THROUGHPUT_RATIO = {1: 1.05, 64: 1.5}
MAX_P99_RATIO = 1.0
MIN_BARE_RATIO = 0.8
MAX_IDLE_KIB = 20.0
MAX_IDLE_CPU_PERCENT = 0.2
MAX_IDLE_CONNECTIONS_CPU_PERCENT = 2.0
QUIET = "sqlite-pings600"
MAX_BULK_SECONDS = 3.0
CHECKED_TARGETS = (SQLITE, SQLITE_BIG, POSTGRES)


@dataclass
class Context:
    """What every scenario may use: options, prepared targets, the process registry."""

    args: argparse.Namespace
    procs: Processes
    env: dict[str, str]
    work_dir: Path
    log_dir: Path
    targets: dict[str, Target]
    server_cpu: str | None
    client_cpu: str | None

    def start(self, target: Target, *, nofile: int = 0, tag: str = "") -> Server:
        return start_server(
            self.procs,
            target,
            env=self.env,
            cpu=self.server_cpu,
            log_dir=self.log_dir,
            nofile=nofile,
            tag=tag,
        )

    def load_command(self, server: Server, mode: str, *extra: str) -> list[str]:
        command = python("-m", "benchmarks.load", mode, *server.load_args(), *extra)
        return pinned(command, self.client_cpu)

    def round_trips(
        self, server: Server, connections: int, duration: float, warmup: float
    ) -> dict[str, Any]:
        """One run of the load generator against ``server``; its figures."""
        command = self.load_command(
            server,
            "rtt",
            *("--connections", str(connections), "--duration", str(duration)),
            *("--warmup", str(warmup)),
        )
        what = f"load on {server.target.key} x{connections}"
        result = run_checked(command, env=self.env, timeout=warmup + duration + 90, what=what)
        data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        if not server.proc.alive():
            raise BenchError(f"{server.proc.name} died under load:\n{server.proc.tail()}")
        if data["errors"]:
            raise BenchError(f"{what}: {data['errors']} bad replies, first: {data['first_error']}")
        return data

    def prime(self, server: Server, budget: float) -> float:
        """Ask ``server`` for every name of the load's pool once; the seconds it took."""
        command = self.load_command(
            server, "prime", *("--connections", "64", "--duration", str(budget))
        )
        what = f"priming {server.target.key}"
        result = run_checked(command, env=self.env, timeout=budget + 90, what=what)
        data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        if data["errors"]:
            raise BenchError(f"{what}: {data['errors']} errors, first: {data['first_error']}")
        return float(data["seconds"])


class Scenario(abc.ABC):
    """One measurement: ``key`` names it for --only/--skip, ``title`` heads its section."""

    key: ClassVar[str]
    title: ClassVar[str]

    @abc.abstractmethod
    def run(self, ctx: Context) -> Section: ...


# -- round trips -----------------------------------------------------------------------------


class RoundTrips(Scenario):
    """Throughput and latency of sequential round trips, 1 and 64 connections, every target.

    All servers run at once (idle ones cost nothing) and the runs are interleaved: repeat 1 of
    every target and connection count, then repeat 2, ... so that drift of the machine during
    the run spreads over all targets alike. Figures are the medians over the repeats.

    Before the first repeat every server is asked for every name of the load's pool once
    (unmeasured, within ``--prime`` seconds): the figures are of a warm server, as in steady
    operation. The ``sqlite-big-nocache`` target shows what a name costs when it is not
    cached (the first time it is asked for, or when the pool outgrows REPORTS_CACHE_MB).
    """

    key = "roundtrip"
    title = "Round trips: throughput and latency"

    def run(self, ctx: Context) -> Section:
        args = ctx.args
        keys = [key for key in args.targets if key in ctx.targets]
        servers = {key: ctx.start(ctx.targets[key]) for key in keys}
        if args.prime > 0:
            for key in keys:
                seconds = ctx.prime(servers[key], args.prime)
                log(f"primed {key}: every name of the pool asked for once, in {seconds:.1f} s")
        runs: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for repeat in range(1, args.repeats + 1):
            for key in keys:
                for conns in args.connections:
                    data = ctx.round_trips(servers[key], conns, args.duration, args.warmup)
                    runs[key, conns].append(data)
                    log(
                        f"[{repeat}/{args.repeats}] {key:<10} x{conns:<3} "
                        f"{data['rps']:>9,.0f} rt/s  p50 {data['p50_ms']:.3f} ms  "
                        f"p99 {data['p99_ms']:.3f} ms  client cpu {data['client_cpu']:.0%}"
                    )
        for server in servers.values():
            ctx.procs.stop(server.proc)
        return self.summarise(ctx, keys, runs)

    def summarise(
        self, ctx: Context, keys: Sequence[str], runs: dict[tuple[str, int], list[dict[str, Any]]]
    ) -> Section:
        figures: dict[tuple[str, int], dict[str, float]] = {}
        for (key, conns), results in runs.items():
            figures[key, conns] = {
                name: median([r[name] for r in results])
                for name in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "p999_ms",
                    "client_cpu",
                    "server_cpu",
                    "server_us_per_rt",
                )
            }
        rows, checks = [], []
        for conns in ctx.args.connections:
            base = figures.get((BASELINE, conns))
            bare = figures.get((BARE, conns))
            for key in keys:
                fig = figures[key, conns]
                rps_ratio = divide(fig["rps"], base["rps"]) if base else float("nan")
                p99_ratio = divide(fig["p99_ms"], base["p99_ms"]) if base else float("nan")
                bare_ratio = divide(fig["rps"], bare["rps"]) if bare else float("nan")
                fig["rps_ratio"], fig["p99_ratio"] = rps_ratio, p99_ratio
                fig["bare_ratio"] = bare_ratio
                rows.append(
                    [
                        ctx.targets[key].label,
                        str(conns),
                        num(fig["rps"]),
                        num(fig["p50_ms"], 3),
                        num(fig["p99_ms"], 3),
                        ratio(rps_ratio),
                        ratio(p99_ratio),
                        ratio(bare_ratio),
                        percent(fig["server_cpu"]),
                        num(fig["server_us_per_rt"]),
                        percent(fig["client_cpu"]),
                    ]
                )
                if key in CHECKED_TARGETS:
                    label = ctx.targets[key].label
                    checks += [
                        Check(
                            f"{label}, {conns} conn: throughput vs baseline",
                            rps_ratio,
                            ">=",
                            MIN_THROUGHPUT_RATIO.get(conns, MIN_THROUGHPUT_RATIO[64]),
                            "x",
                        ),
                        Check(
                            f"{label}, {conns} conn: throughput vs bare echo",
                            bare_ratio if bare else None,
                            ">=",
                            MIN_BARE_RATIO,
                            "x",
                        ),
                        Check(
                            f"{label}, {conns} conn: p99 vs baseline",
                            p99_ratio,
                            "<=",
                            MAX_P99_RATIO,
                            "x",
                        ),
                    ]
        for key in CHECKED_TARGETS:
            if key not in keys:
                checks.append(Check(f"{key}: throughput/p99 vs baseline", None, ">=", 1.05, "x"))
        header = [
            "server",
            "conns",
            "round trips/s",
            "p50 ms",
            "p99 ms",
            "throughput vs baseline",
            "p99 vs baseline",
            "throughput vs bare",
            "server CPU",
            "server CPU µs/rt",
            "client CPU",
        ]
        lines = [
            f"Medians of {ctx.args.repeats} runs of {ctx.args.duration:g} s each (after "
            f"{ctx.args.warmup:g} s warm-up), after each server was asked for every name of "
            "the load's pool (65,536 random names) once, unmeasured; every connection keeps "
            "one message in flight. "
            f"Server pinned to CPU {ctx.server_cpu or '-'}, load generator (picows) to CPU "
            f"{ctx.client_cpu or '-'}. 'server CPU' is the server process's CPU time (all its "
            "threads) over the measured window, as a share of one core, and per round trip; "
            "'client CPU' is the load generator's: far below 100% means the client was not the "
            "bottleneck.",
            "",
            *table(header, rows),
        ]
        data = {
            f"{key}@{conns}": {"median": figures[key, conns], "runs": runs[key, conns]}
            for key, conns in figures
        }
        return Section(self.key, self.title, lines, checks, data)


# -- idle capacity ---------------------------------------------------------------------------


class IdleCapacity(Scenario):
    """Memory and CPU of one server process with idle, authenticated connections."""

    key = "idle"
    title = "Idle: memory per authenticated connection, and CPU with none and with them"

    def run(self, ctx: Context) -> Section:
        rows, cpu_rows, checks, data = [], [], [], {}
        seconds = ctx.args.idle_seconds
        measured = [
            self.uncapped(ctx.targets[key]) for key in ctx.args.idle_targets if key in ctx.targets
        ]
        if SQLITE in ctx.targets:
            # NOTE: what the service costs besides uvicorn's pings (one per connection per
            #   REPORTS_WS_PING_INTERVAL, answered by the client): pings every 600 s.
            sqlite = ctx.targets[SQLITE]
            measured.insert(
                1,
                dataclasses.replace(
                    sqlite,
                    key=QUIET,
                    label=f"{sqlite.label}, REPORTS_WS_PING_INTERVAL=600",
                    settings=(*sqlite.settings, ("REPORTS_WS_PING_INTERVAL", "600")),
                ),
            )
        for target in measured:
            key = target.key
            figures = self.measure(ctx, target)
            data[key] = figures
            rows.append(
                [
                    target.label,
                    num(figures["connections"]),
                    num(figures["rss_before_kib"] / 1024, 1),
                    num(figures["rss_after_kib"] / 1024, 1),
                    num(figures["kib_per_connection"], 2),
                    num(figures["open_seconds"], 1),
                    num(figures["rss_after_close_kib"] / 1024, 1),
                ]
            )
            cpu_rows += [
                [target.label, "0", f"{figures['cpu_none']:.3%}", str(figures["ticks_none"])],
                [
                    target.label,
                    num(figures["connections"]),
                    f"{figures['cpu_open']:.3%}",
                    str(figures["ticks_open"]),
                ],
            ]
            if key == QUIET:
                checks.append(
                    Check(
                        f"{target.label}: CPU with {int(figures['connections']):,} idle "
                        f"connections ({seconds:g} s)",
                        100 * figures["cpu_open"],
                        "<=",
                        MAX_IDLE_CONNECTIONS_CPU_PERCENT,
                        "%",
                        "not the target's setting: the service without uvicorn's pings",
                    )
                )
            if key == SQLITE:
                label = target.label
                opened = int(figures["connections"])
                checks += [
                    Check(
                        f"{label}: RSS per idle connection",
                        figures["kib_per_connection"],
                        "<=",
                        MAX_IDLE_KIB,
                        " KiB",
                    ),
                    Check(
                        f"{label}: CPU idle, no connection ({seconds:g} s)",
                        100 * figures["cpu_none"],
                        "<=",
                        MAX_IDLE_CPU_PERCENT,
                        "%",
                    ),
                    Check(
                        f"{label}: CPU with {opened:,} idle connections ({seconds:g} s)",
                        100 * figures["cpu_open"],
                        "<=",
                        MAX_IDLE_CONNECTIONS_CPU_PERCENT,
                        "%",
                        "" if opened >= ctx.args.idle_connections else "fewer connections opened",
                    ),
                ]
        if SQLITE not in data:
            checks.append(Check("RSS per idle connection", None, "<=", MAX_IDLE_KIB, " KiB"))
        elif BARE in data:
            # NOTE: what stands in the way when the service fails with pings: the pings.
            note = f"uvicorn's pings: the bare echo with them {data[BARE]['cpu_open']:.2%}"
            if QUIET in data:
                note += f", the service without them {data[QUIET]['cpu_open']:.2%}"
            checks = [
                dataclasses.replace(c, note=note)
                if c.name.startswith(f"{ctx.targets[SQLITE].label}: CPU with")
                else c
                for c in checks
            ]
        header = [
            "server",
            "connections",
            "RSS before MiB",
            "RSS with them MiB",
            "KiB per connection",
            "seconds to open",
            "RSS after closing MiB",
        ]
        lines = [
            "A fresh server process; a short warm-up load, then VmRSS and its CPU time over "
            f"{seconds:g} s with no connection; then the connections are opened (each sends "
            "the token and gets one reply, so the server holds it at its receive loop; the "
            "client spreads them over source addresses 127.0.0.2 and up), VmRSS read again, "
            f"and its CPU time over {seconds:g} s with them open and idle (uvicorn pings "
            "each every REPORTS_WS_PING_INTERVAL, 20 s, and the client answers; the row with "
            "600 s shows the service without them). Growth / connections = KiB per "
            "connection.",
            "",
            *table(header, rows),
            "",
            f"CPU time of the server process (utime + stime from `/proc/PID/stat`, in clock "
            f"ticks of {1000 // os.sysconf('SC_CLK_TCK')} ms) over {seconds:g} s, as a share "
            "of one core. The bare echo's row is what uvicorn itself costs: its main loop "
            "wakes 10 times a second.",
            "",
            *table(["server", "idle connections", "CPU", "ticks"], cpu_rows),
        ]
        return Section(self.key, self.title, lines, checks, data)

    @staticmethod
    def uncapped(target: Target) -> Target:
        """``target``; the baselines without the cap on connections not yet served, which the
        service's uvicorn options set (see handshake.py): they never say that a WebSocket is
        served, so each would count as pending, and all but the first few get 503."""
        if target.key not in (BARE, BASELINE):
            return target
        caps = (("REPORTS_MAX_PENDING", "1000000"), ("REPORTS_MAX_PENDING_PER_ADDRESS", "1000000"))
        return dataclasses.replace(target, settings=(*target.settings, *caps))

    def measure(self, ctx: Context, target: Target) -> dict[str, float]:
        wanted = ctx.args.idle_connections
        seconds = ctx.args.idle_seconds
        server = ctx.start(target, nofile=wanted + 1024, tag="-idle")
        ctx.round_trips(server, 8, 1.0, 0.2)
        time.sleep(1.0)
        before = rss_kib(server.proc.pid)
        cpu_none, ticks_none = cpu_share(server.proc.pid, seconds)
        log(f"idle {target.key}: {cpu_none:.3%} of a core with no connection")
        client = ctx.procs.start(
            f"idle client {target.key}",
            self.client_command(ctx, server, wanted),
            env=ctx.env,
            log_path=ctx.log_dir / f"idle-client-{target.key}.log",
            pipes=True,
        )
        ready = read_json_line(client, ctx.args.connect_budget + 30)
        if ready.get("event") != "ready":
            raise BenchError(f"idle client: unexpected {ready}")
        time.sleep(1.0)
        after = rss_kib(server.proc.pid)
        cpu_open, ticks_open = cpu_share(server.proc.pid, seconds)
        assert client.popen.stdin is not None
        client.popen.stdin.write(b"close\n")
        client.popen.stdin.flush()
        final = read_json_line(client, 60)
        time.sleep(1.0)
        after_close = rss_kib(server.proc.pid)
        ctx.procs.stop(client)
        ctx.procs.stop(server.proc)
        opened = int(ready["connections"])
        log(
            f"idle {target.key}: {opened:,} connections in {ready['seconds']:.1f}s, "
            f"RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, {cpu_open:.3%} of a core"
        )
        if final.get("alive_at_end", opened) < opened:
            raise BenchError(f"idle {target.key}: connections dropped while idle: {final}")
        return {
            "connections": opened,
            "failed": float(ready["failed"]),
            "open_seconds": float(ready["seconds"]),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_after_close_kib": after_close,
            "kib_per_connection": (after - before) / opened if opened else float("nan"),
            "cpu_none": cpu_none,
            "ticks_none": ticks_none,
            "cpu_open": cpu_open,
            "ticks_open": ticks_open,
        }

    @staticmethod
    def client_command(ctx: Context, server: Server, connections: int) -> list[str]:
        hold = ctx.args.idle_seconds + 300
        return ctx.load_command(
            server,
            "idle",
            *("--connections", str(connections), "--hold", str(hold), "--sources", "8"),
            *("--connect-budget", str(ctx.args.connect_budget)),
        )


def read_json_line(proc: Proc, seconds: float) -> dict[str, Any]:
    """The next JSON line on ``proc``'s stdout, waiting at most ``seconds``."""
    stream = proc.popen.stdout
    assert stream is not None
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                continue
            line = stream.readline()
            if not line:
                raise BenchError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    raise BenchError(f"{proc.name}: nothing in {seconds}s:\n{proc.tail()}")


# -- bulk writes -----------------------------------------------------------------------------


class BulkWrites(Scenario):
    """`python seed.py add --file F` with N reports (JSON lines) into a fresh migrated SQLite."""

    key = "bulk"
    title = "Bulk writes: seed.py add --file"

    def run(self, ctx: Context) -> Section:
        count = ctx.args.bulk_reports
        directory = ctx.work_dir / "bulk"
        directory.mkdir(parents=True, exist_ok=True)
        source = directory / "reports.jsonl"
        with source.open("w", encoding="utf-8") as out:
            for n in range(1, count + 1):
                item = {"name": f"bulk{n}", "title": f"Bulk {n}", "content": f"Content of {n}"}
                out.write(json.dumps(item) + "\n")
        template = directory / "template.db"
        migrated(ctx.env, sqlite_url(template), tutorial=False, token=False)
        # NOTE: the fixed cost of any seed.py command: interpreter, imports, schema check.
        startup = []
        for _ in range(ctx.args.repeats):
            started = time.perf_counter()
            seed_py(ctx.env, sqlite_url(template), "list", "--limit", "1")
            startup.append(time.perf_counter() - started)
        times = []
        for repeat in range(1, ctx.args.repeats + 1):
            database = directory / f"bulk-{repeat}.db"
            shutil.copyfile(template, database)
            env = {**ctx.env, "REPORTS_DATABASE_URL": sqlite_url(database)}
            command = pinned(
                python(str(ROOT / "seed.py"), "add", "--file", str(source)), ctx.server_cpu
            )
            started = time.perf_counter()
            result = run_checked(command, env=env, timeout=600, what="seed.py add --file")
            elapsed = time.perf_counter() - started
            if f"added {count} reports" not in result.stdout:
                raise BenchError(f"seed.py add said {result.stdout.strip()!r}")
            times.append(elapsed)
            log(f"[{repeat}/{ctx.args.repeats}] bulk: {count:,} reports in {elapsed:.2f}s")
            for path in directory.glob(f"bulk-{repeat}.db*"):
                path.unlink()
        seconds = median(times)
        rows = [
            [
                f"{count:,} reports, JSON lines",
                num(seconds, 2),
                num(count / seconds),
                num(median(startup), 2),
            ]
        ]
        lines = [
            f"Wall time of the whole command (pinned to CPU {ctx.server_cpu or '-'}), median of "
            f"{ctx.args.repeats}, each into a fresh copy of a migrated, empty SQLite file. "
            "'fixed cost' is `seed.py list --limit 1` on that file: interpreter start, imports "
            "and the schema check that every command pays.",
            "",
            *table(["input", "seconds", "reports/s", "fixed cost s"], rows),
        ]
        check = Check(
            f"seed.py add --file, {count:,} reports", seconds, "<=", MAX_BULK_SECONDS, " s"
        )
        data = {"count": count, "seconds": times, "startup_seconds": startup}
        return Section(self.key, self.title, lines, [check], data)


# -- sequential writes -----------------------------------------------------------------------

PUT_TOKEN = "bench-write-token-0123456789"
SYNCHRONOUS = ("FULL", "NORMAL")


class Puts(Scenario):
    """Sequential `put`s over one connection, the service on SQLite with synchronous FULL
    (the default: a commit waits for fsync) and with NORMAL; the ratio of the two."""

    key = "puts"
    title = "Sequential writes: synchronous FULL vs NORMAL"

    def run(self, ctx: Context) -> Section:
        count = ctx.args.puts
        servers = {}
        for mode in SYNCHRONOUS:
            url = migrated(
                ctx.env, sqlite_url(ctx.work_dir / f"puts-{mode}.db"), tutorial=True, token=False
            )
            seed_py(
                ctx.env, url, "token", "create", "bench-writer", "--value", PUT_TOKEN, "--write"
            )
            label = f"service, SQLite, synchronous={mode}"
            target = service(f"puts-{mode.lower()}", label, url, 4, sqlite_synchronous=mode)
            servers[mode] = ctx.start(target)
        figures: dict[str, list[dict[str, Any]]] = {mode: [] for mode in SYNCHRONOUS}
        for repeat in range(1, ctx.args.repeats + 1):
            for mode, server in servers.items():
                command = pinned(
                    python(
                        "-m",
                        "benchmarks.puts",
                        *("--url", server.url, "--token", PUT_TOKEN, "--count", str(count)),
                    ),
                    ctx.client_cpu,
                )
                what = f"puts, synchronous={mode}"
                result = run_checked(command, env=ctx.env, timeout=600, what=what)
                data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
                figures[mode].append(data)
                log(f"[{repeat}/{ctx.args.repeats}] {what}: {count / data['seconds']:,.0f}/s")
        rates = {
            mode: median([count / d["seconds"] for d in runs]) for mode, runs in figures.items()
        }
        rows = []
        for mode, runs in figures.items():
            latencies = [ms for d in runs for ms in d["ms"]]
            rows.append(
                [
                    servers[mode].target.label,
                    num(rates[mode]),
                    num(percentile(latencies, 50), 3),
                    num(percentile(latencies, 99), 3),
                    ratio(divide(rates[mode], rates["NORMAL"])),
                ]
            )
        lines = [
            f"{count:,} `put`s one after another over one connection (each its own commit), "
            f"median of {ctx.args.repeats}, into a fresh SQLite file in the run's temporary "
            "directory (its disk decides what an fsync costs). FULL is the default: a commit "
            "returns once the WAL is on the disk; NORMAL only syncs at checkpoints.",
            "",
            *table(["server", "puts/s", "p50 ms", "p99 ms", "puts/s vs NORMAL"], rows),
        ]
        return Section(self.key, self.title, lines, [], {"count": count, "runs": figures})


# -- concurrent writes ----------------------------------------------------------------------

MIN_WRITES_RATIO = 0.6
WRITE_WAYS = (("ws", "put over the WebSocket"), ("http", "PUT /api/reports/{name}"))


class Writes(Scenario):
    """Writes/s and p99 of `put` over the WebSocket and `PUT /api/reports/{name}`, with 1 and
    with 16 writers, against the raw driver running the same transaction in a tight loop;
    then a check that every acknowledged write is in the database."""

    key = "writes"
    title = "Writes: put and PUT against the raw driver"

    def run(self, ctx: Context) -> Section:
        databases = {
            "SQLite": migrated(
                ctx.env, sqlite_url(ctx.work_dir / "writes.db"), tutorial=False, token=False
            )
        }
        if ctx.args.postgres_url:
            name = f"{ctx.args.postgres_database}_writes"
            databases["PostgreSQL"] = postgres(ctx.env, ctx.args.postgres_url, name)
        try:
            return self.measure(ctx, databases)
        finally:
            if ctx.args.postgres_url:
                drop_postgres(ctx.args.postgres_url, f"{ctx.args.postgres_database}_writes")

    def measure(self, ctx: Context, databases: dict[str, str]) -> Section:
        writers = ctx.args.writers
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        missing_total = 0
        for backend, url in databases.items():
            seed_py(
                ctx.env, url, "token", "create", "bench-writer", "--value", PUT_TOKEN, "--write"
            )
            target = service(f"writes-{backend.lower()}", f"service, {backend}", url, 4)
            server = ctx.start(target)
            http_url = f"http://127.0.0.1:{server.port}"
            for repeat in range(1, ctx.args.repeats + 1):
                for way in ("raw", "ws", "http"):
                    for n in writers:
                        where = {
                            "raw": ["--database-url", url],
                            "ws": ["--url", server.url],
                            "http": ["--url", http_url],
                        }[way]
                        command = python(
                            "-m",
                            "benchmarks.writes",
                            way,
                            *where,
                            "--token",
                            PUT_TOKEN,
                            *("--writers", str(n), "--duration", str(ctx.args.duration)),
                            *("--prefix", f"{way}{n}r{repeat}-"),
                        )
                        what = f"writes, {backend}, {way} x{n}"
                        result = run_checked(
                            pinned(command, ctx.client_cpu), env=ctx.env, timeout=120, what=what
                        )
                        data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
                        if data["errors"]:
                            raise BenchError(f"{what}: {data['errors'][0]}")
                        lost = asyncio.run(missing(url, data.pop("acked")))
                        missing_total += lost
                        rate = data["writes"] / data["seconds"]
                        runs[f"{backend}/{way}/{n}"].append({**data, "rate": rate, "missing": lost})
                        log(f"[{repeat}/{ctx.args.repeats}] {what}: {rate:,.0f}/s, {lost} missing")
            if not server.proc.alive():
                raise BenchError(f"{server.proc.name} died:\n{server.proc.tail()}")
        rows, checks = [], []
        for backend in databases:

            def rate(way: str, n: int, backend: str = backend) -> float:
                return median([r["rate"] for r in runs[f"{backend}/{way}/{n}"]])

            for n in writers:
                # NOTE: the limit for n writers is the raw driver's best at up to n: SQLite
                #   serialises writers, so threads contending for its lock only lose to one.
                limit = max(rate("raw", m) for m in writers if m <= n)
                for way, label in (("raw", "raw driver, same transaction"), *WRITE_WAYS):
                    found = runs[f"{backend}/{way}/{n}"]
                    ms = [v for r in found for v in r["ms"]]
                    value = divide(rate(way, n), limit)
                    spread = [r["rate"] for r in found]
                    rows.append(
                        [
                            backend,
                            label,
                            str(n),
                            num(rate(way, n)),
                            f"{num(min(spread))}-{num(max(spread))}",
                            num(percentile(ms, 50), 2),
                            num(percentile(ms, 99), 2),
                            ratio(value),
                            str(sum(r["missing"] for r in found)),
                        ]
                    )
                    if way != "raw":
                        name = f"{backend}, {label}, {n} writer(s): vs raw driver"
                        checks.append(Check(name, value, ">=", MIN_WRITES_RATIO, "x"))
        checks.append(Check("acknowledged writes missing afterwards", missing_total, "<=", 0))
        lines = [
            f"Each figure the median of {ctx.args.repeats} runs of {ctx.args.duration:g} s; the "
            "range is the lowest and highest run, p50/p99 over every write of all runs. Every "
            "write adds a report of its own name, a commit each (SQLite synchronous=FULL, the "
            "default). The raw driver (`benchmarks/writes.py raw`, sqlite3 or asyncpg) runs the "
            "service's transaction (latest version, report upsert, changelog row; on PostgreSQL "
            "the advisory lock and NOTIFY too) in a tight loop in the client process: no "
            "SQLAlchemy, no protocol, no socket to a server. Its best rate at up to n writers "
            "is the limit for n. 'missing': acknowledged writes not found in the database "
            "afterwards.",
            "",
            *table(
                [
                    "database",
                    "writes by",
                    "writers",
                    "writes/s",
                    "range",
                    "p50 ms",
                    "p99 ms",
                    "vs raw",
                    "missing",
                ],
                rows,
            ),
        ]
        return Section(self.key, self.title, lines, checks, {"runs": runs})


# -- change feed -----------------------------------------------------------------------------

MAX_PUSH_P99_MS = 5.0
MAX_SAME_PROCESS_P99_MS = 2.0
MAX_FANOUT_P99_MS = 100.0
FEED_WRITE_TOKEN = "bench-feed-writer-0123456789"
FEED_HEADER = [
    "commits",
    "subscribers",
    "changes",
    "first p50",
    "first p99",
    "all p50",
    "all p99",
    "client CPU",
    "server CPU",
]
FLEET_FROM = 1000
"""Rows with this many subscribers or more are held by benchmarks/fleet.py, not feedlat.py."""
FLEET_PROCESSES = 2
FLEET_SOURCES = 8


@dataclass(frozen=True)
class FeedCase:
    """One row of the change-feed table: which server, who commits, how many subscribers."""

    label: str
    target: str
    subscribers: int
    changes: int
    same_process: bool = False
    wakeup: str = "auto"
    limit: float | None = None  # the target on first-subscriber p99 (all, with many)


FEED_CASES = (
    FeedCase("SQLite, another process", SQLITE, 1, 200, limit=MAX_PUSH_P99_MS),
    FeedCase("SQLite, another process, REPORTS_FEED_WAKEUP=poll", SQLITE, 1, 200, wakeup="poll"),
    FeedCase("SQLite, same process (`put`)", SQLITE, 1, 200, True, limit=MAX_SAME_PROCESS_P99_MS),
    FeedCase("SQLite, another process", SQLITE, 1000, 30),
    FeedCase("SQLite, another process", SQLITE, 10_000, 20, limit=MAX_FANOUT_P99_MS),
    FeedCase("PostgreSQL, another process", POSTGRES, 1, 200, limit=MAX_PUSH_P99_MS),
    FeedCase(
        "PostgreSQL, same process (`put`)", POSTGRES, 1, 200, True, limit=MAX_SAME_PROCESS_P99_MS
    ),
)


class ChangeFeed(Scenario):
    """Commit-to-push latency: a change committed, subscribers get the push.

    `benchmarks/feedlat.py` (pinned to the client core) holds the subscribers. It commits each
    change itself through the service's repository (another process than the server), so one
    clock times both ends: from the commit returning to the push arriving at the first
    subscriber, and at the last. Or it sends a `put` to the server (the same process commits):
    from the put's reply arriving to the push arriving.
    """

    key = "changefeed"
    title = "Change feed: commit-to-push latency"

    def run(self, ctx: Context) -> Section:
        servers: dict[tuple[str, str], Server] = {}
        rows, checks, data = [], [], {}
        for case in FEED_CASES:
            if case.target not in ctx.targets:
                if case.limit is not None:
                    checks.append(
                        Check(f"commit to push, {case.label}", None, "<=", case.limit, " ms")
                    )
                continue
            target = ctx.targets[case.target]
            if (case.target, case.wakeup) not in servers:
                seed_py(
                    ctx.env,
                    str(target.database_url),
                    *("token", "create", f"feed-writer-{case.wakeup}"),
                    *("--value", f"{FEED_WRITE_TOKEN}-{case.wakeup}", "--write"),
                )
                settings = (*target.settings, ("REPORTS_FEED_WAKEUP", case.wakeup))
                target = dataclasses.replace(target, settings=settings)
                servers[case.target, case.wakeup] = ctx.start(
                    target, nofile=65536, tag=f"-feed-{case.wakeup}"
                )
            server = servers[case.target, case.wakeup]
            figures = self.measure(ctx, server, case)
            first, every = figures["first_ms"], figures["all_ms"]
            log(f"{case.label} x{case.subscribers}: p99 {percentile(first, 99):.2f} ms")
            rows.append(
                [
                    case.label,
                    f"{case.subscribers:,}",
                    str(case.changes),
                    num(percentile(first, 50), 2),
                    num(percentile(first, 99), 2),
                    num(percentile(every, 50), 2),
                    num(percentile(every, 99), 2),
                    percent(figures.get("client_cpu")),
                    percent(figures.get("server_cpu")),
                ]
            )
            data[f"{case.label} x{case.subscribers}"] = figures
            if case.limit is not None:
                many = case.subscribers > 1
                what = f"all {case.subscribers:,} subscribers" if many else "1 subscriber"
                value = percentile(every if many else first, 99)
                note = ""
                if many and value > case.limit:
                    note = fanout_note(figures)
                checks.append(
                    Check(
                        f"commit to push p99, {case.label}, {what}",
                        value,
                        "<=",
                        case.limit,
                        " ms",
                        note,
                    )
                )
        lines = [
            "The service on each database, woken by the database (REPORTS_FEED_WAKEUP=auto: "
            "inotify on SQLite, LISTEN on PostgreSQL) unless the row says poll (every "
            "REPORTS_FEED_INTERVAL, 10 ms: how it was before). 'another process': "
            "`benchmarks/feedlat.py` (pinned to the client core) holds the subscribers and "
            "commits each change through the service's repository; ms from the commit "
            "returning to the push arriving, at the first subscriber and at the last one. "
            "'same process': it sends a `put` to the server on another connection; ms from "
            "the put's reply arriving to the push arriving (negative: the push came first). "
            f"Rows of {FLEET_FROM:,} subscribers and more: `benchmarks/fleet.py` holds them "
            f"(picows, {FLEET_PROCESSES} processes on the client core, source addresses "
            f"127.0.0.2 and up) and commits; the other rows: feedlat.py (websockets). Client "
            "CPU: the whole load generator's CPU time over the run, as a share of one core "
            "(near 100%: the client, not the server, is the limit); server CPU likewise.",
            "",
            *table(FEED_HEADER, rows),
        ]
        return Section(self.key, self.title, lines, checks, data)

    @staticmethod
    def measure(ctx: Context, server: Server, case: FeedCase) -> dict[str, Any]:
        if case.subscribers >= FLEET_FROM and not case.same_process:
            command = fleet_command(server, case.subscribers)
            command += ["--database-url", str(server.target.database_url)]
            command += ["--changes", str(case.changes), "--pause", "0.05"]
            what = f"change feed, {case.label} x{case.subscribers}"
            result = run_checked(
                pinned(command, ctx.client_cpu), env=ctx.env, timeout=600, what=what
            )
            fleet: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
            if fleet["incomplete"]:
                raise BenchError(f"{what}: a change did not reach every subscriber: {fleet}")
            return fleet
        command = python(
            "-m",
            "benchmarks.feedlat",
            *("--url", server.url, "--token", TOKEN),
            *("--database-url", str(server.target.database_url)),
            *("--subscribers", str(case.subscribers), "--changes", str(case.changes)),
        )
        if case.same_process:
            command += ["--write-token", f"{FEED_WRITE_TOKEN}-{case.wakeup}"]
        what = f"change feed, {case.label} x{case.subscribers}"
        result = run_checked(pinned(command, ctx.client_cpu), env=ctx.env, timeout=300, what=what)
        figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return figures


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def fleet_command(server: Server, subscribers: int, processes: int = FLEET_PROCESSES) -> list[str]:
    """benchmarks/fleet.py holding ``subscribers`` of ``server``; the caller adds the changes."""
    command = python("-m", "benchmarks.fleet", "--url", server.url)
    command += ["--subscribers", str(subscribers), "--processes", str(processes)]
    command += ["--sources", str(FLEET_SOURCES), "--server-pid", str(server.proc.pid)]
    if server.target.authenticated:
        command += ["--token", TOKEN]
    return command


def fanout_note(figures: dict[str, Any]) -> str:
    """What stands in the way of a fan-out target, by whose CPU was saturated."""
    client, server = figures.get("client_cpu", 0.0), figures.get("server_cpu", 0.0)
    if client >= 0.9:
        return f"the load generator's core was busy ({client:.0%}): a client limit"
    return (
        f"the server (CPU {server:.0%} of its core, client {client:.0%}): one socket write "
        "per subscriber, about 70% of its time (see the README's fan-out profile)"
    )


# -- sustained fan-out -----------------------------------------------------------------------

MIN_BROADCAST_RATIO = 0.8
MAX_SUSTAINED_LAG_MS = 1000.0
"""A rate holds when the changes were made at it, each reached every subscriber, none was
dropped, and the p99 of commit to last arrival stayed within this: a subscriber falling behind
shows as growing lag."""
MIN_MADE_SHARE = 0.95
"""A rate holds only if the changes were made at it (commits can be slower than asked)."""
SUSTAINED_STEPS = 5
"""Rates tried, halving from --sustained-rate, until one holds."""
SUSTAINED_HEADER = [
    "server",
    "changes/s",
    "made/s",
    "offered deliveries/s",
    "received deliveries/s",
    "all p99 ms",
    "not delivered",
    "dropped",
    "client CPU",
    "server CPU",
    "holds",
]


class SustainedFanout(Scenario):
    """Changes at a rate to many subscribers, on the service and on the bare broadcast server.

    `benchmarks/fleet.py` holds the subscribers and makes the changes at ``--sustained-rate``
    a second for ``--sustained-seconds``: on the service, commits through its repository from
    the fleet's process (another process than the server, as in the change-feed rows); on the
    bare broadcast server, a message that it sends on to every other connection. When the
    rate does not hold it is halved, up to SUSTAINED_STEPS times.
    """

    key = "sustained"
    title = "Sustained fan-out: changes a second to many subscribers, against a bare broadcast"

    def run(self, ctx: Context) -> Section:
        args = ctx.args
        rows, checks, data = [], [], {}
        held: dict[str, dict[str, Any] | None] = {}
        targets = [t for t in (ctx.targets.get(SQLITE), bare_broadcast()) if t is not None]
        for target in targets:
            server = ctx.start(target, nofile=args.sustained_subscribers + 1024, tag="-sustained")
            held[target.key] = None
            rate = args.sustained_rate
            runs = []
            for _ in range(SUSTAINED_STEPS):
                figures = self.measure(ctx, server, rate)
                runs.append(figures)
                rows.append(self.row(target.label, figures))
                log(
                    f"sustained {target.key} {rate:g}/s: "
                    f"{figures['deliveries_per_s']:,.0f} deliveries/s, holds {figures['holds']}"
                )
                if figures["holds"]:
                    held[target.key] = figures
                    break
                rate /= 2
            data[target.key] = runs
            ctx.procs.stop(server.proc)
        service_held, bare_held = held.get(SQLITE), held.get(BROADCAST)
        offered = f"{args.sustained_rate:g} changes/s to {args.sustained_subscribers:,}"
        first = data.get(SQLITE, [{}])[0]
        checks.append(
            Check(
                f"sustained {offered} subscribers for {args.sustained_seconds:g} s, service "
                "(SQLite): changes/s that hold",
                service_held["rate"] if service_held else (0.0 if SQLITE in data else None),
                ">=",
                args.sustained_rate,
                "/s",
                "" if first.get("holds", True) else sustained_note(first),
            )
        )
        ratio_value = (
            divide(service_held["deliveries_per_s"], bare_held["deliveries_per_s"])
            if service_held and bare_held
            else (0.0 if bare_held and SQLITE in data else None)
        )
        note = ""
        if service_held and bare_held and service_held["rate"] < bare_held["rate"]:
            note = (
                f"the service held {service_held['rate']:g}/s, "
                f"the bare broadcast {bare_held['rate']:g}/s"
            )
        if data.get(SQLITE) and data.get(BROADCAST):
            # NOTE: at the first rate both were offered the same; when neither held it, what
            #   each received is its capacity, a finer ratio than the halving steps give.
            capacity = divide(
                data[SQLITE][0]["deliveries_per_s"], data[BROADCAST][0]["deliveries_per_s"]
            )
            note += f"{'; ' if note else ''}at {args.sustained_rate:g}/s received: {capacity:.2f}x"
        checks.append(
            Check(
                "sustained fan-out: service deliveries/s vs the bare broadcast's (highest rate "
                "that holds on each)",
                ratio_value,
                ">=",
                MIN_BROADCAST_RATIO,
                "x",
                note,
            )
        )
        lines = [
            f"{args.sustained_subscribers:,} subscribers held by `benchmarks/fleet.py` "
            f"({FLEET_PROCESSES} processes on the client core, source addresses 127.0.0.2 and "
            f"up); changes offered at the rate for {args.sustained_seconds:g} s: on the service "
            "(SQLite, REPORTS_FEED_WAKEUP=auto) commits through its repository from the fleet's "
            "process, on the bare broadcast server (`benchmarks/servers/bare_broadcast.py`) a "
            "message it sends on to every other connection. Made/s: the changes actually made a "
            "second (commits slower than the rate fall behind it). Received deliveries/s: pushes "
            "that arrived, over the time from the first change to the last arrival. all p99: "
            "ms from a change being made to its last arrival. Not delivered: changes that had "
            f"not reached every subscriber {SUSTAINED_GRACE:g} s after the last was made. "
            "Dropped: connections the server closed (4001: its queue for that subscriber "
            f"overflowed). A rate holds when the changes were made at it, none is missing or "
            "dropped and all p99 is at most "
            f"{MAX_SUSTAINED_LAG_MS:g} ms; else the rate is halved. CPU: of the whole run, as "
            "a share of one core.",
            "",
            *table(SUSTAINED_HEADER, rows),
        ]
        return Section(self.key, self.title, lines, checks, data)

    @staticmethod
    def measure(ctx: Context, server: Server, rate: float) -> dict[str, Any]:
        args = ctx.args
        command = fleet_command(server, args.sustained_subscribers)
        if server.target.key == BROADCAST:
            command += ["--publish"]
        else:
            command += ["--database-url", str(server.target.database_url)]
        command += ["--rate", str(rate), "--duration", str(args.sustained_seconds)]
        command += ["--grace", str(SUSTAINED_GRACE)]
        what = f"sustained {server.target.key} {rate:g}/s"
        timeout = args.sustained_seconds + args.connect_budget + 120
        result = run_checked(
            pinned(command, ctx.client_cpu), env=ctx.env, timeout=timeout, what=what
        )
        figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        if not server.proc.alive():
            raise BenchError(f"{server.proc.name} died:\n{server.proc.tail()}")
        figures["all_p99_ms"] = percentile(figures.pop("all_ms"), 99)
        figures["first_p99_ms"] = percentile(figures.pop("first_ms"), 99)
        figures["holds"] = (
            figures["made_per_s"] >= MIN_MADE_SHARE * rate
            and figures["incomplete"] == 0
            and figures["closed"] == 0
            and figures["disconnected"] == 0
            and figures["all_p99_ms"] <= MAX_SUSTAINED_LAG_MS
        )
        return figures

    @staticmethod
    def row(label: str, figures: dict[str, Any]) -> list[str]:
        return [
            label,
            num(figures["rate"], 1),
            num(figures.get("made_per_s"), 1),
            num(figures["rate"] * figures["subscribers"]),
            num(figures["deliveries_per_s"]),
            num(figures["all_p99_ms"], 1),
            str(figures["incomplete"]),
            f"{figures['closed'] + figures['disconnected']} {figures['close_codes'] or ''}".strip(),
            percent(figures["client_cpu"]),
            percent(figures["server_cpu"]),
            "yes" if figures["holds"] else "no",
        ]


SUSTAINED_GRACE = 5.0


def sustained_note(figures: dict[str, Any]) -> str:
    why = []
    if figures["made_per_s"] < MIN_MADE_SHARE * figures["rate"]:
        why.append(f"only {figures['made_per_s']:.0f} changes/s made")
    if figures["incomplete"]:
        why.append(f"{figures['incomplete']} changes not delivered to all")
    if figures["closed"] or figures["disconnected"]:
        why.append(f"{figures['closed'] + figures['disconnected']} subscribers dropped")
    if figures["all_p99_ms"] > MAX_SUSTAINED_LAG_MS:
        why.append(f"p99 lag {figures['all_p99_ms']:,.0f} ms")
    return f"at {figures['rate']:g}/s: {', '.join(why)}; " + fanout_note(figures)


# -- 100,000 connections ---------------------------------------------------------------------

MAX_OPEN_SECONDS = 120.0
FD_HEADROOM = 1024
"""File descriptors of the server kept for other uses than the connections (database, logs)."""
CONNECTION_PROCESSES = 4
CONNECTION_SOURCES = 16


def fd_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of process ``pid``, from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise BenchError(f"no fd limit for process {pid}")


class Connections(Scenario):
    """Many idle, authenticated and subscribed connections to one service process (SQLite)."""

    key = "connections"
    title = "Connections: many subscribed connections on one process, and one change to all"

    def run(self, ctx: Context) -> Section:
        wanted = asked = ctx.args.many_connections
        if SQLITE not in ctx.targets:
            return Section(self.key, self.title, ["no SQLite target: skipped."])
        limits = {
            "REPORTS_MAX_CONNECTIONS": str(wanted + 100),
            "REPORTS_MAX_CONNECTIONS_PER_TOKEN": str(wanted + 100),
            "REPORTS_MAX_PENDING": str(wanted + 100),
            "REPORTS_MAX_PENDING_PER_ADDRESS": str(wanted + 100),
        }
        sqlite = ctx.targets[SQLITE]
        target = dataclasses.replace(
            sqlite, key="sqlite-many", settings=(*sqlite.settings, *limits.items())
        )
        server = ctx.start(target, nofile=wanted + 4096, tag="-connections")
        time.sleep(1.0)
        before = rss_kib(server.proc.pid)
        # NOTE: without CAP_SYS_RESOURCE (a container) no process may go past the hard fd
        #   limit: the server then holds fewer, and the rows say so.
        limit = fd_limit(server.proc.pid)
        capped = ""
        if limit < wanted + FD_HEADROOM:
            capped = (
                f"only {limit - FD_HEADROOM:,} of {wanted:,} asked for: the server's fd limit "
                f"is {limit:,} (its hard limit; going past it needs CAP_SYS_RESOURCE)"
            )
            log(f"connections: {capped}")
            wanted = limit - FD_HEADROOM
        # NOTE: each fleet process is held to the same hard limit.
        processes = max(CONNECTION_PROCESSES, -(-wanted // max(1, limit - FD_HEADROOM)))
        command = fleet_command(server, wanted, processes)
        command[command.index("--sources") + 1] = str(CONNECTION_SOURCES)
        command += ["--database-url", str(target.database_url), "--changes", "1", "--wait"]
        # NOTE: the target is 120 s; given longer, the run still measures the rest.
        budget = max(ctx.args.connect_budget, 3 * MAX_OPEN_SECONDS)
        command += ["--connect-budget", str(budget)]
        fleet = ctx.procs.start(
            "connections fleet",
            pinned(command, ctx.client_cpu),
            env=ctx.env,
            log_path=ctx.log_dir / "connections-fleet.log",
            pipes=True,
        )
        ready = read_json_line(fleet, budget + 90)
        if ready.get("event") != "ready":
            raise BenchError(f"connections fleet: unexpected {ready}")
        time.sleep(1.0)
        after = rss_kib(server.proc.pid)
        assert fleet.popen.stdin is not None
        fleet.popen.stdin.write(b"go\n")
        fleet.popen.stdin.flush()
        done = read_json_line(fleet, 120)
        while done.get("event") != "done":
            done = read_json_line(fleet, 120)
        ctx.procs.stop(fleet)
        ctx.procs.stop(server.proc)
        opened = int(ready["connections"])
        per_connection = (after - before) / opened if opened else float("nan")
        reached = done["all_ms"][0] if done["all_ms"] else float("nan")
        log(
            f"connections: {opened:,} in {ready['seconds']:.1f} s, {per_connection:.1f} KiB each, "
            f"one change to all in {reached:.0f} ms"
        )
        short = capped or ("" if opened >= wanted else f"only {opened:,} of {wanted:,} opened")
        checks = [
            Check(
                f"{asked:,} subscribed connections opened within {MAX_OPEN_SECONDS:g} s, "
                "service (SQLite)",
                float(ready["seconds"]) if opened >= wanted and not capped else float("nan"),
                "<=",
                MAX_OPEN_SECONDS,
                " s",
                short,
            ),
            Check(
                f"RSS per subscribed connection, {opened:,} connections",
                per_connection,
                "<=",
                MAX_IDLE_KIB,
                " KiB",
                capped,
            ),
            Check(
                f"one change delivered to every one of the {opened:,} connections",
                100 * (done["delivered"] / opened) if opened else float("nan"),
                ">=",
                100.0,
                "%",
                (
                    f"all of them had it {reached:,.0f} ms after the commit; "
                    if done["all_ms"]
                    else "not all had it 10 s after the commit; "
                )
                + fanout_note(done),
            ),
        ]
        header = ["connections", "seconds to open", "RSS before MiB", "RSS with them MiB"]
        header += ["KiB per connection", "first ms", "all ms", "client CPU"]
        row = [
            num(opened),
            num(float(ready["seconds"]), 1),
            num(before / 1024, 1),
            num(after / 1024, 1),
            num(per_connection, 2),
            num(done["first_ms"][0] if done["first_ms"] else float("nan"), 0),
            num(reached, 0),
            percent(done["client_cpu"]),
        ]
        lines = [
            f"One service process on SQLite with its limits raised for this server only "
            f"(REPORTS_MAX_CONNECTIONS, _PER_TOKEN, REPORTS_MAX_PENDING, _PER_ADDRESS: "
            f"{asked + 100:,}) and its fd limit; `benchmarks/fleet.py` opens the connections "
            f"({processes} processes on the client core, source addresses 127.0.0.2 "
            f"to 127.0.0.{CONNECTION_SOURCES + 1}), each sends the token and subscribes. VmRSS "
            "before and with them; then one change is committed from the fleet's process and "
            "timed until every connection has it.",
            "",
            *table(header, [row]),
        ]
        data = {"ready": ready, "done": done, "rss_before_kib": before, "rss_after_kib": after}
        return Section(self.key, self.title, lines, checks, data)


# -- system calls per round trip ---------------------------------------------------------------


class Syscalls(Scenario):
    """System calls each server makes per round trip at 1 connection, counted by ``strace -c``.

    The count does not depend on the machine, the time of each call does: about 0.1 µs on one
    machine of the project's kind and 6 µs on another. Each call the service makes beyond
    the tutorial's is what costs it throughput where calls are dear.
    """

    key = "syscalls"
    title = "System calls per round trip (1 connection)"
    ROUND_TRIPS_SECONDS = 3.0

    def run(self, ctx: Context) -> Section:
        strace = shutil.which("strace")
        if strace is None:
            return Section(self.key, self.title, ["strace is not installed: skipped."])
        keys = [key for key in ctx.args.targets if key in ctx.targets]
        counts: dict[str, Counter[str]] = {}
        trips: dict[str, int] = {}
        for key in keys:
            server = ctx.start(ctx.targets[key], tag="-strace")
            if ctx.args.prime > 0:
                ctx.prime(server, ctx.args.prime)
            out = ctx.work_dir / f"strace-{key}.txt"
            tracer = ctx.procs.start(
                f"strace {key}",
                [strace, "-c", "-f", "-o", str(out), "-p", str(server.proc.pid)],
                env=ctx.env,
                log_path=ctx.log_dir / f"strace-{key}.log",
            )
            time.sleep(1.0)  # NOTE: attached to every thread before the load starts
            data = ctx.round_trips(server, 1, self.ROUND_TRIPS_SECONDS, 0.0)
            ctx.procs.stop(tracer)  # NOTE: strace writes its summary when interrupted
            ctx.procs.stop(server.proc)
            counts[key], trips[key] = parse_strace(out.read_text()), int(data["round_trips"])
            log(f"{key}: {sum(counts[key].values()) / trips[key]:.1f} system calls per round trip")
        names = sorted({n for c in counts.values() for n in c}, key=lambda n: -counts[keys[-1]][n])
        rows = [
            [name, *(num(divide(counts[k][name], trips[k]), 2) for k in keys)]
            for name in names
            if any(divide(counts[k][name], trips[k]) >= 0.05 for k in keys)
        ]
        totals = {k: divide(sum(counts[k].values()), trips[k]) for k in keys}
        rows.append(["**total**", *(f"**{num(totals[k], 1)}**" for k in keys)])
        lines = [
            f"`strace -c -f` on each server while one connection makes round trips for "
            f"{self.ROUND_TRIPS_SECONDS:g} s (the connection's opening included, over "
            f"{min(trips.values()):,}+ round trips); calls per round trip, all threads:",
            "",
            *table(["system call", *(ctx.targets[k].label for k in keys)], rows),
        ]
        return Section(self.key, self.title, lines, [], {"per_round_trip": totals})


def parse_strace(summary: str) -> Counter[str]:
    """``strace -c`` output: calls by system call name."""
    calls: Counter[str] = Counter()
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] += int(parts[3])
    return calls


# -- profile (optional) ------------------------------------------------------------------------


class Profile(Scenario):
    """py-spy samples of one server (--profile-target) under the 64-connection load."""

    key = "profile"
    title = "Profile: where the service spends a message"

    def run(self, ctx: Context) -> Section:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            return Section(self.key, self.title, ["py-spy is not installed: skipped."])
        seconds = ctx.args.profile_seconds
        target = ctx.targets[ctx.args.profile_target]
        server = ctx.start(target, tag="-profile")
        load = ctx.procs.start(
            "profile load",
            ctx.load_command(
                server,
                "rtt",
                *("--connections", "64", "--duration", str(seconds + 2), "--warmup", "0.5"),
            ),
            env=ctx.env,
            log_path=ctx.log_dir / "profile-load.log",
        )
        time.sleep(1.0)
        raw = ctx.args.results_dir / f"profile-{target.key}.txt"
        run_checked(
            pinned(
                [
                    *(spy, "record", "--pid", str(server.proc.pid), "--duration", str(seconds)),
                    *(
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                        "--gil",
                        "--threads",
                    ),
                ],
                ctx.client_cpu,
            ),
            env=ctx.env,
            timeout=seconds + 60,
            what="py-spy record",
        )
        load.popen.wait(timeout=seconds + 60)
        ctx.procs.stop(load)
        ctx.procs.stop(server.proc)
        summary = summarise_profile(raw.read_text(encoding="utf-8"))
        lines = [
            f"`py-spy record --gil --threads`, {seconds} s at 250 Hz, of {target.label} "
            f"under the 64-connection load: {summary['samples']:,} samples "
            "of whichever thread held the GIL, i.e. of the Python work that the one core "
            f"spends. Raw collapsed stacks: `{raw}` (for flamegraph.pl or speedscope).",
            "",
            "By thread (share of the samples):",
            "",
            *table(["thread", "share"], summary["threads"]),
            "",
            "Self time by package (the frame actually running). SQLAlchemy runs part of its "
            "work in greenlets, whose stacks do not reach back to the request, so read the "
            "database's cost from the sqlalchemy and aiosqlite rows here:",
            "",
            *table(["package", "self"], summary["packages"]),
            "",
            "Inclusive time, top functions (on the stack; the launcher's frames left out):",
            "",
            *table(["function", "inclusive", "self"], summary["functions"]),
        ]
        return Section(self.key, self.title, lines, [], {"raw": str(raw)})


def _package(filename: str) -> str:
    """py-spy's short path ('sqlalchemy/engine/base.py', 'threading.py') -> its package."""
    parts = [part for part in filename.replace("\\", "/").split("/") if part]
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    if not parts:
        return "?"
    return parts[0].removesuffix(".py")


def _split_frame(frame: str) -> tuple[str, str]:
    """'function (path/file.py:12)' -> ('function (file.py)', 'path/file.py')."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if not name:
        return frame, ""
    return f"{name} ({Path(path).name})", path


# NOTE: frames every sample of a launched server has under it: they say nothing.
_LAUNCHER_FRAMES = {
    "_run_module_as_main (<frozen runpy>)",
    "_run_code (<frozen runpy>)",
    "<module> (launch.py)",
    "main (launch.py)",
    "run (main.py)",
    "Server.run (server.py)",
    "asyncio_run (_compat.py)",
}
NATIVE = "(no Python frame: C code holding the GIL - uvloop, sockets, drivers)"


def summarise_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Shares by thread, package (self) and function (inclusive) from collapsed stacks."""
    threads: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        first = frames[0]
        if first.startswith(("thread (", "process ")):
            # NOTE: 'thread (123): Thread-7 (_connection_worker_thread)' -> the thread's kind.
            kind = re.sub(r"Thread-\d+ ", "", first.split("): ", 1)[-1])
            threads[kind] += count
            frames = frames[1:]
        else:
            threads["all"] += count
        split = [_split_frame(f) for f in frames if f.strip()]
        if not split:
            packages[NATIVE] += count
            continue
        for name in {name for name, _path in split} - _LAUNCHER_FRAMES:
            inclusive[name] += count
        leaf, leaf_path = split[-1]
        self_time[leaf] += count
        packages[_package(leaf_path) if leaf_path else leaf] += count

    def share(n: int) -> str:
        return f"{100 * n / total:.1f}%" if total else "-"

    return {
        "samples": total,
        "threads": [[name, share(n)] for name, n in threads.most_common(8)],
        "packages": [[name, share(n)] for name, n in packages.most_common(15)],
        "functions": [
            [f"`{name}`", share(n), share(self_time[name])]
            for name, n in inclusive.most_common(top)
        ],
    }


SCENARIOS: list[type[Scenario]] = [
    BulkWrites,
    Puts,
    Writes,
    RoundTrips,
    IdleCapacity,
    ChangeFeed,
    SustainedFanout,
    Connections,
    Syscalls,
    Profile,
]
"""In the order they run; --only / --skip pick among their keys (Profile runs with --profile)."""


# -- machine noise ---------------------------------------------------------------------------


def probe_cores(ctx: Context, seconds: float = 2.0) -> dict[str, dict[str, Any]]:
    """Run benchmarks.machine on the server's and the client's core at once; per core."""
    cpus = {"server": ctx.server_cpu, "client": ctx.client_cpu}
    procs = {
        role: ctx.procs.start(
            f"probe {role}",
            pinned(python("-m", "benchmarks.machine", "--seconds", str(seconds)), cpu),
            env=ctx.env,
            log_path=ctx.log_dir / f"probe-{role}.log",
            pipes=True,
        )
        for role, cpu in cpus.items()
    }
    results = {}
    for role, proc in procs.items():
        results[role] = read_json_line(proc, seconds + 30)
        ctx.procs.stop(proc)
    return results


def noise_section(probes: Sequence[tuple[str, dict[str, dict[str, Any]]]]) -> Section:
    """The probes' results: how much of each core went to something other than the benchmark."""
    rows = [
        [
            when,
            role,
            f"{result['lost']:.1%}",
            str(result["gaps"]),
            num(result["longest_ms"], 1),
        ]
        for when, results in probes
        for role, result in results.items()
    ]
    worst = max((r["lost"] for _, results in probes for r in results.values()), default=0.0)
    lines = [
        "A busy loop on each core for 2 s notes every stall longer than 0.5 ms: time that the "
        "core gave to other processes or the hypervisor. More than a few percent means other "
        "work shared the machine and the figures below are noisy.",
        "",
        *table(["when", "core", "time lost", "stalls", "longest ms"], rows),
    ]
    if worst > 0.05:
        lines += ["", f"**Warning: up to {worst:.0%} of a core was lost: a noisy machine.**"]
    return Section("machine", "Machine noise", lines, [], {"probes": dict(probes)})
