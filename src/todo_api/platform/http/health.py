"""Liveness and readiness probes.

Liveness never touches the database: a probe every few seconds would otherwise keep a Neon
compute awake (and billing) forever.
"""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from todo_api import __version__
from todo_api.platform.database import migrate
from todo_api.platform.database.database import Database
from todo_api.platform.database.errors import DatabaseError, Failure
from todo_api.platform.http.dependencies import DatabaseDep, SettingsDep
from todo_api.platform.http.problems import problem_response, responses
from todo_api.platform.observability.metrics import PoolStats, pool_stats

router = APIRouter(prefix="/health", tags=["health"])


class Liveness(BaseModel):
    status: str = "ok"
    version: str
    uptime_seconds: float

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ok", "version": "0.1.0", "uptime_seconds": 42.5}]
        }
    )


class DatabaseReadiness(BaseModel):
    dialect: str
    latency_ms: float
    revision: str | None
    head_revision: str | None
    # This worker's pool, after the probe returned its connection.
    pool: PoolStats


class Readiness(BaseModel):
    status: str = "ok"
    database: DatabaseReadiness

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "database": {
                        "dialect": "postgresql",
                        "latency_ms": 1.8,
                        "revision": "0002",
                        "head_revision": "0002",
                        "pool": {
                            "kind": "AsyncAdaptedQueuePool",
                            "size": 20,
                            "checked_out": 1,
                            "idle": 19,
                            "overflow": 0,
                        },
                    },
                }
            ]
        }
    )


@router.get("", summary="Liveness: the process is up (no database call)")
async def liveness(request: Request) -> Liveness:
    started: float = request.app.state.started_at
    return Liveness(version=__version__, uptime_seconds=round(time.monotonic() - started, 3))


@router.get(
    "/ready",
    summary="Readiness: the database answers and the schema is at the latest migration",
    response_model=Readiness,
    responses=responses(503),
)
async def readiness(settings: SettingsDep, db: DatabaseDep) -> Readiness | JSONResponse:
    target = settings.database
    try:
        async with asyncio.timeout(settings.db_connect_timeout):
            started = time.perf_counter()
            revision = await _schema_revision(db)
            latency_ms = (time.perf_counter() - started) * 1000
    except (DatabaseError, TimeoutError) as error:
        reason = str(error) if isinstance(error, DatabaseError) else "timed out"
        return problem_response(503, f"database not ready: {reason}", headers={"Retry-After": "5"})
    head = migrate.head_revision()
    if revision != head:
        return problem_response(
            503,
            f"database schema is at revision {revision}, expected {head}; "
            "run `todo-api db upgrade`",
            headers={"Retry-After": "5"},
        )
    return Readiness(
        database=DatabaseReadiness(
            dialect=target.dialect,
            latency_ms=round(latency_ms, 2),
            revision=revision,
            head_revision=head,
            pool=pool_stats(db.engine.pool),
        )
    )


_REVISION = sa.text("SELECT version_num FROM alembic_version")


async def _schema_revision(db: Database) -> str | None:
    """The migration the database is at (one round trip); None before the first."""
    try:
        rows = await db.rows(_REVISION, idempotent=True)
    except DatabaseError as error:
        if error.failure is not Failure.BUG:  # an outage, not a missing table
            raise
        return None
    return str(rows[0][0]) if rows else None
