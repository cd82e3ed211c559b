"""The application factory. Building an app connects to nothing; the lifespan does."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware

from todo_api import __version__
from todo_api.auth.tokens import TokenVerifier
from todo_api.labels import router as labels
from todo_api.labels.schemas import READ_ONLY_FIELDS as LABEL_READ_ONLY_FIELDS
from todo_api.lists import router as lists
from todo_api.lists.schemas import READ_ONLY_FIELDS as LIST_READ_ONLY_FIELDS
from todo_api.platform.database import migrate
from todo_api.platform.database.engine import open_database
from todo_api.platform.http import health
from todo_api.platform.http.cors import Cors
from todo_api.platform.http.docs import install_docs
from todo_api.platform.http.openapi import complete_openapi, operation_id
from todo_api.platform.http.problems import install_problem_handlers, problem_schemas
from todo_api.platform.http.request_guard import RequestGuard
from todo_api.platform.observability.metrics import Metrics, install_metrics
from todo_api.platform.observability.middleware import Observability
from todo_api.settings import Settings, load_settings
from todo_api.sync import router as sync
from todo_api.sync.live import (
    close_streams_on_signals,
    events_hub,
    purge_periodically,
    watch_periodically,
)
from todo_api.sync.repository import forget_watches
from todo_api.tables.changes import TRANSACTION_REPORT, TRANSACTION_SETUP
from todo_api.tasks import router as tasks
from todo_api.tasks.schemas import READ_ONLY_FIELDS as TASK_READ_ONLY_FIELDS
from todo_api.users import router as users

log = logging.getLogger("todo_api")


def create_app(settings: Settings | None = None, *, serving: bool = False) -> FastAPI:
    """The app. `serving`: it is the app of a server process (`todo-api serve`), which it
    outlives no longer than the process; tests and embedders leave it False."""
    settings = settings or load_settings()
    metrics = (
        Metrics(version=__version__, dialect=settings.database.dialect)
        if settings.metrics_enabled
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        verifier: TokenVerifier | None = app.state.token_verifier
        _log_auth_mode(settings, verifier)
        target = settings.database
        for note in target.notes:
            log.warning(note)
        if settings.behind_transaction_pooler(target):
            log.info(
                "transaction-mode pooler: prepared statements are not reused (about 6%% slower)"
            )
        database = open_database(
            settings, transaction_setup=TRANSACTION_SETUP, transaction_report=TRANSACTION_REPORT
        )
        try:
            revision = await migrate.prepare_database(settings, database.engine)
        except Exception:
            await database.dispose()
            raise
        app.state.database = database
        app.state.events = events_hub(settings, database)
        app.state.process_id = process_id = uuid.uuid4()  # whose events watches are whose
        background = [
            asyncio.create_task(purge_periodically(settings, database), name="sync-purge"),
            asyncio.create_task(
                watch_periodically(app.state.events, database, process_id), name="sync-watch"
            ),
        ]
        undo_signals = close_streams_on_signals(app.state.events) if serving else None
        if verifier is not None:
            await verifier.start()  # warms the JWKS cache; a failure is logged, not fatal
        if metrics is not None:
            metrics.bind_database(database)
        if serving:
            # What start-up built (modules, schemas, pydantic's and SQLAlchemy's caches: about
            # 140,000 objects) lives as long as the process. Frozen, the garbage collector stops
            # walking it: each full collection took about 70 ms and stalled every request in
            # flight (the benchmark's p99 was 90-105 ms at a p50 of 13-29 ms; frozen, 25-50 ms).
            gc.collect()
            gc.freeze()
        log.info(
            "todo-api %s ready in %.0f ms on %s%s",
            __version__,
            (time.perf_counter() - started) * 1000,
            target.describe(),
            f" (schema revision {revision})" if revision else "",
        )
        try:
            yield
        finally:
            if undo_signals is not None:
                undo_signals()
            await app.state.events.aclose()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):  # else they expire (WATCH_SECONDS)
                await forget_watches(database, process_id=process_id)
            if verifier is not None:
                await verifier.aclose()
            await database.dispose()
            if metrics is not None:
                metrics.close()

    app = FastAPI(
        title="Todo API",
        version=__version__,
        summary="Multi-user task lists: each user reaches only their own tasks.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # served by install_docs, from local assets
        redoc_url=None,
        # The domains' routes in the app's own route list (the constructor's public
        # `routes`), tasks first: FastAPI matches an included router's routes a second time
        # on every request (~15 µs of a ~350 µs get). No other path overlaps /api/.
        routes=[
            *tasks.router.routes,
            *lists.router.routes,
            *labels.router.routes,
            *users.router.routes,
            *sync.router.routes,
        ],
    )
    install_docs(app)
    app.state.settings = settings
    app.state.started_at = time.monotonic()
    # One verifier per app (its JWKS cache is shared by every request); None: an open API.
    app.state.token_verifier = TokenVerifier(settings) if settings.auth_enabled else None
    # Server-set fields of every domain: named as read-only when a body contains them.
    read_only = TASK_READ_ONLY_FIELDS | LIST_READ_ONLY_FIELDS | LABEL_READ_ONLY_FIELDS
    install_problem_handlers(app, read_only_fields=read_only)
    app.include_router(health.router)
    if metrics is not None:
        install_metrics(app, metrics)
    # Outermost first. Observability sees every response (preflights and the body guard's
    # refusals included); CORS headers go on every response of the app and the guard.
    middleware = [
        Middleware(
            Observability,
            routes=app.router.routes,
            metrics=metrics,
            access_log=settings.access_log,
            access_log_probes=settings.access_log_health,
        ),
        # Left out when no origin may call: there is nothing to add to any response.
        *(
            [
                Middleware(
                    Cors,
                    origins=settings.allowed_origins,
                    allow_credentials=settings.cors_allow_credentials,
                    max_age=settings.cors_max_age,
                )
            ]
            if settings.allowed_origins
            else []
        ),
        Middleware(RequestGuard, max_bytes=settings.max_body_bytes),
    ]
    for layer in reversed(middleware):  # add_middleware puts each outside the previous ones
        app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    complete_openapi(app, components=problem_schemas)
    return app


def _log_auth_mode(settings: Settings, verifier: TokenVerifier | None) -> None:
    if verifier is not None:
        # The effective configuration, so a mismatch with the identity provider shows at once;
        # never the shared secret itself.
        log.info(
            "authentication: bearer JWTs required (%s; keys from %s; issuer %s; audience %s; "
            "claim %r must equal the path user_id)",
            ", ".join(verifier.algorithms),
            " and ".join(
                source
                for source, configured in (
                    (f"JWKS {settings.auth_jwks_url}", settings.auth_jwks_url),
                    ("AUTH_JWT_SECRET", settings.auth_jwt_secret),
                )
                if configured
            ),
            repr(settings.auth_issuer) if settings.auth_issuer else "not checked",
            repr(settings.auth_audience) if settings.auth_audience else "not checked",
            settings.auth_user_claim,
        )
    else:
        # Production only gets here with AUTH_MODE=none set explicitly (its default is jwt).
        explicit = "auth_mode" in settings.model_fields_set
        log.warning(
            "AUTH_MODE=none%s: the API is open, anyone can read and change any user's tasks; "
            "set AUTH_MODE=jwt with AUTH_JWT_SECRET or AUTH_JWKS_URL to require tokens",
            "" if explicit else f" (the default when APP_ENV={settings.app_env.value})",
        )
