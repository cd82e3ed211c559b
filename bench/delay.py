"""A TCP proxy that holds every chunk for a fixed time, in both directions, keeping the order.

`python -m bench --latency` puts one between the servers and PostgreSQL (or PgBouncer) to play a
network: each direction is delayed by `--delay-ms` (one way), so one database round trip costs
twice that. Only data is delayed; connection set-up is not (the pools keep their connections).

    python -m bench.delay --listen-port 6500 --upstream 127.0.0.1:5432 --delay-ms 2 \\
        --stats /tmp/stats.json          # runs until SIGTERM/SIGINT, then writes its stats
    python -m bench.delay --self-check   # a few checks against an in-process echo server

Why a proxy and not `tc qdisc ... netem`: netem needs root, iproute2 and the sch_netem kernel
module (missing on the benchmark machine: "Specified qdisc kind is unknown"), and netem on `lo`
would also delay every other client of the shared PostgreSQL; namespaces would need PostgreSQL
to listen on a veth address. The proxy delays only the benchmark's own connections.

Timing: a chunk read at t is written at t + delay, never earlier. Every chunk of every
connection goes into one FIFO (the delay is constant, so deadlines are already in order) and a
timerfd armed at the head's deadline wakes the loop: about 0.1 ms late, where the event loop's
own timers (epoll, millisecond resolution, rounded up) are up to 1 ms late. The lateness of
every chunk is recorded and reported ("overshoot"). Without timerfd (not Linux) it falls back
to the loop's timers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from bench.servers import REPO, free_port, pinned

_BIN_US = 10  # overshoot histogram: 10 µs bins up to 20 ms, the rest in the last bin
_BINS = 2000
_HIGH_WATER = 256 * 1024  # bytes buffered towards a side before reading from its peer pauses


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class _TimerFd:
    """A CLOCK_MONOTONIC timerfd (the clock of time.monotonic()), armed at absolute times."""

    CLOCK_MONOTONIC = 1
    TFD_NONBLOCK = os.O_NONBLOCK
    TFD_CLOEXEC = os.O_CLOEXEC
    TFD_TIMER_ABSTIME = 1

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = self._libc.timerfd_create(self.CLOCK_MONOTONIC, self.TFD_NONBLOCK | self.TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd

    def arm(self, when: float) -> None:
        seconds = int(when)
        nanos = max(1, int((when - seconds) * 1e9))  # 0/0 would disarm
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, nanos))
        if self._libc.timerfd_settime(self.fd, self.TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.chunks = 0
        self.bytes = 0
        self.max_overshoot = 0.0
        self.total_overshoot = 0.0
        self.histogram = [0] * _BINS

    def record(self, late: float, size: int) -> None:
        self.chunks += 1
        self.bytes += size
        self.total_overshoot += late
        self.max_overshoot = max(self.max_overshoot, late)
        self.histogram[min(_BINS - 1, int(late * 1e6) // _BIN_US)] += 1

    def percentile_us(self, q: float) -> float:
        rank, seen = q * self.chunks, 0
        for index, count in enumerate(self.histogram):
            seen += count
            if count and seen >= rank:
                return (index + 1) * _BIN_US  # upper edge of the bin
        return 0.0

    def summary(self, delay: float) -> dict[str, Any]:
        return {
            "delay_ms_one_way": delay * 1000,
            "connections": self.connections,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "overshoot_us": {
                "mean": round(1e6 * self.total_overshoot / self.chunks, 1) if self.chunks else 0,
                "p50": self.percentile_us(0.50),
                "p99": self.percentile_us(0.99),
                "max": round(1e6 * self.max_overshoot, 1),
            },
        }


class DelayLine:
    """One FIFO of (deadline, side, data) for all connections; data None means close."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.stats = Stats()
        self._queue: deque[tuple[float, _Side, bytes | None]] = deque()
        self._timer: _TimerFd | None = None
        self._handle: asyncio.TimerHandle | None = None
        try:
            self._timer = _TimerFd()
            loop.add_reader(self._timer.fd, self._fire)
        except (OSError, AttributeError, NotImplementedError):
            self._timer = None  # not Linux: the loop's own timers (up to 1 ms late)

    def push(self, side: _Side, data: bytes | None) -> None:
        deadline = time.monotonic() + self.delay
        self._queue.append((deadline, side, data))
        if len(self._queue) == 1:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.arm(deadline)
        else:
            self._handle = self.loop.call_later(deadline - time.monotonic(), self._fire)

    def _fire(self) -> None:
        if self._timer is not None:
            self._timer.clear()
        now = time.monotonic()
        queue = self._queue
        while queue and queue[0][0] <= now:
            deadline, side, data = queue.popleft()
            if data is None:
                side.close()
            else:
                self.stats.record(now - deadline, len(data))
                side.send(data)
        if queue:
            self._arm(queue[0][0])

    def close(self) -> None:
        if self._timer is not None:
            self.loop.remove_reader(self._timer.fd)
            self._timer.close()
        if self._handle is not None:
            self._handle.cancel()


class _Side(asyncio.Protocol):
    """One end of a proxied connection; what it reads goes to `peer` through the delay line."""

    def __init__(self, line: DelayLine) -> None:
        self.line = line
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # upstream only: data due before its connect completed
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        for data in self.early:
            transport.write(data)
        self.early.clear()
        if self.closed:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.line.push(self.peer, data)

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost sends the close on

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if self.peer is not None and not self.peer.closed:
                self.line.push(self.peer, None)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.transport is None:
            self.early.append(data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # after the buffered writes

    # Flow control: while this side cannot keep up, stop reading from its peer.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Side):
    def __init__(self, line: DelayLine, upstream: tuple[str, int]) -> None:
        super().__init__(line)
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.line.stats.connections += 1
        server = _Side(self.line)
        server.peer, self.peer = self, server
        self.line.loop.create_task(self._connect(server))

    async def _connect(self, server: _Side) -> None:
        host, port = self.upstream
        try:
            await self.line.loop.create_connection(lambda: server, host, port)
        except OSError:
            server.closed = True
            self.close()


async def start(
    delay: float, listen: tuple[str, int], upstream: tuple[str, int]
) -> tuple[asyncio.Server, DelayLine]:
    loop = asyncio.get_running_loop()
    line = DelayLine(loop, delay)

    def factory() -> _Client:
        return _Client(line, upstream)

    server = await loop.create_server(factory, *listen, reuse_address=True)
    return server, line


async def serve(delay: float, listen: tuple[str, int], upstream: tuple[str, int]) -> Stats:
    """Until SIGTERM or SIGINT; returns what went through."""
    server, line = await start(delay, listen, upstream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"delay proxy: {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]}", flush=True)
    await stop.wait()
    server.close()
    line.close()
    return line.stats


# --- self-check ------------------------------------------------------------------------------


class _Echo:
    """Echoes what it reads; remembers the tail and when the stream ended."""

    def __init__(self) -> None:
        self.tail = b""
        self.ended = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.tail = (self.tail + data)[-16:]
                writer.write(data)
                await writer.drain()
        finally:
            self.ended.set()
            writer.close()


async def _self_check(delay: float) -> dict[str, Any]:
    echo = _Echo()
    echo_server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    echo_port: int = echo_server.sockets[0].getsockname()[1]
    proxy, line = await start(delay, ("127.0.0.1", 0), ("127.0.0.1", echo_port))
    port: int = proxy.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # 1. Round trips: each is two delays (there and back), never less, at most ~1 ms more.
        rtts = []
        for i in range(20):
            started = time.monotonic()
            writer.write(b"ping %d\n" % i)
            line_back = await reader.readline()
            rtts.append(time.monotonic() - started)
            assert line_back == b"ping %d\n" % i, line_back
        rtts.sort()
        assert rtts[0] >= 2 * delay, f"round trip {rtts[0] * 1e3:.2f} ms < 2 x delay"
        median = rtts[len(rtts) // 2]
        assert median < 2 * delay + 0.002, f"median round trip {median * 1e3:.2f} ms"
        # 2. Pipelining: 50 chunks written 0.2 ms apart are delayed, not queued behind each
        #    other: the last arrives about one round trip after it was sent, in order.
        expected = b"".join(b"%04d" % i for i in range(50))
        started = time.monotonic()
        for i in range(50):
            writer.write(b"%04d" % i)
            await writer.drain()
            await asyncio.sleep(0.0002)
        sent = time.monotonic()
        got = await reader.readexactly(len(expected))
        last = time.monotonic() - sent
        assert got == expected, "pipelined chunks reordered or corrupted"
        assert last < 2 * delay + 0.005, f"pipelined: last chunk {last * 1e3:.1f} ms after send"
        # 3. Bulk: 4 MB both ways, byte for byte (exercises flow control).
        blob = os.urandom(4 * 1024 * 1024)
        writer.write(blob)
        back = await reader.readexactly(len(blob))
        assert back == blob, "bulk transfer corrupted"
        # 4. A close travels behind the data: the echo server reads "bye", then its EOF.
        writer.write(b"bye")
        writer.write_eof()
        await asyncio.wait_for(echo.ended.wait(), 1.0)
        assert echo.tail.endswith(b"bye"), echo.tail
        writer.close()
        return {
            "delay_ms_one_way": delay * 1e3,
            "round_trip_ms": {
                "min": round(rtts[0] * 1e3, 3),
                "median": round(median * 1e3, 3),
                "max": round(rtts[-1] * 1e3, 3),
            },
            "timer": "timerfd" if line._timer is not None else "event loop",
        }
    finally:
        proxy.close()
        line.close()
        echo_server.close()


def self_check(delay: float = 0.002) -> dict[str, Any]:
    """Checks timing, order, pipelining and bulk integrity; raises AssertionError on a fault."""
    result: dict[str, Any] = _event_loop_runner()(_self_check(delay))
    return result


class DelayProxy:
    """`python -m bench.delay` as a process of its own (pinned away from the servers)."""

    def __init__(self, upstream: tuple[str, int], delay: float, workdir: Path, name: str) -> None:
        self.upstream = upstream
        self.delay = delay
        self.port = free_port()
        self.stats_path = workdir / f"{name}-stats.json"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, cpus: str | None) -> None:
        host, port = self.upstream
        argv = [sys.executable, "-m", "bench.delay", "--listen-port", str(self.port)]
        argv += ["--upstream", f"{host}:{port}", "--delay-ms", repr(self.delay * 1000)]
        argv += ["--stats", str(self.stats_path)]
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                pinned(argv, cpus), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"delay proxy exited:\n{self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"delay proxy did not start listening:\n{self.log_path.read_text()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time of the proxy so far (from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, Any]:
        """Stops the proxy; its summary (chunks, bytes, overshoot) or {} if it left none."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            summary: dict[str, Any] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}
        return summary


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run: Callable[[Any], Any] = uvloop.run
    return run


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.delay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--upstream", type=_address, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="one way (default 2)")
    parser.add_argument("--stats", type=Path, help="write a JSON summary here on exit")
    parser.add_argument("--self-check", action="store_true")
    args = parser.parse_args(argv)
    delay = args.delay_ms / 1000
    if args.self_check:
        print(json.dumps(self_check(delay)))
        return 0
    if args.upstream is None:
        parser.error("--upstream is required")
    stats: Stats = _event_loop_runner()(
        serve(delay, (args.listen_host, args.listen_port), args.upstream)
    )
    if args.stats is not None:
        args.stats.write_text(json.dumps(stats.summary(delay)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
