"""A loopback TCP proxy that counts client→server round trips, per connection.

A round trip is one client "flight": bytes the client sends after the server last sent bytes on
that connection (the first client flight of a connection counts too). Several writes in a row,
or one write split into several reads, are one flight; a flight pipelined while the server is
still answering is not told apart from the answer it overlaps. The proxy only forwards bytes, so
TLS (a pooler's) is counted the same way: TLS records in, TLS records out.

Connection startup (TLS handshake, authentication) is counted like anything else; to measure a
request alone, warm the client's pool, `reset()`, make the request, let it settle a few ms and
read `measure()`: connections opened after the reset are marked as new, so a figure that
includes a startup is visible as such. `ThreadedRoundTripProxy` runs the proxy on its own event
loop in a background thread (forwarding then never waits behind the test's coroutines);
`RoundTripProxy` runs on the caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import TypeVar

from background_loop import Threaded

T = TypeVar("T")


@dataclass(frozen=True)
class ConnectionTrips:
    """One proxied connection's traffic since the last reset (or since it opened)."""

    number: int  # 1, 2, … in the order connections were accepted
    new: bool  # opened after the last reset: its startup is in the figures
    open: bool
    round_trips: int
    client_bytes: int
    server_bytes: int

    def describe(self) -> str:
        kind = "new" if self.new else "pooled"
        state = "" if self.open else ", closed"
        return (
            f"connection {self.number} ({kind}{state}): {self.round_trips} round trip(s), "
            f"{self.client_bytes} B to the server, {self.server_bytes} B back"
        )


@dataclass(frozen=True)
class Measurement:
    connections: tuple[ConnectionTrips, ...]  # those with traffic since the reset

    @property
    def round_trips(self) -> int:
        return sum(connection.round_trips for connection in self.connections)

    @property
    def new_connections(self) -> int:
        return sum(connection.new for connection in self.connections)

    def describe(self) -> str:
        lines = [connection.describe() for connection in self.connections]
        return "\n".join(lines) or "no traffic"


@dataclass
class _Connection:
    number: int
    new: bool
    open: bool = True
    round_trips: int = 0
    client_bytes: int = 0
    server_bytes: int = 0
    server_spoke_last: bool = True  # so that the first client flight counts

    def frozen(self) -> ConnectionTrips:
        return ConnectionTrips(
            self.number, self.new, self.open, self.round_trips, self.client_bytes, self.server_bytes
        )


class RoundTripProxy:
    """Forwards 127.0.0.1:`port` to the target and counts round trips (see the module)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: list[_Connection] = []
        # Counts are read and reset from another thread when the proxy runs in its own.
        self._lock = threading.Lock()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reset(self) -> None:
        """Zero every count; connections open now count as pooled from here on."""
        with self._lock:
            self._connections = [c for c in self._connections if c.open]
            for connection in self._connections:
                connection.new = False
                connection.round_trips = connection.client_bytes = connection.server_bytes = 0

    def measure(self) -> Measurement:
        """The traffic since the last reset, per connection that had any."""
        with self._lock:
            active = [c for c in self._connections if c.new or c.client_bytes or c.server_bytes]
            return Measurement(tuple(c.frozen() for c in active))

    def all_connections(self) -> list[ConnectionTrips]:
        with self._lock:
            return [c.frozen() for c in self._connections]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            number = 1 + max((c.number for c in self._connections), default=0)
            connection = _Connection(number, new=True)
            self._connections.append(connection)
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            with self._lock:
                connection.open = False
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer, connection, from_client=True),
            self._pipe(upstream_reader, writer, connection, from_client=False),
        )
        with self._lock:
            connection.open = False

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        *,
        from_client: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                with self._lock:
                    if from_client:
                        if connection.server_spoke_last:
                            connection.round_trips += 1
                            connection.server_spoke_last = False
                        connection.client_bytes += len(data)
                    else:
                        connection.server_spoke_last = True
                        connection.server_bytes += len(data)
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


class ThreadedRoundTripProxy(Threaded[RoundTripProxy]):
    """A RoundTripProxy forwarding from its own event loop in a background thread."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(RoundTripProxy(target_host, target_port), "round-trip-proxy")

    def reset(self) -> None:
        self.proxy.reset()

    def measure(self) -> Measurement:
        return self.proxy.measure()

    def all_connections(self) -> list[ConnectionTrips]:
        return self.proxy.all_connections()
