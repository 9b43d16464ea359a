"""The command line: migrate, seed, add/list/remove reports, manage tokens, serve."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from .access import MAX_TOKEN_BYTES, check_patterns, looks_like_jwt
from .config import NON_NEGATIVE, Settings, SettingsError
from .db import DatabaseURLError, sqlite_path
from .errors import ServiceError, first_line
from .jwt_keys import verifier_for
from .migrate import head_revision, require_head, upgrade
from .pipes import quiet_when_cut
from .records import NewReport, TokenInfo, new_token, utcnow
from .repository import ReportRepository, repository_for
from .transport import quiet_late_driver_threads

TUTORIAL_REPORTS = [
    NewReport(f"report{n}", f"Report {n}", f"This is the content of report {n}")
    for n in range(1, 5)
]
FIRST_TOKEN_NAME = "default"  # noqa: S105 - a token's name, not a secret


class CommandError(Exception):
    """An error a user caused: printed as one line, exit status 1."""


SERVE_OPTIONS = ("host", "port", "workers")


@quiet_when_cut
def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    threading.excepthook = quiet_late_driver_threads
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except (CommandError, ServiceError, SettingsError, DatabaseURLError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Reports service: with no command, seeds the tutorial's four reports.",
        epilog="Settings come from REPORTS_* environment variables; `settings` lists them.",
    )
    parser.set_defaults(handler=run_async(cmd_seed))
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    sub.add_parser("migrate", help="create or upgrade the schema (alembic upgrade head)")
    sub.choices["migrate"].set_defaults(handler=cmd_migrate)
    sub.add_parser("seed", help="add the tutorial's four reports (skips those present)")
    sub.choices["seed"].set_defaults(handler=run_async(cmd_seed))

    add = sub.add_parser("add", help="add a report, or many from a JSON / JSON-lines file")
    add.add_argument("name", nargs="?", help="the report's name (its lookup key)")
    add.add_argument("--title", help="the report's title")
    add.add_argument("--content", default="", help="the report's content")
    add.add_argument("--file", type=Path, help="JSON list or JSON lines of {name, title, content}")
    add.add_argument("--replace", action="store_true", help="overwrite reports that exist")
    add.set_defaults(handler=run_async(cmd_add))

    lst = sub.add_parser("list", help="list reports by name")
    lst.add_argument("--limit", type=int, help="show at most this many")
    lst.set_defaults(handler=run_async(cmd_list))

    rm = sub.add_parser("remove", help="remove a report")
    rm.add_argument("name")
    rm.set_defaults(handler=run_async(cmd_remove))

    token = sub.add_parser("token", help="manage access tokens for /reports")
    tsub = token.add_subparsers(title="token commands", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="create a token and print it once")
    create.add_argument("name")
    create.add_argument("--value", help="use this token instead of a random one")
    create.add_argument(
        "--write", action="store_true", help="may also put and remove reports over /reports"
    )
    create.add_argument(
        "--reports",
        nargs="+",
        metavar="PATTERN",
        help="only the reports whose names match these fnmatch patterns (default: *)",
    )
    create.add_argument("--expires", metavar="DURATION", help="expire after e.g. 90s, 12h, 30d, 2w")
    create.set_defaults(handler=run_async(cmd_token_create))
    tsub.add_parser("list", help="tokens and what they may do (never the tokens)").set_defaults(
        handler=run_async(cmd_token_list)
    )
    revoke = tsub.add_parser("revoke", help="revoke a token, or every JWT of a subject")
    revoke.add_argument("name", nargs="?")
    revoke.add_argument("--subject", metavar="SUB", help="refuse JWTs of SUB issued until now")
    revoke.set_defaults(handler=run_async(cmd_token_revoke))

    serve = sub.add_parser("serve", help="run the server with production settings")
    up = sub.add_parser("up", help="migrate, seed, create a first token if none, then serve")
    for p in (serve, up):
        p.add_argument("--host", help="overrides REPORTS_HOST")
        p.add_argument("--port", type=int, help="overrides REPORTS_PORT (1..65535)")
        p.add_argument("--workers", type=int, help="overrides REPORTS_WORKERS (at least 1)")
    serve.set_defaults(handler=with_serve_options(cmd_serve))
    up.set_defaults(handler=with_serve_options(cmd_up))

    sub.add_parser("settings", help="list every setting").set_defaults(handler=cmd_settings)
    return parser


# -- plumbing -------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, ReportRepository], Awaitable[int]]


def run_async(command: Command) -> Callable[[argparse.Namespace, Settings], int]:
    """Run ``command`` on a repository over a migrated database."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        _check_before_start(settings)
        path = sqlite_path(settings.database_url)
        if path is not None and not Path(path).exists():
            raise CommandError(
                f"database file {path} does not exist: run `reports-service migrate`"
            )
        return asyncio.run(_with_repository(command, args, settings))

    return handler


async def _with_repository(command: Command, args: argparse.Namespace, settings: Settings) -> int:
    repository = repository_for(settings)
    try:
        await require_head(repository)
        return await command(args, repository)
    finally:
        await repository.dispose()


def with_serve_options(
    command: Callable[[argparse.Namespace, Settings], int],
) -> Callable[[argparse.Namespace, Settings], int]:
    """Apply --host, --port and --workers to the settings, each checked like its variable."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        changes = {name: getattr(args, name) for name in SERVE_OPTIONS}
        for name, value in changes.items():
            problem = None if value is None else Settings.problem(name, value)
            if problem is not None:
                raise CommandError(f"--{name} {value}: {problem}")
        given = {name: value for name, value in changes.items() if value is not None}
        return command(args, dataclasses.replace(settings, **given))

    return handler


def _check_before_start(settings: Settings) -> None:
    """One line, before anything starts, for a missing database directory or migrations."""
    path = sqlite_path(settings.database_url)
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise CommandError(f"the directory of database file {path} does not exist")
    head_revision()  # NOTE: raises MigrationsMissing when the package lost its migrations
    verifier_for(settings)  # NOTE: a bad JWKS file is one line here, not a traceback in uvicorn


def _say(message: str) -> None:
    print(message, flush=True)


# -- commands -------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    _check_before_start(settings)
    try:
        upgrade(settings.database_url)
    except Exception as error:  # Alembic and the drivers raise many kinds
        raise CommandError(f"migration failed: {first_line(error)}") from None
    _say(f"database {settings.masked_database_url()} is at migration {head_revision()}")
    return 0


async def cmd_seed(args: argparse.Namespace, repository: ReportRepository) -> int:
    existing = {r.name for r in await repository.list_reports()}
    missing = [r for r in TUTORIAL_REPORTS if r.name not in existing]
    await repository.add_reports(missing)
    _say(f"seeded {len(missing)} reports ({len(TUTORIAL_REPORTS) - len(missing)} already there)")
    return 0


async def cmd_add(args: argparse.Namespace, repository: ReportRepository) -> int:
    if args.file is not None:
        if args.name is not None or args.title is not None:
            raise CommandError("give either NAME --title ... or --file, not both")
        items = read_reports_file(args.file)
    else:
        if args.name is None or args.title is None:
            raise CommandError("add needs NAME and --title (or --file FILE)")
        items = [NewReport(args.name, args.title, args.content)]
    replaced = await repository.add_reports(items, replace=args.replace)
    _say(added_message(len(items) - len(replaced), replaced))
    return 0


def added_message(added: int, replaced: list[str]) -> str:
    """`added 2 reports`, `replaced 1 report: r`, `added 3 reports, replaced 2 reports: a, b`."""
    said = f"added {_reports(added)}"
    if not replaced:
        return said
    names = f"replaced {_reports(len(replaced))}: {', '.join(replaced)}"
    return f"{said}, {names}" if added else names


def _reports(count: int) -> str:
    return f"{count} report{'s' if count != 1 else ''}"


async def cmd_list(args: argparse.Namespace, repository: ReportRepository) -> int:
    problem = None if args.limit is None else NON_NEGATIVE.problem(args.limit)
    if problem is not None:
        raise CommandError(f"--limit {args.limit}: {problem}")
    for report in await repository.list_reports(limit=args.limit):
        _say(f"{report.name}\t{report.title}\t{report.updated_at.isoformat()}")
    return 0


async def cmd_remove(args: argparse.Namespace, repository: ReportRepository) -> int:
    if await repository.remove_report(name=args.name) is None:
        raise CommandError(f"no report named {args.name!r}")
    _say(f"removed {args.name}")
    return 0


async def cmd_token_create(args: argparse.Namespace, repository: ReportRepository) -> int:
    if not args.name.strip():
        raise CommandError("a token's name must not be empty")
    token = args.value if args.value is not None else new_token()
    if not token.strip():
        raise CommandError("a token must not be empty")
    if looks_like_jwt(token) or len(token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
        raise CommandError(
            f"--value: a token must be at most {MAX_TOKEN_BYTES} bytes and not look like a JWT"
        )
    try:
        reports = check_patterns(args.reports if args.reports is not None else ["*"])
    except ValueError as error:
        raise CommandError(f"--reports: {error}") from None
    expires_at = None if args.expires is None else expiry(args.expires, utcnow())
    await repository.create_token(
        name=args.name, token=token, can_write=args.write, reports=reports, expires_at=expires_at
    )
    _say(token)
    return 0


_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def expiry(duration: str, now: datetime) -> datetime:
    """``now`` plus a duration such as ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``."""
    match = _DURATION.fullmatch(duration)
    if match is None or int(match[1]) == 0:
        raise CommandError(
            f"--expires {duration}: expected a number above 0 and a unit (s, m, h, d or w), "
            "e.g. 30d"
        )
    try:
        return now + timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise CommandError(f"--expires {duration}: too far in the future") from None


async def cmd_token_list(args: argparse.Namespace, repository: ReportRepository) -> int:
    now = utcnow()
    for info in await repository.list_tokens():
        scope = "read,write" if info.can_write else "read"
        reports = json.dumps(list(info.reports), ensure_ascii=False)
        expires = info.expires_at.isoformat() if info.expires_at else "never"
        columns = [info.name, scope, f"reports {reports}"]
        columns += [
            f"created {info.created_at.isoformat()}",
            f"expires {expires}",
            _state(info, now),
        ]
        _say("\t".join(columns))
    return 0


def _state(info: TokenInfo, now: datetime) -> str:
    if info.revoked_at is not None:
        return f"revoked {info.revoked_at.isoformat()}"
    return "expired" if info.expires_at is not None and info.expires_at <= now else "active"


async def cmd_token_revoke(args: argparse.Namespace, repository: ReportRepository) -> int:
    if (args.name is None) == (args.subject is None):
        raise CommandError("token revoke takes either NAME or --subject SUB")
    if args.subject is not None:
        revoked_at = await repository.revoke_subject(subject=args.subject)
        _say(
            f"revoked every JWT of subject {args.subject!r} issued before {revoked_at.isoformat()}"
        )
        return 0
    if not await repository.revoke_token(name=args.name):
        raise CommandError(f"no active token named {args.name!r}")
    _say(f"revoked {args.name}")
    return 0


async def _first_token(args: argparse.Namespace, repository: ReportRepository) -> int:
    if not await repository.list_tokens():
        token = new_token()
        await repository.create_token(name=FIRST_TOKEN_NAME, token=token, can_write=True)
        _say(f"access token for /reports (shown once, keep it): {token}")
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from .server import check_can_listen

    check_can_listen(settings.host, settings.port)
    cmd_migrate(args, settings)
    run_async(cmd_seed)(args, settings)
    run_async(_first_token)(args, settings)
    return cmd_serve(args, settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .server import serve

    _check_before_start(settings)
    serve(settings)
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    for env, default, doc in Settings.describe():
        _say(f"{env} (default {default}): {doc}")
    return 0


_decode = msgspec.json.Decoder().decode


def read_reports_file(path: Path) -> list[NewReport]:
    """Reports from a JSON list of objects, or JSON lines with one object a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read {path}: {error}") from None
    try:
        data = _decode(text)
        entries: list[tuple[str, Any]] = (
            [(f"item {i + 1}", e) for i, e in enumerate(data)]
            if isinstance(data, list)
            else [("the file", data)]
        )
    except msgspec.DecodeError:
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append((f"line {number}", _decode(line)))
                except msgspec.DecodeError as error:
                    raise CommandError(f"{path} line {number}: invalid JSON ({error})") from None
    return [_report_from(path, where, entry) for where, entry in entries]


def _report_from(path: Path, where: str, entry: Any) -> NewReport:
    if not isinstance(entry, dict):
        raise CommandError(f"{path} {where}: expected an object with name, title, content")
    unknown = set(entry) - {"name", "title", "content"}
    if unknown:
        raise CommandError(f"{path} {where}: unknown field {sorted(unknown)[0]!r}")
    if "name" not in entry or "title" not in entry:
        raise CommandError(f"{path} {where}: name and title are required")
    try:
        return NewReport(entry["name"], entry["title"], entry.get("content", ""))
    except ValueError as error:
        raise CommandError(f"{path} {where}: {error}") from None
