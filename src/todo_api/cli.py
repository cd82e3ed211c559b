"""`todo-api` (also `python -m todo_api`): serve, db upgrade, db check."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import SQLModel

from todo_api import tables as _tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from todo_api.platform.database import migrate
from todo_api.platform.database.engine import create_engine, verify_database
from todo_api.platform.database.errors import DatabaseUnavailable
from todo_api.platform.database.url import DatabaseTarget
from todo_api.platform.observability.logs import configure_logging
from todo_api.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("todo_api.cli")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"todo-api: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if args.command == "serve":
        return _serve(settings, host=args.host, port=args.port, workers=args.workers)
    try:
        if args.db_command == "upgrade":
            return asyncio.run(_db_upgrade(settings))
        return asyncio.run(_db_check(settings))
    except DatabaseUnavailable as error:
        print(f"todo-api: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="todo-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    db = commands.add_parser("db", help="database schema commands")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply pending migrations (a no-op when current)")
    db_commands.add_parser(
        "check", help="connect and report server version, revision, tables and indexes"
    )
    return parser


def _serve(settings: Settings, *, host: str, port: int, workers: int) -> int:
    import uvicorn

    # Reach (and migrate) the database before uvicorn starts, so that a failure is one clear
    # line and exit status 1 rather than a lifespan traceback from every worker.
    try:
        asyncio.run(_prepare(settings))
    except DatabaseUnavailable as error:
        log.error("start-up failed: %s", error)
        print(f"todo-api: {error}", file=sys.stderr)
        return 1

    # Several workers: each keeps its metrics in files in a private directory, and a scrape
    # answered by any of them adds all up. Set before the workers are spawned (they inherit
    # the environment, and prometheus_client reads it when first imported); removed on exit.
    metrics_dir = None
    if workers > 1 and settings.metrics_enabled and MULTIPROC_ENV not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="todo-api-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        log.info("metrics of the %d workers are gathered in %s", workers, metrics_dir)
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_after_sigterm)
    try:
        # The factory re-reads settings in each worker process, from the same environment.
        # log_config=None keeps our logging setup instead of uvicorn's; access_log=False
        # because our middleware writes the access line (with the route and request id).
        uvicorn.run(
            "todo_api.cli:serve_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            access_log=False,
            proxy_headers=True,
            server_header=False,
            # On SIGTERM uvicorn stops listening, closes idle connections, lets in-flight
            # requests finish for up to this long (then cancels them), and runs the lifespan
            # shutdown, which closes the pool.
            timeout_graceful_shutdown=settings.shutdown_timeout,
        )
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if metrics_dir is not None:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _exit_after_sigterm(signum: int, frame: FrameType | None) -> None:
    # uvicorn handles SIGTERM itself while serving, then restores this handler and raises the
    # signal again once shut down. The default handler would then kill the process, and an
    # orderly stop would look like a crash (exit status 143). A SIGTERM that arrives before
    # uvicorn took over (while the app loads) stops the process here as well.
    raise SystemExit(0)


def serve_app() -> FastAPI:
    """The app of one uvicorn worker. With --workers N each worker is a fresh interpreter that
    never ran `main`: logging has to be set up here too."""
    # Imported here, not at the top: the app imports prometheus_client, which must not be
    # loaded in this process before PROMETHEUS_MULTIPROC_DIR is set (see `_serve`).
    from todo_api.app import create_app

    settings = load_settings()
    configure_logging(settings)
    return create_app(settings, serving=True)


async def _prepare(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        await migrate.prepare_database(settings, engine)
    finally:
        await engine.dispose()


async def _db_upgrade(settings: Settings) -> int:
    engine = create_engine(settings, direct=True)
    try:
        await verify_database(engine, settings.database_direct)
        before, after = await migrate.upgrade(engine, batched=migrate.direct_session(settings))
    finally:
        await engine.dispose()
    if before == after:
        print(f"database already at revision {after}; nothing to do")
    else:
        print(f"database upgraded from {before or 'empty'} to {after}")
    return 0


async def _db_check(settings: Settings) -> int:
    target = settings.database
    if _missing_sqlite_file(target):
        # Connecting would create an empty file: a check must not change anything.
        print(
            f"todo-api: {target.describe()} does not exist; run `todo-api db upgrade` to create it",
            file=sys.stderr,
        )
        return 1
    engine = create_engine(settings)
    try:
        probe = await verify_database(engine, target)
        async with engine.connect() as connection:
            revision = await migrate.current_revision(connection)
            present = await connection.run_sync(_schema_objects)
    finally:
        await engine.dispose()
    head = migrate.head_revision()
    print(f"connected: {target.describe()} ({probe.latency_ms:.1f} ms)")
    print(f"server version: {probe.server_version}")
    print(f"migration revision: {revision or 'none'} (latest: {head})")
    problems = []
    if revision != head:
        problems.append(f"schema is at {revision or 'no revision'}, expected {head}")
    for table in SQLModel.metadata.sorted_tables:
        found = present.get(table.name)
        if found is None:
            problems.append(f"table {table.name} is missing")
            continue
        expected = {index.name for index in table.indexes if index.name}
        print(f"table {table.name}: indexes {', '.join(sorted(found)) or 'none'}")
        problems.extend(f"index {name} is missing" for name in sorted(expected - found))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        print("todo-api: database check failed; run `todo-api db upgrade`", file=sys.stderr)
        return 1
    print("database check passed")
    return 0


def _missing_sqlite_file(target: DatabaseTarget) -> bool:
    if not target.is_sqlite or target.is_memory or target.url.query.get("uri"):
        return False
    return not Path(str(target.url.database)).exists()


def _schema_objects(connection: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(connection)
    return {
        name: {index["name"] for index in inspector.get_indexes(name) if index["name"]}
        for name in inspector.get_table_names()
    }
