"""The database subcommands of ``python -m bot``: ``migrate-db`` and ``backup`` (exit status 0; 1 when
nothing was done, with one line saying why; 2 for bad arguments)."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from bot.db import urls
from engine.urls import redact

COMMANDS = ("migrate-db", "backup")
SECRET_IN_ARGV = (
    "a database URL on the command line must not hold a password (every user of this machine can read it"
    " in ps): put it in PGPASSWORD or ~/.pgpass, or in DATABASE_URL in .env"
)


def _url(raw: str) -> str:
    try:
        value = urls.normalize(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if urls.password(value):
        raise argparse.ArgumentTypeError(SECRET_IN_ARGV)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot")
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser(
        "migrate-db",
        help="copy a database (e.g. the SQLite file) into another (e.g. PostgreSQL)",
        description="Copy every row of --from into --to (migrated to the latest schema first). Stop the"
        " bot first. The password comes from PGPASSWORD or ~/.pgpass, never from the command line.",
    )
    migrate.add_argument("--from", dest="source", type=_url, required=True, help="e.g. sqlite:///data/bot.db")
    migrate.add_argument(
        "--to", dest="target", type=_url, help="e.g. postgresql://imagine@db.example.org/imagine"
        " (default: DATABASE_URL from the environment or .env)",
    )  # fmt: skip
    migrate.add_argument("--force", action="store_true", help="replace the rows the target already holds")
    backup = sub.add_parser(
        "backup",
        help="a consistent backup of DATABASE_URL while the bot runs",
        description="Back up DATABASE_URL (SQLite: its online backup API; PostgreSQL: pg_dump) into DEST"
        " (a new file, or a folder for a dated one), and optionally archive old images from OUTPUT_DIR.",
    )
    backup.add_argument("dest", type=Path, help="a new file, or a folder")
    backup.add_argument(
        "--images-older-than", type=float, metavar="DAYS", help="archive images older than this"
    )
    backup.add_argument("--archive", type=Path, metavar="FILE.tar", help="the tar file for those images")
    backup.add_argument(
        "--remove-archived", action="store_true", help="delete the archived images from OUTPUT_DIR afterwards"
    )
    return parser


def _reason(exc: BaseException, *database_urls: str) -> str:
    """One line about ``exc``: the driver's own words (not SQLAlchemy's statement and parameters), with
    no password in it."""
    cause = getattr(exc, "orig", None) or exc
    line = next(iter(str(cause).strip().splitlines()), "") or type(cause).__name__
    for url in database_urls:
        if secret := urls.password(url):
            line = line.replace(secret, "***")
    return f"{type(cause).__name__}: {line[:500]}"


def _settings() -> tuple[str, Path]:
    """DATABASE_URL and OUTPUT_DIR from the environment and .env, as the bot reads them."""
    from bot.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"Bad setting: {exc}") from None
    return settings.database_url, settings.output_dir


async def _migrate(args: argparse.Namespace) -> int:
    from bot.db.migrate_db import MigrateError, migrate_db

    target = args.target or _settings()[0]
    print(f"copying {redact(args.source)} into {redact(target)}")
    try:
        copied = await migrate_db(args.source, target, force=args.force)
    except MigrateError as exc:
        print(f"nothing copied: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:  # unreachable server, refused login, a row the target refused
        print(f"nothing copied: {_reason(exc, args.source, target)}", file=sys.stderr)
        return 1
    print(f"done: {sum(copied.values())} rows in {len(copied)} tables")
    return 0


async def _backup(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from bot.db.backup import BackupError, archive_images, backup, destination

    if (args.images_older_than is None) != (args.archive is None):
        print("--images-older-than and --archive go together", file=sys.stderr)
        return 2
    url, output_dir = _settings()
    dest = destination(args.dest, make_url(url).get_backend_name())
    try:
        await backup(url, dest)
        print(f"backed up {redact(url)} to {dest}")
        if args.archive is not None:
            files = await asyncio.to_thread(
                archive_images, output_dir, args.images_older_than, args.archive, remove=args.remove_archived
            )
            done = "archived and removed" if args.remove_archived else "archived"
            print(f"{done} {len(files)} files older than {args.images_older_than:g} days in {args.archive}")
    except BackupError as exc:
        print(f"no backup: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as exc:  # a locked or damaged file, a full disk, no permission
        print(f"no backup: {_reason(exc, url)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    run = _migrate if args.command == "migrate-db" else _backup
    return asyncio.run(run(args))
