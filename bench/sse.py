"""A minimal HTTP/1.1 client on asyncio streams: keep-alive JSON requests and a Server-Sent
Events reader, each with the time (`time.perf_counter()`) at which bytes arrived.

No library in between (httpx would do, but adds its own buffering and CPU to what is timed):
`bench.events` needs "when did the stream deliver `id: n`", and `bench.changes` a stream that
merely stays open. Only what uvicorn sends is handled: `Content-Length` or chunked bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HEAD_LIMIT = 64 * 1024


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    sent_at: float  # just before the request's first byte was written
    received_at: float  # when the whole body had arrived

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Event:
    """One SSE block (up to a blank line): its fields, and comment lines without the colon."""

    arrived_at: float
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: str | None = None
    comments: list[str] = field(default_factory=list)


def _request_bytes(
    method: str, path: str, host: str, body: bytes | None, headers: dict[str, str]
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    if len(raw) > HEAD_LIMIT:
        raise RuntimeError("response head too large")
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise RuntimeError(f"not an HTTP/1.x response: {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _chunked(headers: dict[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body (b"" for the last one)."""
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";", 1)[0].strip(), 16)
    data = await reader.readexactly(size + 2)  # with its CRLF
    if size == 0:
        await reader.readuntil(b"\r\n")  # no trailers are sent: the final CRLF
    return data[:-2]


class HttpClient:
    """One keep-alive connection to 127.0.0.1:`port`; one request at a time."""

    def __init__(self, port: int, *, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, method: str, path: str, payload: Any = None) -> Response:
        if self._reader is None or self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        body = None if payload is None else json.dumps(payload).encode()
        data = _request_bytes(method, path, f"{self.host}:{self.port}", body, {})
        sent_at = time.perf_counter()
        self._writer.write(data)
        await self._writer.drain()
        status, headers = await _read_head(self._reader)
        if _chunked(headers):
            chunks = []
            while chunk := await _read_chunk(self._reader):
                chunks.append(chunk)
            content = b"".join(chunks)
        else:
            content = await self._reader.readexactly(int(headers.get("content-length", "0")))
        received_at = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, content, sent_at, received_at)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class EventStream:
    """GET `path` as `text/event-stream` on a connection of its own; `run` parses blocks."""

    def __init__(self, port: int, path: str, *, host: str = "127.0.0.1") -> None:
        self.host, self.port, self.path = host, port, path
        self.status = 0
        self.headers: dict[str, str] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        self._writer.write(
            _request_bytes("GET", self.path, f"{self.host}:{self.port}", None, headers)
        )
        await self._writer.drain()
        self.status, self.headers = await _read_head(self._reader)

    async def run(self, deliver: Callable[[Event], None]) -> None:
        """Until the stream ends: `deliver` each complete block, stamped with the arrival of
        the bytes that completed it."""
        assert self._reader is not None
        reader, chunked = self._reader, _chunked(self.headers)
        buffer = b""
        current: Event | None = None
        while True:
            data = await _read_chunk(reader) if chunked else await reader.read(65536)
            arrived_at = time.perf_counter()
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r").decode()
                if current is None:
                    current = Event(arrived_at)
                if not line:
                    current.arrived_at = arrived_at
                    deliver(current)
                    current = None
                elif line.startswith(":"):
                    current.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name in ("id", "event", "retry"):
                        setattr(current, name, value)
                    elif name == "data":
                        current.data = value if current.data is None else current.data + value

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def open_idle_stream(port: int, path: str, *, timeout: float = 10.0) -> socket.socket:
    """A blocking socket with `path` streaming, once its `: connected` comment arrived; never
    read again (a `: ping` every 15 s is all it gets when nobody writes to its user)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        headers = {"Accept": "text/event-stream"}
        sock.sendall(_request_bytes("GET", path, f"127.0.0.1:{port}", None, headers))
        received = b""
        deadline = time.monotonic() + timeout
        while b": connected" not in received:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ': connected' on {path} after {timeout:.0f} s")
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"{path} closed before ': connected': {received[:500]!r}")
            received += data
        status_line = received.split(b"\r\n", 1)[0].decode("latin-1")
        if " 200 " not in f"{status_line} ":
            raise RuntimeError(f"{path} answered {status_line!r}")
        return sock
    except BaseException:
        sock.close()
        raise
