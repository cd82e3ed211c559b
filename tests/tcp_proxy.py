"""A loopback TCP proxy between the app and PostgreSQL that tests can break on purpose.

`cut()` drops every open connection and refuses new ones (a database that went away),
`reject(message)` answers new ones as PostgreSQL does while it shuts down or starts up and keeps
the open ones, `stall()` accepts connections but forwards nothing (a database that hangs),
`restore()` heals. `ThreadedTcpProxy` runs one on its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from enum import Enum

from background_loop import Threaded


class Mode(Enum):
    FORWARD = "forward"
    REFUSE = "refuse"
    STALL = "stall"
    REJECT = "reject"


# A session may open by asking for TLS or GSS encryption (SSLRequest, GSSENCRequest); the server
# answers "N" (not here) and the client goes on with its startup packet in the clear.
_ENCRYPTION_REQUESTS = frozenset({80877103, 80877104})


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.FORWARD
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections_accepted = 0
        self.rejection = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.mode = Mode.REFUSE
        self._drop_all()

    def reject(self, message: str) -> None:
        """New sessions get FATAL 57P03 (cannot_connect_now) with this message, as from
        PostgreSQL shutting down or starting up; open ones keep going."""
        self.rejection = message
        self.mode = Mode.REJECT

    def stall(self) -> None:
        self.mode = Mode.STALL

    def restore(self) -> None:
        self.mode = Mode.FORWARD

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self.mode is Mode.REFUSE:
            writer.transport.abort()
            return
        if self.mode is Mode.REJECT:
            await self._reject(reader, writer, self.rejection)
            return
        self._writers.add(writer)
        if self.mode is Mode.STALL:
            return  # hold the socket open and say nothing
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    async def _reject(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, struct.error):
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                packet = await reader.readexactly(length - 4)
                if struct.unpack("!I", packet[:4])[0] not in _ENCRYPTION_REQUESTS:
                    break  # the startup packet
                writer.write(b"N")
            fields = b"SFATAL\0VFATAL\0C57P03\0M" + message.encode() + b"\0\0"
            writer.write(b"E" + struct.pack("!I", len(fields) + 4) + fields)
            await writer.drain()
        writer.close()  # not abort(): the error response must reach the client first

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


class ThreadedTcpProxy(Threaded[TcpProxy]):
    """A TcpProxy forwarding from its own event loop in a background thread.

    For tests whose own loop is busy (a load generator): forwarding does not then queue behind
    the test's coroutines. cut/refuse/stall/restore return once applied in the proxy's loop.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        super().__init__(TcpProxy(target_host, target_port), "tcp-proxy", loop_factory)

    def cut(self) -> None:
        self._apply(self.proxy.cut)

    def reject(self, message: str) -> None:
        self._apply(lambda: self.proxy.reject(message))

    def stall(self) -> None:
        self._apply(self.proxy.stall)

    def restore(self) -> None:
        self._apply(self.proxy.restore)

    def _apply(self, change: Callable[[], None]) -> None:
        async def apply() -> None:
            change()

        self._loop.run(apply())
