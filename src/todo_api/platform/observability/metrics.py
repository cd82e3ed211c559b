"""Prometheus metrics: HTTP requests, database queries and pool, app info; `GET /metrics`.

Each app has its own registry (tests build many apps in one process; the global registry would
refuse the second). With `serve --workers N` the CLI sets PROMETHEUS_MULTIPROC_DIR before the
workers start: prometheus_client then keeps every value in per-process files there, and a
scrape, whichever worker answers it, adds them all up (MultiProcessCollector).

Kept cheap: label children are looked up once and cached, pool figures are read when scraped
(single process) or when a connection is checked out or in (several workers, where the worker
answering a scrape cannot see the other workers' pools).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool

from todo_api.platform.database.database import Database

# The `*_created` timestamp series double the output and the work of a scrape for a figure
# Prometheus does not need (it detects counter resets itself).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Bounded label values: a client can send any method, but not grow the number of series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_OPERATIONS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class PoolStats(BaseModel):
    """What the connection pool holds; a figure is None when the pool kind has no such notion
    (an in-memory SQLite database shares one connection through a StaticPool)."""

    kind: str
    size: int | None
    checked_out: int | None
    idle: int | None
    overflow: int | None


def pool_stats(pool: Pool) -> PoolStats:
    def figure(name: str) -> int | None:
        method = getattr(pool, name, None)
        return int(method()) if callable(method) else None

    overflow = figure("overflow")
    return PoolStats(
        kind=type(pool).__name__,
        size=figure("size"),
        checked_out=figure("checkedout"),
        idle=figure("checkedin"),
        # QueuePool counts overflow from -size (negative until the pool is full): report only
        # connections beyond the pool size.
        overflow=None if overflow is None else max(overflow, 0),
    )


_POOL_GAUGES = {
    "size": ("db_pool_size", "Connections the pool keeps (DB_POOL_SIZE)"),
    "checked_out": ("db_pool_checked_out", "Connections in use by requests"),
    "idle": ("db_pool_idle", "Open connections waiting in the pool"),
    "overflow": ("db_pool_overflow", "Connections open beyond the pool size (DB_MAX_OVERFLOW)"),
}


def multiprocess_mode() -> bool:
    # prometheus_client picks its value store once, at import, from PROMETHEUS_MULTIPROC_DIR;
    # ask it rather than the environment, which may have changed since.
    return values.ValueClass is not values.MutexValue


class Metrics:
    def __init__(self, *, version: str, dialect: str) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status_class")
        self._requests = Counter(
            "http_requests", "HTTP requests answered", labels, registry=self.registry
        )
        self._duration = Histogram(
            "http_request_duration_seconds",
            "Time from request to the last byte of the response",
            labels,
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being handled",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._queries = Histogram(
            "db_query_duration_seconds",
            "Time of one SQL statement on the database connection",
            ("operation",),
            buckets=_QUERY_BUCKETS,
            registry=self.registry,
        )
        info = Gauge(
            "todo_api_info",
            "Always 1; the labels say which version runs on which database",
            ("version", "dialect"),
            registry=self.registry,
            multiprocess_mode="max",
        )
        info.labels(version=version, dialect=dialect).set(1)
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._query_children: dict[str, Any] = {}
        self._engine: AsyncEngine | None = None
        self._pool_gauges: dict[str, Gauge] = {}
        if self.multiprocess:
            # The worker answering a scrape cannot see other workers' pools: each worker keeps
            # its figures in its own file, summed over the live workers.
            self._pool_gauges = {
                key: Gauge(name, doc, registry=self.registry, multiprocess_mode="livesum")
                for key, (name, doc) in _POOL_GAUGES.items()
            }
        else:
            self.registry.register(_PoolCollector(self))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method if method in _METHODS else "OTHER", route, f"{status // 100}xx")
        children = self._request_children.get(key)
        if children is None:
            children = (self._requests.labels(*key), self._duration.labels(*key))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def bind_database(self, database: Database) -> None:
        """Time every statement on this database and follow its pool."""
        self._engine = database.engine
        database.observe_statements(self._observe_statement)
        if self.multiprocess:
            # Listeners on the pool carry over when dispose() replaces it.
            sync_engine = database.engine.sync_engine
            event.listen(sync_engine.pool, "checkout", self._pool_changed)
            event.listen(sync_engine.pool, "checkin", self._pool_changed)
            self._pool_changed()

    def close(self) -> None:
        if self.multiprocess:
            # Drop this process's live gauges (in flight, pool) from the sums; its counters
            # and histograms stay, so totals do not fall when a worker exits.
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def pool_figures(self) -> PoolStats | None:
        return None if self._engine is None else pool_stats(self._engine.pool)

    def _observe_statement(self, statement: str, seconds: float) -> None:
        operation = _operation(statement)
        child = self._query_children.get(operation)
        if child is None:
            child = self._query_children[operation] = self._queries.labels(operation)
        child.observe(seconds)

    def _pool_changed(self, *_args: Any) -> None:
        figures = self.pool_figures()
        if figures is None:
            return
        for key, gauge in self._pool_gauges.items():
            value = getattr(figures, key)
            if value is not None:
                gauge.set(value)


def _operation(statement: str) -> str:
    """SELECT, INSERT, UPDATE, DELETE or OTHER: the statement's first word, or for a `WITH`
    (a write inside a CTE, e.g. create-user-and-task in one round trip) the write it holds."""
    verb = statement.lstrip()[:6].upper()
    if verb in _OPERATIONS:
        return verb
    if verb.startswith("WITH"):
        upper = statement.upper()
        for write, marker in (
            ("INSERT", "INSERT INTO"),
            ("UPDATE", "UPDATE "),
            ("DELETE", "DELETE FROM"),
        ):
            if marker in upper:
                return write
        return "SELECT"
    return "OTHER"


class _PoolCollector:
    """Reads the pool when scraped: no cost per request."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Declaring the names lets the registry refuse a clashing metric at registration.
        return [GaugeMetricFamily(name, doc) for name, doc in _POOL_GAUGES.values()]

    def collect(self) -> Iterator[Metric]:
        figures = self._metrics.pool_figures()
        if figures is None:
            return
        for key, (name, doc) in _POOL_GAUGES.items():
            value = getattr(figures, key)
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


def install_metrics(app: FastAPI, metrics: Metrics) -> None:
    # A plain function runs in the thread pool: the multiprocess collector reads files.
    def scrape() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        "/metrics",
        scrape,
        methods=["GET"],
        include_in_schema=False,
        name="metrics",
    )
