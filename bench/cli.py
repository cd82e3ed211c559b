"""`python -m bench`: the whole benchmark, from an empty database to the report.

Steps (each printed as it runs):
1. create `todo_bench_<time>` next to BENCH_DATABASE_URL, migrate it (`todo_api db upgrade`),
   seed it with set-based SQL, write the id samples the Lua script reads;
2. time start-to-ready of the API (spawn -> first 200 on /health/ready), then start the API and
   the reference server pinned to one core (wrk gets another);
3. warm up, then two mixed runs on the API reading its peak RSS after each (leak check);
4. every scenario on every server, interleaved (A, B, A, B), wrk + bench/lua/scenarios.lua;
5. --large: grow to 1,000,000 tasks (one user with 100,000) and run get/list/list-deep again;
6. --profile: py-spy on the API worker under one scenario's load;
7. report to bench/results/, drop the database; exit 1 if any request failed (never on speed).

--latency replaces steps 2-6: a delaying proxy (bench/delay.py) between the servers and the
database, direct and through the benchmark's own PgBouncer, p50/p99 at 1 and 32 connections.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import delay, profile
from bench.database import BIG_USER, SEED_REVISION, BenchDatabase, admin_url_from_env
from bench.harness import execute
from bench.pooler import PgBouncer
from bench.report import (
    RESULTS,
    Aggregate,
    Report,
    evaluate_targets,
    git_state,
    latency_phase,
    machine_info,
    write,
)
from bench.servers import (
    READY_PATH,
    REPO,
    Server,
    api_env,
    clean_env,
    request,
    spawn,
    walk_cursors,
)
from bench.wrk import WrkResult, WrkSettings, ensure_wrk, run_wrk

SCENARIOS = (
    "get", "list", "list-filtered", "list-labels", "list-search",
    "create", "patch", "toggle", "mixed",
)  # fmt: skip
LARGE_SCENARIOS = ("get", "list", "list-deep", "list-filtered", "list-labels", "list-search")
LATENCY_SCENARIOS = ("get", "list", "create", "toggle")
API, API_NO_METRICS, REFERENCE = "api", "api-nometrics", "reference"


@dataclass(frozen=True)
class Plan:
    mode: str
    users: int
    tasks_per_user: int
    big_user_tasks: int  # seeded up front (smoke only: exercises list-deep on tiny data)
    deep_pages: int
    seconds: float
    rounds: int
    warmup: float
    memory_seconds: float
    startup_samples: int
    connections: int
    large: bool
    metrics_compare: bool
    profile: tuple[str, ...]
    keep_database: bool
    delay_ms: float  # latency mode: one way, each direction (a round trip costs twice this)
    stamped_only: bool = False  # no latest*.md/.json; profiles under the run's stamp

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        smoke: bool = args.smoke
        latency: bool = args.latency
        # smoke: 1 s runs, enough to prove every scenario answers (CI's 15-minute budget)
        short = 1.0 if smoke else (5.0 if latency else 12.0)
        seconds = args.duration if args.duration is not None else short
        if smoke:
            mode = "smoke"
        elif latency:
            mode = "latency"
        else:
            mode = "large" if args.large else "default"
        return cls(
            mode=mode,
            users=20 if smoke else 1000,
            tasks_per_user=20 if smoke else 100,
            big_user_tasks=200 if smoke else 0,
            deep_pages=3 if smoke else 1000,
            seconds=seconds,
            rounds=args.rounds if args.rounds is not None else (1 if smoke or latency else 2),
            # latency: the warm-up before every measured run (same scenario and connections)
            warmup=0.5 if smoke else (1.0 if latency else 3.0),
            memory_seconds=(
                args.memory_duration
                if args.memory_duration is not None
                else (1.0 if smoke else 60.0)
            ),
            startup_samples=1 if smoke else 3,
            connections=args.connections,
            large=args.large and not smoke,
            metrics_compare=args.metrics_compare,
            profile=tuple(filter(None, (args.profile or "").split(","))),
            keep_database=args.keep_database,
            delay_ms=args.delay_ms,
            stamped_only=args.stamped_only,
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, short runs (CI)")
    parser.add_argument("--large", action="store_true", help="also 1,000,000 tasks + list-deep")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 12; smoke 1)")
    parser.add_argument("--rounds", type=int, help="runs per scenario per server (default 2)")
    parser.add_argument(
        "--memory-duration", type=float, help="seconds of each of the two mixed RSS runs (60)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--metrics-compare",
        action="store_true",
        help="also run an API with METRICS_ENABLED=false next to the default (true)",
    )
    parser.add_argument(
        "--profile", metavar="SCENARIOS", help="py-spy the API under these scenarios (a,b,...)"
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop it at the end")
    parser.add_argument(
        "--stamped-only",
        action="store_true",
        help="write only new files: no latest*.md/.json, profiles as <time>-profile-<scenario>",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="p50/p99 with a network delay to the database, direct and through PgBouncer",
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=2.0,
        help="--latency: delay ONE WAY, in each direction (default 2: 4 ms per round trip)",
    )
    args = parser.parse_args(argv)
    if args.latency:
        clash = [
            flag
            for flag, value in (
                ("--smoke", args.smoke),
                ("--large", args.large),
                ("--metrics-compare", args.metrics_compare),
                ("--profile", args.profile),
            )
            if value
        ]
        if clash:
            parser.error(f"--latency cannot be combined with {', '.join(clash)}")
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    return args


def say(message: str) -> None:
    print(f"bench [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cpu_layout() -> tuple[str | None, str | None, int]:
    """(server cpus, wrk cpus, wrk threads): servers on the last core, wrk on the first ones."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, 1
    wrk_cpus = cpus[: max(1, len(cpus) // 4)]
    return str(cpus[-1]), ",".join(map(str, wrk_cpus)), len(wrk_cpus)


def helper_cpus() -> str | None:
    """The delay proxy and PgBouncer (latency mode): every core but the servers' one."""
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(map(str, cpus[:-1])) if len(cpus) >= 2 else None


def _with_address(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Bench:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.server_cpus, wrk_cpus, threads = cpu_layout()
        self.wrk = WrkSettings(ensure_wrk(), plan.connections, threads, wrk_cpus, self.data_dir)
        self.db = BenchDatabase(admin_url_from_env())
        self.servers: list[Server] = []
        self.helpers: list[delay.DelayProxy | PgBouncer] = []  # latency mode
        stamp = time.strftime("%Y%m%d-%H%M%S")
        pinning = (
            f"servers on cpu {self.server_cpus}, wrk on cpu {wrk_cpus} ({threads} thread)"
            if self.server_cpus
            else "not pinned (one core)"
        )
        self.report = Report(
            meta={
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "stamp": stamp,
                "mode": plan.mode,
                "connections": plan.connections,
                "seconds": plan.seconds,
                "rounds": plan.rounds,
                "git": git_state(REPO),
                "pinning": pinning,
                "data": "",
            },
            machine={},
        )

    # --- servers ---------------------------------------------------------------------------

    def _start(
        self, name: str, *, database_url: str | None = None, extra: dict[str, str] | None = None
    ) -> Server:
        url = database_url or self.db.url
        if name == REFERENCE:
            env = clean_env() | {"DATABASE_URL": url}
        else:
            env = api_env(url, metrics=name != API_NO_METRICS)
        env |= extra or {}
        server = spawn(
            name, "api" if name != REFERENCE else "reference", env,
            cpus=self.server_cpus, workdir=self.workdir,
        )  # fmt: skip
        self.servers.append(server)
        server.wait_ready()
        return server

    def _stop(self, server: Server) -> None:
        server.stop()
        self.servers.remove(server)

    def measure_startup(self) -> None:
        for i in range(self.plan.startup_samples):
            server = self._start(f"startup-{i}")
            say(f"start to ready: {server.ready_seconds:.2f} s")
            self.report.startup_s.append(server.ready_seconds or 0.0)
            self._stop(server)

    # --- load ------------------------------------------------------------------------------

    def _wrk(
        self,
        server: Server,
        scenario: str,
        seconds: float,
        *,
        connections: int | None = None,
        note: str = "",
    ) -> WrkResult:
        settings = self.wrk
        if connections is not None and connections != settings.connections:
            threads = min(settings.threads, connections)
            settings = replace(settings, connections=connections, threads=threads)
        result = run_wrk(
            settings,
            target=server.name,
            base_url=server.base_url,
            scenario=scenario,
            seconds=seconds,
            deep_path=server.deep_path,
        )
        self.report.checks.append(result)
        flag = (
            ""
            if result.ok
            else f"  <-- {result.non2xx} non-2xx, {result.socket_errors} socket errors"
        )
        conns = f"c{settings.connections:<3} " if connections is not None else ""
        say(
            f"  {scenario:<9} {conns}{server.name:<11} {result.rps:9,.0f} req/s  "
            f"p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms{note}{flag}"
        )
        return result

    def run_phase(self, phase: str, targets: list[Server], scenarios: Sequence[str]) -> None:
        results: dict[str, dict[str, Aggregate]] = {}
        for scenario in scenarios:
            runs: dict[str, list[WrkResult]] = {server.name: [] for server in targets}
            for _ in range(self.plan.rounds):
                for server in targets:  # interleaved: A, B, A, B
                    runs[server.name].append(self._wrk(server, scenario, self.plan.seconds))
            results[scenario] = {name: Aggregate.of(r) for name, r in runs.items()}
        self.report.phases[phase] = results

    def walk_deep(self, targets: list[Server]) -> None:
        """Each server gets its own cursor, obtained by walking its own pages."""
        first_ids = set()
        for server in targets:
            started = time.perf_counter()
            server.deep_path, first_id = walk_cursors(server, BIG_USER, self.plan.deep_pages)
            first_ids.add(first_id)
            say(
                f"{server.name}: followed {self.plan.deep_pages} cursors into {BIG_USER} "
                f"in {time.perf_counter() - started:.1f} s"
            )
        if len(first_ids) != 1:
            raise RuntimeError(f"servers reached different deep pages: {first_ids}")

    def memory_runs(self, api: Server) -> None:
        readings: list[dict[str, Any]] = []
        peaks: list[int] = []
        for i in (1, 2):
            self._wrk(api, "mixed", self.plan.memory_seconds)
            memory = api.memory_kib()
            peaks.append(memory["VmHWM"])
            readings.append({"when": f"after mixed run {i}"} | memory)
        first, second = peaks
        growth = (second - first) / first
        self.report.memory[api.name] = {"readings": readings, "growth": growth}
        say(f"API VmHWM {first / 1024:.1f} MB -> {second / 1024:.1f} MB ({100 * growth:+.1f}%)")

    def final_memory(self, targets: list[Server]) -> None:
        for server in targets:
            info = self.report.memory.setdefault(server.name, {"readings": []})
            info["readings"].append({"when": "after all scenarios"} | server.memory_kib())
            info["peak_mb"] = max(r["VmHWM"] for r in info["readings"]) / 1024

    def run_profiles(self, api: Server) -> None:
        seconds = max(5, round(self.plan.seconds))
        for scenario in self.plan.profile:
            name = f"profile-{scenario}"
            if self.plan.stamped_only:
                name = f"{self.report.meta['stamp']}-{name}"
            stem = RESULTS / name
            say(f"profiling the API under {scenario} ({seconds} s flamegraph + {seconds} s raw)")
            for fmt, suffix in (("flamegraph", ".svg"), ("raw", ".txt")):
                profile.record(
                    api.pid,
                    stem.with_suffix(suffix),
                    seconds=seconds,
                    fmt=fmt,
                    load=lambda s=scenario: self._wrk(api, s, seconds),  # type: ignore[misc]
                )
            summary = profile.summarise(stem.with_suffix(".txt"))
            stem.with_suffix(".md").write_text(f"# API profile under {scenario}\n\n{summary}")
            self.report.profile[scenario] = str(stem.with_suffix(".svg").relative_to(REPO))

    # --- the whole run ---------------------------------------------------------------------

    def run_latency(self) -> None:
        """Steps 2-6 of a latency run: a delay between the servers and the database."""
        plan, db = self.plan, self.db
        seconds_delay = plan.delay_ms / 1000
        check = delay.self_check(seconds_delay)
        say(
            f"delay proxy self-check: round trip {check['round_trip_ms']['median']:.2f} ms "
            f"(median) for {2 * plan.delay_ms:g} ms configured ({check['timer']})"
        )
        levels = sorted({1, plan.connections})
        info: dict[str, Any] = {
            "delay_ms_one_way": plan.delay_ms,
            "round_trip_ms": 2 * plan.delay_ms,
            "levels": levels,
            "scenarios": list(LATENCY_SCENARIOS),
            "warmup_s": plan.warmup,
            "self_check": check,
            "paths": {},
        }
        self.report.meta["latency"] = info
        self.report.meta["connections"] = " and ".join(map(str, levels))
        cpus = helper_cpus()
        if cpus:
            self.report.meta["pinning"] += f"; delay proxy and PgBouncer on cpu {cpus}"
        address = urlsplit(db.url)
        postgres = (address.hostname or "127.0.0.1", address.port or 5432)
        bouncer = PgBouncer(*postgres)
        self.helpers.append(bouncer)
        bouncer.start(cpus=cpus)
        say(f"PgBouncer (transaction mode) on port {bouncer.port} -> {postgres[0]}:{postgres[1]}")
        paths = (
            (
                "direct",
                postgres,
                "session",
                f"servers -> proxy (+{plan.delay_ms:g} ms each way) -> PostgreSQL; the API "
                "with DB_POOL_MODE=session, the reference with asyncpg's statement cache on.",
            ),
            (
                "pgbouncer",
                ("127.0.0.1", bouncer.port),
                "transaction",
                f"servers -> proxy (+{plan.delay_ms:g} ms each way) -> PgBouncer "
                "(pool_mode=transaction, default_pool_size=20, next to PostgreSQL, as Neon's "
                "-pooler endpoints) -> PostgreSQL; both servers with DB_POOL_MODE=transaction "
                "(no named prepared statements: asyncpg statement_cache_size=0).",
            ),
        )
        for path, upstream, pool_mode, description in paths:
            proxy = delay.DelayProxy(upstream, seconds_delay, self.workdir, f"delay-{path}")
            self.helpers.append(proxy)
            proxy.start(cpus=cpus)
            url = _with_address(db.url, "127.0.0.1", proxy.port)
            say(f"{path}: servers -> delay proxy :{proxy.port} -> {upstream[0]}:{upstream[1]}")
            # Migrations (AUTO_MIGRATE, a no-op here) go straight to PostgreSQL, not the pooler.
            api = self._start(
                API,
                database_url=url,
                extra={"DB_POOL_MODE": pool_mode, "DATABASE_URL_DIRECT": db.url},
            )
            reference = self._start(REFERENCE, database_url=url, extra={"DB_POOL_MODE": pool_mode})
            status, body = request(reference.port, "GET", READY_PATH)
            cache = (body or {}).get("statement_cache_size")
            if status != 200 or (pool_mode == "transaction") != (cache == 0):
                raise RuntimeError(
                    f"reference ignores DB_POOL_MODE={pool_mode}: statement_cache_size={cache}"
                )
            targets = [api, reference]
            for server in targets:  # warm-up: every pooled connection opened
                self._wrk(server, "mixed", 2.0, connections=plan.connections, note="  (warm-up)")
            cpu_shares: list[dict[str, Any]] = []
            for connections in levels:
                phase = latency_phase(path, connections)
                results: dict[str, dict[str, Aggregate]] = {}
                for scenario in LATENCY_SCENARIOS:
                    runs: dict[str, list[WrkResult]] = {server.name: [] for server in targets}
                    for _ in range(plan.rounds):
                        for server in targets:  # interleaved: A, B, A, B
                            # The same load first, so idle pings (DB_PING_AFTER_IDLE) and
                            # connection hand-over after the other server's run fall outside.
                            self._wrk(
                                server,
                                scenario,
                                plan.warmup,
                                connections=connections,
                                note="  (warm-up)",
                            )
                            cpu, started = proxy.cpu_seconds(), time.perf_counter()
                            result = self._wrk(
                                server, scenario, plan.seconds, connections=connections
                            )
                            share = (proxy.cpu_seconds() - cpu) / (time.perf_counter() - started)
                            cpu_shares.append(
                                {"phase": phase, "scenario": scenario, "server": server.name}
                                | {"proxy_cpu": round(share, 3)}
                            )
                            runs[server.name].append(result)
                    results[scenario] = {name: Aggregate.of(r) for name, r in runs.items()}
                self.report.phases[phase] = results
            for server in targets:
                self._stop(server)
            stats = proxy.stop()
            self.helpers.remove(proxy)
            info["paths"][path] = {
                "description": description,
                "upstream": f"{upstream[0]}:{upstream[1]}",
                "pool_mode": pool_mode,
                "reference_statement_cache_size": cache,
                "proxy": stats,
                "proxy_cpu_max": max(c["proxy_cpu"] for c in cpu_shares),
                "proxy_cpu": cpu_shares,
            }
            late = stats.get("overshoot_us", {})
            say(
                f"{path}: proxy carried {stats.get('chunks', 0):,} chunks, late by "
                f"{late.get('p50')} µs (p50) / {late.get('p99')} µs (p99)"
            )
        bouncer.stop()
        self.helpers.remove(bouncer)

    def prepare_database(self) -> int:
        """Step 1: create, migrate to 0003, seed, migrate to head (timed, with a reader of
        other users watching), seed the task model's data, sample; the number of tasks."""
        plan, db = self.plan, self.db
        db.create()
        say(f"created database {db.name}")
        env = api_env(db.url, metrics=True)
        db.migrate(env, self.workdir, revision=SEED_REVISION)
        db.seed_0003(plan.users, plan.users * plan.tasks_per_user)
        if plan.big_user_tasks:
            db.seed_big_user_0003(plan.big_user_tasks)
        db.analyze()
        migration = db.migrate_watched(env, self.workdir)
        migration["tasks"] = db.count_tasks()
        self.report.meta["migration"] = {
            key: migration[key]
            for key in ("tasks", "seconds", "reads", "max_read_ms", "max_read_at_s", "blocked")
        }
        say(
            f"migration {SEED_REVISION} -> head on {migration['tasks']:,} tasks: "
            f"{migration['seconds']} s; worst read of another user {migration['max_read_ms']} ms"
        )
        decorated = db.decorate()
        say(f"task model data: {decorated}")
        db.analyze()
        db.write_samples(self.data_dir)
        self.report.meta["data"] = (
            f"{plan.users:,} users x {plan.tasks_per_user} tasks"
            + (f" + {BIG_USER} with {plan.big_user_tasks}" if plan.big_user_tasks else "")
            + (
                f" (seeded at {SEED_REVISION}, then migrated); {decorated['with_due']:,} with a "
                f"due date, {decorated['labels']:,} labels, {decorated['task_labels']:,} task "
                "labels"
            )
        )
        return db.count_tasks()

    def run(self) -> None:
        plan, db = self.plan, self.db
        self.report.machine = machine_info(db.server_version())
        tasks = self.prepare_database()
        if plan.mode == "latency":
            say(f"seeded {tasks:,} tasks; latency runs")
            self.run_latency()
            self.report.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            return
        total = plan.users * plan.tasks_per_user
        phase = "100k tasks" if tasks == 100_000 else f"{tasks:,} tasks"
        say(f"seeded {tasks:,} tasks; measuring start to ready")
        self.measure_startup()

        names = [API, API_NO_METRICS, REFERENCE] if plan.metrics_compare else [API, REFERENCE]
        targets = [self._start(name) for name in names]
        api = targets[0]
        self.report.startup_s.append(api.ready_seconds or 0.0)
        for server in targets:
            self._wrk(server, "mixed", plan.warmup)  # warm-up: connections, statement caches
        say(f"memory: two {plan.memory_seconds:.0f} s mixed runs on the API")
        self.memory_runs(api)

        scenarios: list[str] = list(SCENARIOS)
        if plan.big_user_tasks:
            self.walk_deep(targets)
            scenarios.insert(2, "list-deep")
        phase = "100k" if plan.large else phase
        say(f"scenarios ({phase}): {', '.join(scenarios)}")
        self.run_phase(phase, targets, scenarios)

        if plan.large:
            say("growing to 1,000,000 tasks (one user with 100,000)")
            db.seed_big_user(100_000)
            db.seed(plan.users, 800_000, offset=total)
            say(f"task model data: {db.decorate()}")
            db.analyze()
            db.write_samples(self.data_dir)
            say(f"now {db.count_tasks():,} tasks")
            self.walk_deep(targets)
            self.run_phase("1M", targets, LARGE_SCENARIOS)
            self.report.meta["data"] += "; then 1,000,000 tasks incl. bench-big with 100,000"

        self.final_memory(targets)
        if plan.profile:
            self.run_profiles(api)
        self.report.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        evaluate_targets(self.report, API, REFERENCE)

    def logs(self) -> list[tuple[str, str]]:
        tails = [(f"last lines of {server.name}'s log", server.log()) for server in self.servers]
        tails += [(f"end of the {type(h).__name__}'s log", h.log()) for h in self.helpers]
        return tails

    def close(self) -> None:
        for server in list(self.servers):
            server.stop()
        self.servers.clear()
        for helper in reversed(self.helpers):
            helper.stop()
        self.helpers.clear()
        if self.plan.keep_database:
            say(f"kept database {self.db.name} ({self.db.url})")
        else:
            self.db.drop()


def main(argv: Sequence[str] | None = None) -> int:
    plan = Plan.from_args(parse_args(argv))
    started = time.perf_counter()
    bench = execute(lambda workdir: Bench(plan, workdir), name="bench")
    names = [API, API_NO_METRICS, REFERENCE] if plan.metrics_compare else [API, REFERENCE]
    # Smoke reports (CI) go to results/smoke/, which results/.gitignore ignores.
    directory = RESULTS / "smoke" if plan.mode == "smoke" else RESULTS
    suffix = "-latency" if plan.mode == "latency" else ""
    path, markdown = write(
        bench.report, names, directory=directory, suffix=suffix, latest=not plan.stamped_only
    )
    print(markdown)
    also = "" if plan.stamped_only else f", latest{suffix}.md, latest{suffix}.json"
    say(f"report: {path.relative_to(REPO)} (+ .json{also})")
    say(f"finished in {time.perf_counter() - started:.0f} s")
    failures = bench.report.failures
    if failures:
        print(
            f"bench: {len(failures)} wrk run(s) had failed requests (see Errors)", file=sys.stderr
        )
        return 1
    return 0
