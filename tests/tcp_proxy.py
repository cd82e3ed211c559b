"""A loopback TCP proxy between the app and PostgreSQL that tests can break on purpose.

`cut()` drops every open connection and refuses new ones (a database that went away),
`stall()` accepts connections but forwards nothing (a database that hangs), `restore()` heals.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import Enum


class Mode(Enum):
    FORWARD = "forward"
    REFUSE = "refuse"
    STALL = "stall"


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.FORWARD
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections_accepted = 0

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

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)
