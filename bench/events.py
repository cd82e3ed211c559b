"""`python -m bench.events`: how long a write on one API process takes to reach an events
stream on another.

One scratch database (migrated to head), the benchmark's own PgBouncer in transaction mode
(bench/pooler.py) in front of it, and two API processes, A and B, with production settings
(bench/servers.py), `DATABASE_URL` through PgBouncer (`DB_POOL_MODE=transaction`) and
`DATABASE_URL_DIRECT` straight to PostgreSQL (where B's LISTEN connection goes). The client
opens `GET /api/{u}/events` on B, waits for `: connected` / `retry: 3000`, writes until the
first event arrives (B's LISTEN connection is opened by its first stream), then makes
`--writes` sequential writes on A for user u, alternating create / patch / toggle (of the
task created last). For each write it records t0 just before sending it, the time A's answer
had fully arrived, and t1 when B's stream delivered the block with `id: <the change_seq of
A's answer>`; the next write goes only after that (or after `--timeout`: the event is then
missing). Reported: t1 - t0 and t1 - (A's answer), p50/p90/p99/max; missing events, resyncs,
gaps in the sequence. `results/<stamp>-events.md` and `.json` (`--smoke`: `results/smoke/`).
Exit 1 when an event is missing or any check fails; never on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.cli import _with_address, cpu_layout, helper_cpus
from bench.database import BenchDatabase, admin_url_from_env
from bench.harness import execute, write_report
from bench.pooler import PgBouncer
from bench.report import git_state, machine_info
from bench.servers import REPO, Server, api_env, request, spawn
from bench.sse import Event, EventStream, HttpClient, Response

USER = "events-user"
KINDS = ("create", "patch", "toggle")
RETRY = "3000"
LISTENER_APPLICATION_NAME = "todo-api-listener"  # todo_api.platform.events


def say(message: str) -> None:
    print(f"bench.events [{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Plan:
    smoke: bool
    writes: int
    warmup: int  # writes (each waiting for its event) after the first event, not measured
    timeout: float  # seconds a write waits for its event before counting it missing
    keep: bool

    @classmethod
    def parse(cls, argv: Sequence[str] | None) -> Plan:
        parser = argparse.ArgumentParser(
            prog="python -m bench.events", description=__doc__.splitlines()[0]
        )
        parser.add_argument("--smoke", action="store_true", help="30 writes (< 30 s)")
        parser.add_argument("--writes", type=int, help="measured writes (1000; smoke 30)")
        parser.add_argument("--warmup", type=int, help="unmeasured writes first (30; smoke 3)")
        parser.add_argument(
            "--timeout", type=float, default=5.0, help="seconds to wait for each event (5)"
        )
        parser.add_argument("--keep", action="store_true", help="keep the database and logs")
        args = parser.parse_args(argv)
        smoke: bool = args.smoke
        writes = args.writes if args.writes is not None else (30 if smoke else 1000)
        if writes < 1:
            parser.error("--writes must be >= 1")
        return cls(
            smoke=smoke,
            writes=writes,
            warmup=args.warmup if args.warmup is not None else (3 if smoke else 30),
            timeout=args.timeout,
            keep=args.keep,
        )


@dataclass
class Sample:
    index: int
    kind: str
    status: int
    seq: int | None
    sent_at: float
    answered_at: float
    event_at: float | None = None
    late: bool = False  # arrived, but after the timeout

    @property
    def to_event_ms(self) -> float | None:
        return None if self.event_at is None else 1000 * (self.event_at - self.sent_at)

    @property
    def after_answer_ms(self) -> float | None:
        return None if self.event_at is None else 1000 * (self.event_at - self.answered_at)

    @property
    def answer_ms(self) -> float:
        return 1000 * (self.answered_at - self.sent_at)


@dataclass
class StreamLog:
    """What B's stream sent, as the client saw it."""

    opening: Event | None = None
    arrivals: dict[int, float] = field(default_factory=dict)  # id -> arrival
    ids: list[int] = field(default_factory=list)  # in order received
    bad_data: list[str] = field(default_factory=list)
    resyncs: list[str] = field(default_factory=list)
    pings: int = 0
    other: list[str] = field(default_factory=list)
    ended: bool = False


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


class Client:
    """Writes on A (one keep-alive connection), the stream on B, and the bookkeeping."""

    def __init__(self, plan: Plan, a: Server, b: Server, direct_url: str) -> None:
        self.plan = plan
        self.direct_url = direct_url
        self.listeners: list[dict[str, Any]] = []
        self.writer = HttpClient(a.port)
        self.stream = EventStream(b.port, f"/api/{USER}/events")
        self.log = StreamLog()
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.opened = asyncio.Event()
        self.task_id: str | None = None
        self.failed_writes: list[dict[str, Any]] = []

    def deliver(self, event: Event) -> None:
        log = self.log
        if log.opening is None:
            log.opening = event
            self.opened.set()
            return
        if event.event == "changed" and event.id is not None and event.id.isdigit():
            seq = int(event.id)
            log.ids.append(seq)
            log.arrivals.setdefault(seq, event.arrived_at)
            try:
                data = json.loads(event.data or "")
            except ValueError:
                data = None
            if data != {"change_seq": seq}:
                log.bad_data.append(f"id {seq}: {event.data!r}")
            future = self.waiting.pop(seq, None)
            if future is not None and not future.done():
                future.set_result(event.arrived_at)
        elif event.event == "resync":
            log.resyncs.append(event.data or "")
        elif event.comments == ["ping"] and event.event is None:
            log.pings += 1
        else:
            log.other.append(repr(event))

    async def event_of(self, seq: int) -> float | None:
        """When B's stream delivered `id: seq`; None after `plan.timeout` seconds."""
        if seq in self.log.arrivals:
            return self.log.arrivals[seq]
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[seq] = future
        try:
            async with asyncio.timeout(self.plan.timeout):
                return await future
        except TimeoutError:
            self.waiting.pop(seq, None)
            return None

    async def write(self, index: int, kind: str) -> Response:
        base = f"/api/{USER}/tasks"
        if kind == "create" or self.task_id is None:
            response = await self.writer.request("POST", base, {"title": f"events {index}"})
            if response.status == 201:
                self.task_id = str(response.json()["id"])
        elif kind == "patch":
            payload = {"title": f"events {index} patched"}
            response = await self.writer.request("PATCH", f"{base}/{self.task_id}", payload)
        else:
            response = await self.writer.request("PATCH", f"{base}/{self.task_id}/complete")
        return response

    async def sample(self, index: int, kind: str) -> Sample:
        response = await self.write(index, kind)
        body = response.json() if response.body else None
        seq = body.get("change_seq") if isinstance(body, dict) else None
        sample = Sample(
            index, kind, response.status, seq if isinstance(seq, int) else None,
            response.sent_at, response.received_at,
        )  # fmt: skip
        if not 200 <= response.status < 300 or sample.seq is None:
            self.failed_writes.append(
                {"index": index, "kind": kind, "status": response.status, "body": str(body)[:300]}
            )
            return sample
        sample.event_at = await self.event_of(sample.seq)
        return sample

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        first = await self.write(-1, "create")  # the user exists before its stream opens
        if first.status != 201:
            raise RuntimeError(f"first create on A answered {first.status}: {first.body!r}")
        await self.stream.open()
        if self.stream.status != 200:
            raise RuntimeError(f"GET {self.stream.path} on B answered {self.stream.status}")
        reader = asyncio.create_task(self.stream.run(self.deliver))
        try:
            await asyncio.wait_for(self.opened.wait(), 10)
            # B opens its LISTEN connection with the first stream: until it listens, a
            # NOTIFY is not heard. Write until one event arrives, then warm up.
            deadline = time.perf_counter() + 30
            listening_after = 0
            while True:
                probe = await self.sample(-2, "patch")
                listening_after += 1
                if probe.event_at is not None:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError("no event on B within 30 s of writes on A")
            warmup = [await self.sample(-3, KINDS[i % 3]) for i in range(plan.warmup)]
            # B (and only B) has a LISTEN connection, straight to PostgreSQL.
            self.listeners = await listener_connections(self.direct_url)
            samples = [await self.sample(i, KINDS[i % 3]) for i in range(plan.writes)]
            await asyncio.sleep(0.5)  # anything late, or extra
        finally:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
            except (OSError, asyncio.IncompleteReadError) as error:
                self.log.other.append(f"stream error: {error!r}")
            await self.stream.close()
            await self.writer.close()
        for sample in samples:
            if sample.event_at is None and sample.seq is not None:
                arrived = self.log.arrivals.get(sample.seq)
                if arrived is not None:
                    sample.late = True
        return {
            "probe_writes_until_listening": listening_after,
            "warmup_missing": sum(1 for s in warmup if s.event_at is None),
            "samples": samples,
        }


async def listener_connections(url: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT pid, client_addr::text AS client_addr, client_port, state, "
            "left(query, 80) AS query FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            LISTENER_APPLICATION_NAME,
        )
        return [dict(r) for r in rows]
    finally:
        await connection.close()


def socket_owner(local_port: int, remote_port: int, pids: Sequence[int]) -> int | None:
    """Which of `pids` holds the TCP connection 127.0.0.1:`local_port` -> :`remote_port`
    (from /proc/net/tcp and each process's fds); None when none of them does."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                inodes.add(f"socket:[{inode}]")
    for pid in pids:
        try:
            links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            return pid
    return None


class Run:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.db = BenchDatabase(admin_url_from_env())
        self.bouncer: PgBouncer | None = None
        self.servers: list[Server] = []
        self.server_cpus, _, _ = cpu_layout()
        self.helper_cpus = helper_cpus()
        self.result: dict[str, Any] = {}
        self.samples: list[Sample] = []
        self.log = StreamLog()
        self.failed_writes: list[dict[str, Any]] = []
        self.listeners: list[dict[str, Any]] = []
        self.problems: list[str] = []
        pinning = (
            f"A and B on cpu {self.server_cpus}, PgBouncer on cpu {self.helper_cpus}; "
            "the client and PostgreSQL not pinned"
            if self.server_cpus
            else "not pinned (one core)"
        )
        self.meta: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "stamp": time.strftime("%Y%m%d-%H%M%S"),
            "mode": "smoke" if plan.smoke else "default",
            "command": " ".join(["python -m bench.events", *sys.argv[1:]]),
            "writes": plan.writes,
            "warmup_writes": plan.warmup,
            "timeout_s": plan.timeout,
            "pinning": pinning,
            "git": git_state(REPO),
        }
        self.machine: dict[str, Any] = {}

    def run(self) -> None:
        db = self.db
        self.machine = machine_info(db.server_version())
        db.create()
        env = api_env(db.url, metrics=True)
        db.migrate(env, self.workdir)
        say(f"created {db.name}, migrated to head")
        address = urlsplit(db.url)
        self.bouncer = PgBouncer(address.hostname or "127.0.0.1", address.port or 5432)
        self.bouncer.start(cpus=self.helper_cpus)
        pooled = _with_address(db.url, "127.0.0.1", self.bouncer.port)
        say(f"PgBouncer (transaction mode) on port {self.bouncer.port}")
        env = api_env(pooled, metrics=True) | {
            "DB_POOL_MODE": "transaction",
            "DATABASE_URL_DIRECT": db.url,
        }
        self.servers = [
            spawn(name, "api", env, cpus=self.server_cpus, workdir=self.workdir)
            for name in ("A", "B")
        ]
        for server in self.servers:
            server.wait_ready()
            status, ready = request(server.port, "GET", "/health/ready")
            revision = (ready or {}).get("database", {}).get("revision")
            if status != 200:
                raise RuntimeError(f"{server.name}: /health/ready answered {status}")
            say(f"API {server.name} on port {server.port}, schema {revision}")
        self.meta["setup"] = {
            "pgbouncer_port": self.bouncer.port,
            "database_url": "through PgBouncer (pool_mode=transaction), DB_POOL_MODE=transaction",
            "database_url_direct": "PostgreSQL itself",
        }
        a, b = self.servers
        outcome = asyncio.run(self._measure(a, b))
        self.samples = outcome["samples"]
        self.result = {k: v for k, v in outcome.items() if k != "samples"}
        self.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.check()

    async def _measure(self, a: Server, b: Server) -> dict[str, Any]:
        client = Client(self.plan, a, b, self.db.url)
        self.log = client.log
        self.failed_writes = client.failed_writes
        say(f"stream on B, {self.plan.writes} sequential writes on A (user {USER})")
        outcome = await client.run()
        self.listeners = client.listeners
        postgres_port = urlsplit(self.db.url).port or 5432
        for listener in self.listeners:
            owner = socket_owner(listener["client_port"], postgres_port, [a.pid, b.pid])
            listener["process"] = {a.pid: "A", b.pid: "B"}.get(owner or -1, "neither A nor B")
        return outcome

    def check(self) -> None:
        log, plan = self.log, self.plan
        opening = log.opening
        if opening is None or "connected" not in opening.comments or opening.retry != RETRY:
            self.problems.append(f"the stream did not open with `: connected` / retry: {opening}")
        missing = [s for s in self.samples if s.event_at is None]
        if missing:
            self.problems.append(
                f"{len(missing)} events missing (of which {sum(s.late for s in missing)} came "
                f"after the {plan.timeout:g} s timeout)"
            )
        if self.failed_writes:
            self.problems.append(f"{len(self.failed_writes)} writes failed")
        if log.resyncs:
            self.problems.append(f"{len(log.resyncs)} resync events: {log.resyncs[:3]}")
        if log.bad_data:
            self.problems.append(f"events with wrong data: {log.bad_data[:3]}")
        if log.other:
            self.problems.append(f"unexpected stream blocks: {log.other[:3]}")
        seqs = [s.seq for s in self.samples if s.seq is not None]
        gaps = sum(1 for x, y in itertools.pairwise(seqs) if y != x + 1)
        self.result["sequence_gaps"] = gaps
        if gaps:
            self.problems.append(f"{gaps} gaps in the change_seq of consecutive writes")
        measured = set(seqs)
        extra = [i for i in log.ids if i not in measured and i > max(measured, default=0)]
        self.result["extra_events"] = len(extra)
        if extra:
            self.problems.append(f"events for no write: {extra[:5]}")
        if [listener.get("process") for listener in self.listeners] != ["B"]:
            self.problems.append(
                f"LISTEN connections: {self.listeners} (expected one, B's, to PostgreSQL)"
            )
        if len(self.samples) != plan.writes:
            self.problems.append(f"{len(self.samples)} samples for {plan.writes} writes")

    def close(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            server.stop()
        if self.bouncer is not None:
            self.bouncer.stop()
        if self.plan.keep:
            say(f"kept database {self.db.name} ({self.db.url})")
        else:
            self.db.drop()

    # --- report ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        arrived = [s for s in self.samples if s.event_at is not None]
        out: dict[str, Any] = {
            "write_to_event_ms": summary(
                [s.to_event_ms for s in arrived if s.to_event_ms is not None]
            ),
            "answer_to_event_ms": summary(
                [s.after_answer_ms for s in arrived if s.after_answer_ms is not None]
            ),
            "answer_ms": summary([s.answer_ms for s in self.samples]),
            "event_before_answer": sum(1 for s in arrived if (s.after_answer_ms or 0) < 0),
            "missing": sum(1 for s in self.samples if s.event_at is None),
            "by_kind": {},
        }
        for kind in KINDS:
            mine = [s for s in arrived if s.kind == kind]
            out["by_kind"][kind] = {
                "write_to_event_ms": summary([s.to_event_ms or 0.0 for s in mine]),
                "answer_to_event_ms": summary([s.after_answer_ms or 0.0 for s in mine]),
                "answer_ms": summary([s.answer_ms for s in mine]),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        log = self.log
        return {
            "meta": self.meta,
            "machine": self.machine,
            "result": self.result,
            "stats": self.stats(),
            "listeners": self.listeners,
            "stream": {
                "opening": asdict(log.opening) if log.opening else None,
                "changed_events": len(log.ids),
                "resyncs": log.resyncs,
                "pings": log.pings,
                "other": log.other,
            },
            "failed_writes": self.failed_writes,
            "problems": self.problems,
            "ok": not self.problems,
            "samples": [
                asdict(s)
                | {
                    "to_event_ms": s.to_event_ms,
                    "after_answer_ms": s.after_answer_ms,
                    "answer_ms": s.answer_ms,
                }
                for s in self.samples
            ],
        }

    def render(self) -> str:
        meta, machine, stats = self.meta, self.machine, self.stats()
        log = self.log
        listener = self.listeners[0] if len(self.listeners) == 1 else None
        lines = [
            f"# Events: a write on API A, its event on API B — {meta['started']}",
            "",
            f"- command: `{meta['command']}`; mode **{meta['mode']}**; {meta['writes']} "
            f"sequential writes of one user on A (create, patch, toggle in turn; patch and "
            f"toggle on the task created last), each after the previous one's event; "
            f"{meta['warmup_writes']} unmeasured writes first",
            f"- code: {meta['git']}; production settings (bench/servers.py), one worker each",
            "- A and B: `DATABASE_URL` through the benchmark's PgBouncer (pool_mode=transaction, "
            "`DB_POOL_MODE=transaction`), `DATABASE_URL_DIRECT` straight to PostgreSQL; the "
            "client: one keep-alive HTTP/1.1 connection to A, one stream to B (bench/sse.py, "
            "asyncio, no HTTP library)",
            f"- machine: {machine.get('cpu_model')}, {machine.get('cores')} cores "
            f"({meta['pinning']}); {machine.get('postgresql')}; Python {machine.get('python')}; "
            f"load average {machine.get('load_average_at_start')} at start, "
            f"{machine.get('load_average_at_end', '?')} at end",
            "- LISTEN connections during the writes: "
            + (
                f"1, `{LISTENER_APPLICATION_NAME}`, held by {listener['process']}'s process "
                f"(port {listener['client_port']} -> PostgreSQL's port itself, not PgBouncer's)"
                if listener
                else f"**{self.listeners}**"
            ),
            f"- B's stream opened with `: connected` and `retry: {RETRY}`: "
            + ("yes" if log.opening and log.opening.retry == RETRY else "**no**")
            + f"; B began hearing NOTIFY after {self.result.get('probe_writes_until_listening')} "
            "probe write(s)",
            "",
            "t0 = just before A's request was sent; answer = A's response fully read; t1 = B's "
            "stream delivered the block with `id: <the change_seq in A's answer>` (all on one "
            "`time.perf_counter()` clock, in one client process).",
            "",
            "| ms | n | p50 | p90 | p99 | max | mean | min |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = (
            ("**t1 - t0** (write sent → event on B)", stats["write_to_event_ms"]),
            ("**t1 - answer** (A's answer → event on B)", stats["answer_to_event_ms"]),
            ("answer - t0 (A's response time)", stats["answer_ms"]),
        )
        for what, s in rows:
            if s:
                lines.append(
                    f"| {what} | {s['n']} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} "
                    f"| {s['max']:.2f} | {s['mean']:.2f} | {s['min']:.2f} |"
                )
        lines += [
            "",
            f"The event reached the client before A's answer did in "
            f"{stats['event_before_answer']} of {len(self.samples)} writes (negative t1 - "
            "answer): NOTIFY is delivered at commit, while A still builds its response.",
            "",
            "| kind | n | t1 - t0 p50 / p99 | t1 - answer p50 / p99 | answer p50 / p99 |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind, by in stats["by_kind"].items():
            t, after, answer = by["write_to_event_ms"], by["answer_to_event_ms"], by["answer_ms"]
            if t:
                lines.append(
                    f"| {kind} | {t['n']} | {t['p50']:.2f} / {t['p99']:.2f} "
                    f"| {after['p50']:.2f} / {after['p99']:.2f} "
                    f"| {answer['p50']:.2f} / {answer['p99']:.2f} |"
                )
        lines += [
            "",
            "## Checks",
            "",
            f"- events missing (none within {meta['timeout_s']:g} s): **{stats['missing']}**",
            f"- failed writes: {len(self.failed_writes)}; gaps in consecutive change_seq: "
            f"{self.result.get('sequence_gaps')}; events for no write: "
            f"{self.result.get('extra_events')}; resync events: {len(log.resyncs)}; other "
            f"blocks: {len(log.other)}; pings: {log.pings}",
        ]
        if self.problems:
            lines += ["", "**Problems:**", ""] + [f"- {p}" for p in self.problems]
        else:
            lines.append("- every check held")
        return "\n".join(lines) + "\n"

    def logs(self) -> list[tuple[str, str]]:
        tails = [(f"last lines of {server.name}'s log", server.log()) for server in self.servers]
        if self.bouncer is not None:
            tails.append(("PgBouncer's log", self.bouncer.log()))
        return tails

    def write(self) -> Path:
        stem = f"{self.meta['stamp']}-events"
        return write_report(stem, self.render(), self.to_json(), smoke=self.plan.smoke)


def main(argv: Sequence[str] | None = None) -> int:
    plan = Plan.parse(argv)
    started = time.perf_counter()
    run = execute(lambda workdir: Run(plan, workdir), name="bench.events", keep=plan.keep)
    path = run.write()
    print(run.render())
    say(f"report: {path.relative_to(REPO)} (+ .json); {time.perf_counter() - started:.0f} s")
    if run.problems:
        print(f"bench.events: {run.problems}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
