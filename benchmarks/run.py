"""Benchmark the reports service against baselines, in one run: `python -m benchmarks.run`.

Starts every server itself (uvicorn with the service's production options, uvloop, httptools,
websockets-sansio, no per-message deflate), pinned to one core, with the picows load generator
pinned to another; prints a markdown table of the figures, the ratios against the tutorial's
dict baseline and PASS/FAIL per target, and writes it to benchmarks/results/latest.md (raw
figures in latest.json). Everything talks to 127.0.0.1 only, and every process started is
stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import ROOT
from benchmarks.databases import big_sqlite, drop_postgres, postgres, tutorial_sqlite
from benchmarks.procs import BenchError, Processes, base_env, log
from benchmarks.report import Section, render, write
from benchmarks.scenarios import SCENARIOS, Context, Profile, noise_section, probe_cores
from benchmarks.targets import (
    ALL_TARGETS,
    BARE,
    BASELINE,
    POSTGRES,
    SQLITE,
    SQLITE_BIG,
    SQLITE_BIG_NO_CACHE,
    Target,
    bare_echo,
    dict_baseline,
    service,
)

POSTGRES_ENV = "REPORTS_BENCH_POSTGRES_URL"
RESULTS = ROOT / "benchmarks" / "results"


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    keys = [cls.key for cls in SCENARIOS]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--duration", type=float, default=5.0, help="measured seconds per load run")
    run.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each")
    run.add_argument("--repeats", type=int, default=5, help="runs per figure; medians reported")
    run.add_argument(
        "--connections", type=int_list, default="1,64", help="connection counts, e.g. 1,64"
    )
    run.add_argument(
        "--targets",
        type=str_list,
        default=",".join(ALL_TARGETS),
        help=f"servers for the round trips, of {','.join(ALL_TARGETS)} "
        f"({POSTGRES} only with {POSTGRES_ENV})",
    )
    run.add_argument(
        "--prime",
        type=float,
        default=60.0,
        help="before the round trips, ask each server for every name of the load's pool once, "
        "within this many seconds (0: do not)",
    )
    run.add_argument("--only", type=str_list, help=f"run only these of {','.join(keys)}")
    run.add_argument("--skip", type=str_list, default="", help="skip these scenarios")
    run.add_argument("--profile", action="store_true", help="also profile the service (py-spy)")
    run.add_argument("--profile-seconds", type=int, default=10)
    run.add_argument(
        "--profile-target", default=SQLITE, help="the server --profile samples (sqlite, ...)"
    )

    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--big-reports", type=int, default=1_000_000, help="reports in the big DB")
    sizes.add_argument("--bulk-reports", type=int, default=100_000, help="reports seed.py adds")
    sizes.add_argument("--puts", type=int, default=2000, help="puts one after another (puts)")
    sizes.add_argument(
        "--writers", type=int_list, default="1,16", help="concurrent writers (writes)"
    )
    sizes.add_argument("--idle-connections", type=int, default=10_000)
    sizes.add_argument(
        "--idle-seconds", type=float, default=60.0, help="idle: CPU measured over this long"
    )
    sizes.add_argument(
        "--idle-targets",
        type=str_list,
        default=f"{SQLITE},{BASELINE},{BARE}",
        help="servers for the idle-capacity test",
    )
    sizes.add_argument(
        "--connect-budget", type=float, default=180.0, help="seconds to open the idle connections"
    )
    sizes.add_argument(
        "--sustained-rate", type=float, default=100.0, help="sustained: changes/s offered first"
    )
    sizes.add_argument(
        "--sustained-subscribers", type=int, default=1000, help="sustained: subscribers"
    )
    sizes.add_argument(
        "--sustained-seconds", type=float, default=30.0, help="sustained: seconds per rate"
    )
    sizes.add_argument(
        "--many-connections",
        type=int,
        default=100_000,
        help="connections: subscribed connections to one service process",
    )

    run.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="REPORTS_NAME=VALUE",
        help="a service setting for the servers (repeatable); the caller's REPORTS_* are not used",
    )

    where = parser.add_argument_group("where")
    where.add_argument("--server-cpu", default="0", help="taskset CPU list for the servers")
    where.add_argument("--client-cpu", default="1", help="taskset CPU list for the load")
    where.add_argument("--no-pin", action="store_true", help="do not use taskset")
    where.add_argument("--results-dir", type=Path, default=RESULTS)
    where.add_argument(
        "--cache-dir", type=Path, default=RESULTS / "cache", help="where the big DB is kept"
    )
    where.add_argument("--rebuild-cache", action="store_true", help="rebuild the big DB")
    where.add_argument(
        "--postgres-url",
        default=os.environ.get(POSTGRES_ENV) or None,
        help=f"PostgreSQL server to use (default ${POSTGRES_ENV}); a database is created in it",
    )
    where.add_argument("--postgres-database", default="reports_bench")
    return parser


def chosen_scenarios(args: argparse.Namespace) -> list[str]:
    keys = [cls.key for cls in SCENARIOS]
    unknown = {*(args.only or []), *args.skip} - set(keys)
    if unknown:
        raise BenchError(f"unknown scenario {sorted(unknown)[0]!r}: choose from {keys}")
    chosen = [k for k in keys if (args.only is None or k in args.only) and k not in args.skip]
    if Profile.key in chosen and not args.profile and not args.only:
        chosen.remove(Profile.key)
    return chosen


def check_args(args: argparse.Namespace) -> None:
    for key in [*args.targets, *args.idle_targets, args.profile_target]:
        if key not in ALL_TARGETS:
            raise BenchError(f"unknown target {key!r}: choose from {', '.join(ALL_TARGETS)}")
    if args.duration <= 0 or args.duration > 120 or args.repeats < 1 or args.repeats > 50:
        raise BenchError("--duration must be in (0, 120] s and --repeats in 1..50")
    if not 0 <= args.prime <= 600:
        raise BenchError("--prime must be in [0, 600] s")
    if not args.connections or min(args.connections) < 1 or max(args.connections) > 5000:
        raise BenchError("--connections must be counts in 1..5000")
    if not 1 <= args.idle_connections <= 50_000:
        raise BenchError("--idle-connections must be in 1..50000")
    if not 1 <= args.idle_seconds <= 600:
        raise BenchError("--idle-seconds must be in 1..600")
    if not 1 <= args.big_reports <= 10_000_000 or not 1 <= args.bulk_reports <= 5_000_000:
        raise BenchError("--big-reports or --bulk-reports out of range")
    if not 0 < args.sustained_rate <= 10_000 or not 1 <= args.sustained_subscribers <= 50_000:
        raise BenchError("--sustained-rate must be in (0, 10000], --sustained-subscribers 1..50000")
    if not 1 <= args.sustained_seconds <= 600:
        raise BenchError("--sustained-seconds must be in 1..600")
    if not 1 <= args.many_connections <= 1_000_000:
        raise BenchError("--many-connections must be in 1..1000000")
    if not 1 <= args.puts <= 1_000_000:
        raise BenchError("--puts must be in 1..1000000")


def prepare_targets(
    args: argparse.Namespace, scenarios: Sequence[str], env: dict[str, str], work: Path
) -> dict[str, Target]:
    """Build the databases that the chosen scenarios need; the targets ready to start."""
    wanted: set[str] = set()
    if "roundtrip" in scenarios or "syscalls" in scenarios:
        wanted |= {*args.targets, BASELINE}
    if "idle" in scenarios:
        wanted |= set(args.idle_targets)
    if "profile" in scenarios:
        wanted.add(args.profile_target)
    if "changefeed" in scenarios:
        wanted |= {SQLITE, POSTGRES}
    if "sustained" in scenarios or "connections" in scenarios:
        wanted.add(SQLITE)
    targets: dict[str, Target] = {}
    if BARE in wanted:
        targets[BARE] = bare_echo()
    if BASELINE in wanted:
        targets[BASELINE] = dict_baseline()
    if SQLITE in wanted:
        url = tutorial_sqlite(env, work)
        targets[SQLITE] = service(SQLITE, "service, SQLite, 4 reports", url, 4)
    if wanted & {SQLITE_BIG, SQLITE_BIG_NO_CACHE}:
        url = big_sqlite(env, args.cache_dir, args.big_reports, rebuild=args.rebuild_cache)
        label = f"service, SQLite, {args.big_reports:,} reports"
        targets[SQLITE_BIG] = service(SQLITE_BIG, label, url, args.big_reports)
        # NOTE: every query a cache miss: what a name pays the first time it is asked for.
        targets[SQLITE_BIG_NO_CACHE] = service(
            SQLITE_BIG_NO_CACHE, f"{label}, no cache", url, args.big_reports, cache_mb="0"
        )
    if POSTGRES in wanted:
        if args.postgres_url:
            url = postgres(env, args.postgres_url, args.postgres_database)
            targets[POSTGRES] = service(POSTGRES, "service, PostgreSQL, 4 reports", url, 4)
        else:
            log(f"no {POSTGRES_ENV}: the PostgreSQL server is skipped")
    return targets


def bench(args: argparse.Namespace) -> list[Section]:
    scenarios = chosen_scenarios(args)
    pin = not args.no_pin
    env = base_env()
    for setting in args.settings:
        name, _, value = setting.partition("=")
        if not name.startswith("REPORTS_") or not _:
            raise BenchError(f"--set wants REPORTS_NAME=VALUE, not {setting!r}")
        env[name] = value
    sections: list[Section] = []
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log_dir = args.results_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    targets: dict[str, Target] = {}
    with tempfile.TemporaryDirectory(prefix="reports-bench-") as tmp, Processes() as procs:
        try:
            targets.update(prepare_targets(args, scenarios, env, Path(tmp)))
            ctx = Context(
                args=args,
                procs=procs,
                env=env,
                work_dir=Path(tmp),
                log_dir=log_dir,
                targets=targets,
                server_cpu=args.server_cpu if pin else None,
                client_cpu=args.client_cpu if pin else None,
            )
            probes = [("before", probe_cores(ctx))]
            for cls in SCENARIOS:
                if cls.key in scenarios:
                    log(f"--- {cls.key}: {cls.title}")
                    started = time.monotonic()
                    sections.append(cls().run(ctx))
                    log(f"--- {cls.key} done in {time.monotonic() - started:.0f}s")
            probes.append(("after", probe_cores(ctx)))
            sections.insert(0, noise_section(probes))
        finally:
            procs.close()
            if POSTGRES in targets and args.postgres_url:
                drop_postgres(args.postgres_url, args.postgres_database)
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(
        ["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
    )
    started = time.monotonic()
    try:
        check_args(args)
        if importlib.util.find_spec("picows") is None:
            raise BenchError("the load generator needs picows: pip install -e '.[bench]'")
        sections = bench(args)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted; every server was stopped", file=sys.stderr)
        return 130
    settings = (
        f"{args.duration:g} s x {args.repeats} repeats, warm-up {args.warmup:g} s, "
        f"connections {','.join(map(str, args.connections))}, "
        f"total {time.monotonic() - started:.0f} s"
    )
    markdown = render(sections, command=command, settings=settings)
    path = write(args.results_dir, markdown, sections)
    print(markdown)
    log(f"written to {path}")
    failed = [c for s in sections for c in s.checks if c.status == "FAIL"]
    if failed:
        log(f"{len(failed)} target(s) FAIL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
