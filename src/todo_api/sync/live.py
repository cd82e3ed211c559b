"""What runs beside the requests for the change feed, started and stopped by the app's
lifespan: the events hub (with its source of notifications) and the tombstone purge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import uuid
from collections.abc import Callable
from datetime import timedelta
from types import FrameType

from todo_api.platform.database.database import Database
from todo_api.platform.database.engine import connect_direct
from todo_api.platform.database.executors import Rows
from todo_api.platform.database.types import utcnow
from todo_api.platform.events import LISTENER_APPLICATION_NAME, Hub, PostgresListener, Pushed
from todo_api.settings import Settings
from todo_api.sync import repository
from todo_api.tables.changes import CHANNEL

log = logging.getLogger("todo_api.sync")

# The first purge waits this long (plus jitter, so replicas started together spread out).
FIRST_PURGE_SECONDS = 5.0


def events_hub(settings: Settings, database: Database) -> Hub:
    """PostgreSQL: NOTIFY (sent by the write's own transaction) heard on one LISTEN
    connection per process; SQLite: one process, whose database reports each committed write
    transaction (user, change_seq) to the hub."""
    source: PostgresListener | Pushed = PostgresListener(
        lambda: connect_direct(settings, application_name=LISTENER_APPLICATION_NAME),
        CHANNEL,
        probe_seconds=settings.events_probe_seconds,
    )
    if database.dialect != "postgresql":
        source = Pushed()
    hub = Hub(
        source,
        max_per_key=settings.events_max_streams_per_user,
        idle_seconds=settings.events_listener_idle_seconds,
    )

    def committed(rows: Rows) -> None:
        for user_id, seq in rows:
            hub.publish(str(user_id), int(seq))

    database.observe_commits(committed)
    return hub


async def purge_periodically(settings: Settings, database: Database) -> None:
    """Purge expired tombstones soon after start-up, then every SYNC_PURGE_INTERVAL_SECONDS.
    A failure (the database away) is logged and tried again next time."""
    interval = settings.sync_purge_interval_seconds
    await asyncio.sleep(min(FIRST_PURGE_SECONDS, interval) * random.uniform(1.0, 1.5))
    while True:
        older_than = utcnow() - timedelta(seconds=settings.sync_retention_seconds)
        try:
            purged = await repository.purge_tombstones(database, older_than=older_than)
        except Exception as error:
            log.warning("tombstone purge failed (retried in %.0f s): %s", interval, error)
        else:
            if purged:
                log.info("purged %d tombstones deleted before %s", purged, older_than)
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))


async def watch_periodically(hub: Hub, database: Database, process_id: uuid.UUID) -> None:
    """Keep this process's watches of its streams' users live (PostgreSQL: their writes
    NOTIFY only while one is); each stream's own start put its watch in place."""
    while True:
        await asyncio.sleep(repository.WATCH_SECONDS / 3)
        try:
            await repository.refresh_watches(database, user_ids=hub.keys(), process_id=process_id)
        except Exception as error:
            # Another try in a third of the watch's life: the watch outlives two failures.
            log.warning("refreshing the events watches failed: %s", error)


def close_streams_on_signals(hub: Hub) -> Callable[[], None]:
    """Serving: on SIGTERM/SIGINT end every events stream at once, then let the server's own
    handler (uvicorn's, which waits for open responses) go on. Returns the undo."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.close_streams)
        chained = previous[signal.Signals(signum)]
        if callable(chained):
            chained(signum, frame)

    for sig in previous:
        signal.signal(sig, handler)

    def undo() -> None:
        for sig, chained in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, chained)

    return undo
