"""In-process fan-out of "key K changed, now at sequence n" to the streams subscribed to K.

A `Hub` holds each process's subscribers and one `Source` of notifications, which runs only
while there are subscribers and stops `idle_seconds` after the last one leaves (on Neon a
listening connection would keep the compute awake). Sources:
- `PostgresListener`: one dedicated LISTEN connection (it needs a direct, non-pooler URL;
  a transaction-mode pooler silently ignores LISTEN). asyncpg does not notice a dead
  connection until TCP gives up (asyncpg#519), so it is probed; when it is lost it reconnects
  with backoff and, once listening again, tells every subscriber to resync (notifications sent
  meanwhile were lost: NOTIFY replays nothing).
- `Pushed`: the notifications are published by the process itself (SQLite: one process, whose
  database reports each committed write).

A subscriber's queue is bounded: one that does not keep up gets a single `Resync` instead of
its backlog, and publishing never waits, so a slow client cannot slow down anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import asyncpg

log = logging.getLogger("todo_api.events")

QUEUE_SIZE = 32
LISTENER_APPLICATION_NAME = "todo-api-listener"


@dataclass(frozen=True, slots=True)
class Changed:
    seq: int


@dataclass(frozen=True, slots=True)
class Resync:
    reason: str


class Closed:
    """The hub is shutting down: the stream ends."""


CLOSED = Closed()
Item = Changed | Resync | Closed


class TooManySubscribers(Exception):
    pass


class Subscription:
    def __init__(self, hub: Hub, key: str) -> None:
        self.key = key
        self._hub = hub
        self._queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE_SIZE)

    def offer(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too far behind: its backlog is worth less than one "fetch everything new".
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(
                item if isinstance(item, Closed) else Resync("the stream fell behind")
            )

    async def next(self) -> Item:
        return await self._queue.get()

    def close(self) -> None:
        self._hub.unsubscribe(self)


class Source(Protocol):
    async def run(self, hub: Hub) -> None:
        """Deliver notifications to `hub.publish` until cancelled; call `hub.connected()`
        whenever notifications start flowing (again) and `hub.disconnected()` when they stop."""
        ...


class Hub:
    def __init__(self, source: Source, *, max_per_key: int, idle_seconds: float) -> None:
        self._source = source
        self._max_per_key = max_per_key
        self._idle_seconds = idle_seconds
        self._subscribers: dict[str, set[Subscription]] = {}
        self._running: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closed = False
        self._connected = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._running is not None and not self._running.done()

    def keys(self) -> list[str]:
        """The keys with at least one subscriber."""
        return list(self._subscribers)

    def connected(self) -> None:
        self._connected.set()

    def disconnected(self) -> None:
        self._connected.clear()

    async def wait_connected(self) -> None:
        """Until the source delivers notifications: a change committed from then on reaches
        the subscribers. (Callers bound the wait.)"""
        await self._connected.wait()

    def subscribe(self, key: str) -> Subscription:
        if self._closed:
            raise TooManySubscribers("the server is shutting down")
        streams = self._subscribers.setdefault(key, set())
        if len(streams) >= self._max_per_key:
            raise TooManySubscribers(
                f"{self._max_per_key} streams of this user are open on this server already"
            )
        subscription = Subscription(self, key)
        streams.add(subscription)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.listening:
            # A context of its own: not the first subscriber's request (its id in every log
            # line of the source).
            self._running = asyncio.create_task(
                self._source.run(self), name="events-source", context=contextvars.Context()
            )
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        streams = self._subscribers.get(subscription.key)
        if streams is None:
            return
        streams.discard(subscription)
        if not streams:
            del self._subscribers[subscription.key]
        if not self._subscribers and self.listening and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self._idle_seconds, self._stop)

    def publish(self, key: str, seq: int) -> None:
        for subscription in self._subscribers.get(key, ()):
            subscription.offer(Changed(seq))

    def resync_all(self, reason: str) -> None:
        for streams in self._subscribers.values():
            for subscription in streams:
                subscription.offer(Resync(reason))

    def close_streams(self) -> None:
        """End every stream now (SIGTERM): a deploy is not held up by open streams."""
        self._closed = True
        for streams in self._subscribers.values():
            for subscription in streams:
                subscription.offer(CLOSED)

    async def aclose(self) -> None:
        self.close_streams()
        if self._idle is not None:
            self._idle.cancel()
        self._stop()
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    def _stop(self) -> None:
        self._idle = None
        if self._running is not None and (self._closed or not self._subscribers):
            self._running.cancel()
            self._connected.clear()


def _payload(payload: str) -> tuple[str, int] | None:
    seq, _, key = payload.partition(" ")
    try:
        return key, int(seq)
    except ValueError:
        return None


class PostgresListener:
    """LISTEN `channel` (payload "<seq> <key>") on a connection from `connect`."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channel: str,
        *,
        probe_seconds: float = 5.0,
        max_backoff: float = 10.0,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._probe_seconds = probe_seconds
        self._max_backoff = max_backoff

    async def run(self, hub: Hub) -> None:
        # Lost: a stream may have started while nothing was listening (its subscribe stopped
        # waiting for the connection), so the first connection after a failure is a resync.
        lost = False
        backoff = 0.1
        while True:
            try:
                connection = await self._connect()
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("events listener cannot connect (retry in %.1f s): %s", backoff, error)
                lost = True
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._max_backoff)
                continue
            try:
                await self._listen(connection, hub, resync=lost)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                log.warning("events listener lost its connection: %s", error)
            finally:
                hub.disconnected()
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=2))
            lost = True
            backoff = 0.1

    async def _listen(self, connection: asyncpg.Connection, hub: Hub, *, resync: bool) -> None:
        gone = asyncio.Event()

        def notified(_connection: object, _pid: int, _channel: str, payload: object) -> None:
            parsed = _payload(str(payload))
            if parsed is not None:
                hub.publish(*parsed)

        connection.add_termination_listener(lambda _connection: gone.set())
        await connection.add_listener(self._channel, notified)
        hub.connected()
        log.info("events listener connected (LISTEN %s)", self._channel)
        if resync:
            hub.resync_all("the server's notification connection was re-established")
        while not gone.is_set() and not connection.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), self._probe_seconds)
                break
            await connection.fetchval("SELECT 1", timeout=self._probe_seconds)
        raise ConnectionError("the listening connection was closed")


class Pushed:
    """A source that only waits: someone else calls `hub.publish` (SQLite: the database's
    commit observer, in this process)."""

    async def run(self, hub: Hub) -> None:
        hub.connected()
        await asyncio.Event().wait()
