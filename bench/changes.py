"""`python -m bench.changes`: what the change sequence costs the writes, before and after.

"Before" is commit 65c1816 (schema 0004: no change_seq, no triggers of the change feed), run
from a git worktree in /tmp with `PYTHONPATH=<worktree>/src` ahead of the installed package;
"after" is the installed package (this working tree; or `--after REF`, another worktree), at
schema 0006: every task/list/label write fires `change_stamped()`, which bumps
`users.change_seq` once per transaction and, when a process streams the user's events (a live
`event_watches` row), queues `NOTIFY todo_api_changes`.

Steps:
1. a worktree of 65c1816; the "before" database migrated by the old code's own
   `todo_api db upgrade` (to 0004), seeded with bench/database.py's set-based SQL (head-of-0004
   shape: inboxes, positions, due dates, priorities, labels), then copied with
   `CREATE DATABASE … TEMPLATE` (same rows, same ids) and the copy migrated to 0006 by the
   current code; VACUUM ANALYZE both; one `ids.txt` / `users.txt` for both;
2. both APIs with production settings (bench/servers.py), pinned to one core, wrk to another;
   each checked: `/health/ready` revision (0004 / 0006), `todo_api.__file__` under the
   worktree, and a create whose answer has no `change_seq` (before) / has one (after);
3. `create`, `patch`, `toggle`, `mixed` with wrk + bench/lua/scenarios.lua, 32 connections,
   interleaved before, after, before, after; then (unless `--no-stream`) again with one events
   stream open on the after API and every user watched (as if each had a live client), so
   that every write sends a NOTIFY, which the LISTEN connection hears;
4. `results/<stamp>-changes.md` and `.json` (`--smoke`: `results/smoke/`); databases dropped,
   worktrees removed. Exit 1 when a request failed or a check did not hold; never on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.cli import cpu_layout
from bench.database import BenchDatabase, admin_url_from_env
from bench.harness import execute, write_report
from bench.report import Aggregate, git_state, machine_info
from bench.servers import REPO, Server, api_env, request, spawn
from bench.sse import open_idle_stream
from bench.wrk import WrkResult, WrkSettings, ensure_wrk, run_wrk

OLD_COMMIT = "65c1816"
OLD_REVISION, NEW_REVISION = "0004", "0006"
WRITES = ("create", "patch", "toggle", "mixed")
# Reads fire no trigger: `get` and `list` are the controls (what differs between the two
# APIs and databases besides the triggers, and the machine's drift between their runs).
CONTROLS = ("get", "list")
SCENARIOS = (*WRITES, *CONTROLS)
BEFORE, AFTER = "before", "after"
PHASE_PLAIN = "no stream open"
PHASE_STREAM = "every user watched, one events stream open on the after API"
LISTENER_USER = "bench-listener"  # the idle stream's user: nobody writes to it
LISTENER_APPLICATION_NAME = "todo-api-listener"  # todo_api.platform.events
VERIFY_USER = "bench-000001"


def say(message: str) -> None:
    print(f"bench.changes [{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Plan:
    smoke: bool
    users: int
    tasks_per_user: int
    seconds: float
    rounds: int
    warmup: float
    connections: int
    scenarios: tuple[str, ...]
    stream_phase: bool
    stream_scenarios: tuple[str, ...]
    after_ref: str | None
    keep: bool

    @classmethod
    def parse(cls, argv: Sequence[str] | None) -> Plan:
        parser = argparse.ArgumentParser(
            prog="python -m bench.changes", description=__doc__.splitlines()[0]
        )
        parser.add_argument("--smoke", action="store_true", help="tiny data, 1 s runs (< 30 s)")
        parser.add_argument("--duration", type=float, help="seconds per wrk run (12; smoke 1)")
        parser.add_argument("--rounds", type=int, help="runs per scenario per API (2; smoke 1)")
        parser.add_argument("--connections", type=int, default=32)
        parser.add_argument("--users", type=int, help="seeded users (1000; smoke 20)")
        parser.add_argument("--tasks-per-user", type=int, help="seeded tasks each (100; smoke 20)")
        parser.add_argument(
            "--scenarios",
            help=f"comma-separated, of {', '.join((*WRITES, *CONTROLS))} (default: "
            f"{','.join(SCENARIOS)}; smoke: {','.join(WRITES)})",
        )
        parser.add_argument(
            "--no-stream", action="store_true", help="skip the phase with an events stream open"
        )
        parser.add_argument(
            "--after",
            metavar="REF",
            help="run the after API from a worktree of this commit, not the working tree",
        )
        parser.add_argument(
            "--keep", action="store_true", help="keep the databases, worktrees and server logs"
        )
        args = parser.parse_args(argv)
        smoke: bool = args.smoke
        default = WRITES if smoke else SCENARIOS
        scenarios = tuple(filter(None, (args.scenarios or ",".join(default)).split(",")))
        if set(scenarios) - {*WRITES, *CONTROLS} or not scenarios:
            parser.error(f"--scenarios: choose from {', '.join((*WRITES, *CONTROLS))}")
        return cls(
            smoke=smoke,
            users=args.users or (20 if smoke else 1000),
            tasks_per_user=args.tasks_per_user or (20 if smoke else 100),
            seconds=args.duration if args.duration is not None else (1.0 if smoke else 12.0),
            rounds=args.rounds if args.rounds is not None else (1 if smoke else 2),
            warmup=0.0 if smoke else 3.0,
            connections=args.connections,
            scenarios=scenarios,
            stream_phase=not args.no_stream,
            # smoke: only `mixed` (it writes too) with the stream open, to stay under 30 s
            stream_scenarios=("mixed",)
            if smoke
            else tuple(name for name in scenarios if name in WRITES),
            after_ref=args.after,
            keep=args.keep,
        )


# --- worktrees --------------------------------------------------------------------------------


@dataclass
class Worktree:
    """`git worktree add --detach` of `ref` under /tmp; `remove` undoes exactly that."""

    ref: str
    parent: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="todo_bench_wt_")))
    commit: str = ""

    @property
    def path(self) -> Path:
        return self.parent / "tree"

    @property
    def src(self) -> Path:
        return self.path / "src"

    def add(self) -> None:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(self.path),
             self.ref],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        done = subprocess.run(
            ["git", "-C", str(self.path), "rev-parse", "--short", "HEAD"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        self.commit = done.stdout.strip()

    def remove(self) -> None:
        if self.path.exists():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.path)],
                check=False, capture_output=True,
            )  # fmt: skip
        shutil.rmtree(self.parent, ignore_errors=True)


# --- databases --------------------------------------------------------------------------------


def clone(source: BenchDatabase) -> BenchDatabase:
    """A new database with `source`'s rows (and ids): CREATE DATABASE … TEMPLATE."""
    copy = BenchDatabase(source.admin_url)

    async def go() -> None:
        admin = await asyncpg.connect(source.admin_url)
        try:
            for attempt in range(50):  # a just-closed session may linger for a moment
                try:
                    await admin.execute(f'CREATE DATABASE "{copy.name}" TEMPLATE "{source.name}"')
                    return
                except asyncpg.ObjectInUseError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await admin.close()

    asyncio.run(go())
    copy.created = True
    return copy


def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await connection.fetch(sql)]
        finally:
            await connection.close()

    return asyncio.run(go())


def post_json(port: int, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None
    finally:
        connection.close()


class WaitSampler:
    """While a wrk run goes: every `interval` seconds, what the active backends of one
    database wait on (pg_stat_activity; `running` = no wait event: on CPU or in the kernel)."""

    QUERY = (
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'running') AS wait, count(*) "
        "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
        "AND pid <> pg_backend_pid() GROUP BY 1"
    )

    def __init__(self, url: str, *, interval: float = 0.05) -> None:
        self.url = url
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._error: BaseException | None = None

    async def _run(self) -> None:
        try:
            connection = await asyncpg.connect(self.url)
        except (OSError, asyncpg.PostgresError) as error:
            self._error = error
            return
        try:
            while not self._stop.is_set():
                for row in await connection.fetch(self.QUERY):
                    self.counts[row["wait"]] += row["count"]
                self.samples += 1
                await asyncio.sleep(self.interval)
        finally:
            await connection.close()

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# --- the run ----------------------------------------------------------------------------------


class Run:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.server_cpus, wrk_cpus, threads = cpu_layout()
        self.wrk = WrkSettings(ensure_wrk(), plan.connections, threads, wrk_cpus, self.data_dir)
        self.admin_url = admin_url_from_env()
        self.databases: list[BenchDatabase] = []
        self.worktrees: list[Worktree] = []
        self.servers: list[Server] = []
        self.streams: list[socket.socket] = []
        self.checks: list[WrkResult] = []
        self.problems: list[str] = []  # checks that did not hold
        self.phases: dict[str, dict[str, dict[str, Aggregate]]] = {}
        self.verified: dict[str, dict[str, Any]] = {}
        # phase -> scenario -> API -> {"samples": n, "counts": wait -> backend-samples}
        self.waits: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self.sources: dict[str, Path] = {}  # name -> a worktree's src, ahead of the package
        self.urls: dict[str, str] = {}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        pinning = (
            f"servers on cpu {self.server_cpus}, wrk on cpu {wrk_cpus} ({threads} thread)"
            if self.server_cpus
            else "not pinned (one core)"
        )
        self.meta: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "stamp": stamp,
            "mode": "smoke" if plan.smoke else "default",
            "command": " ".join(["python -m bench.changes", *sys.argv[1:]]),
            "connections": plan.connections,
            "seconds": plan.seconds,
            "rounds": plan.rounds,
            "warmup_s": plan.warmup,
            "pinning": pinning,
            "git": git_state(REPO),
        }
        self.machine: dict[str, Any] = {}

    # --- preparation -----------------------------------------------------------------------

    def _env(self, name: str, url: str) -> dict[str, str]:
        env = api_env(url, metrics=True)
        src = self.sources.get(name)
        if src is not None:  # ahead of the installed (editable) package
            env["PYTHONPATH"] = str(src)
        else:
            env.pop("PYTHONPATH", None)
        return env

    def prepare(self) -> None:
        plan = self.plan
        old = Worktree(OLD_COMMIT)
        self.worktrees.append(old)
        old.add()
        self.sources[BEFORE] = old.src
        self.meta["before"] = {"commit": old.commit, "worktree": str(old.path)}
        if plan.after_ref:
            new = Worktree(plan.after_ref)
            self.worktrees.append(new)
            new.add()
            self.sources[AFTER] = new.src
            self.meta["after"] = {"commit": new.commit, "worktree": str(new.path)}
        else:
            self.meta["after"] = {"commit": self.meta["git"], "worktree": None}
        say(f"worktree of {old.commit} at {old.path}")

        before = BenchDatabase(self.admin_url)
        self.databases.append(before)
        before.create()
        started = time.perf_counter()
        before.migrate(self._env(BEFORE, before.url), self.workdir)  # the old code's own upgrade
        say(f"{before.name}: old `todo_api db upgrade` in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        before.seed(plan.users, plan.users * plan.tasks_per_user)
        decorated = before.decorate()
        say(f"seeded in {time.perf_counter() - started:.1f} s: {decorated}")
        after = clone(before)
        self.databases.append(after)
        started = time.perf_counter()
        after.migrate(self._env(AFTER, after.url), self.workdir)
        say(f"{after.name}: copy migrated to head in {time.perf_counter() - started:.1f} s")
        for db in (before, after):
            db.analyze()
        before.write_samples(self.data_dir)
        self.urls = {BEFORE: before.url, AFTER: after.url}
        self.meta["data"] = (
            f"{plan.users:,} users x {plan.tasks_per_user} tasks (seeded at {OLD_REVISION}, "
            f"then copied; the copy migrated to {NEW_REVISION}); {decorated['with_due']:,} with "
            f"a due date, {decorated['labels']:,} labels, {decorated['task_labels']:,} task labels"
        )
        self.meta["databases"] = {BEFORE: before.name, AFTER: after.name}

    def start(self, names: Sequence[str]) -> list[Server]:
        """Spawned together (start-up is not what is measured), then each checked."""
        envs = {name: self._env(name, self.urls[name]) for name in names}
        servers = [
            spawn(name, "api", envs[name], cpus=self.server_cpus, workdir=self.workdir)
            for name in names
        ]
        self.servers += servers
        for server in servers:
            server.wait_ready()
            self.verify(server, envs[server.name])
        return servers

    def verify(self, server: Server, env: dict[str, str]) -> None:
        """The right code on the right schema: its revision, where `todo_api` comes from, and
        whether a create answers with `change_seq`."""
        expected_revision = OLD_REVISION if server.name == BEFORE else NEW_REVISION
        status, ready = request(server.port, "GET", "/health/ready")
        database = (ready or {}).get("database", {})
        module = subprocess.run(
            [sys.executable, "-c", "import todo_api; print(todo_api.__file__)"],
            env=env, cwd=self.workdir, capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        created_status, created = post_json(
            server.port, f"/api/{VERIFY_USER}/tasks", {"title": "bench.changes check"}
        )
        has_seq = isinstance(created, dict) and "change_seq" in created
        facts = {
            "revision": database.get("revision"),
            "head_revision": database.get("head_revision"),
            "todo_api_module": module,
            "create_status": created_status,
            "create_has_change_seq": has_seq,
        }
        self.verified[server.name] = facts
        source = self.sources.get(server.name)
        wanted_module = str(source) if source else str(REPO / "src")
        checks = {
            "ready 200": status == 200,
            f"revision {expected_revision}": facts["revision"] == expected_revision
            and facts["head_revision"] == expected_revision,
            f"todo_api from {wanted_module}": module.startswith(wanted_module),
            "create 201": created_status == 201,
            "change_seq " + ("absent" if server.name == BEFORE else "present"): has_seq
            == (server.name == AFTER),
        }
        failed = [what for what, ok in checks.items() if not ok]
        if failed:
            raise RuntimeError(f"{server.name}: checks failed: {failed}; {facts}")
        say(
            f"{server.name}: revision {facts['revision']}, todo_api from {module}, "
            f"create {'with' if has_seq else 'without'} change_seq"
        )

    # --- load ------------------------------------------------------------------------------

    def _wrk(
        self, server: Server, scenario: str, seconds: float, note: str = "", phase: str = ""
    ) -> WrkResult:
        sampler = WaitSampler(self.urls[server.name])
        with sampler:
            result = run_wrk(
                self.wrk, target=server.name, base_url=server.base_url, scenario=scenario,
                seconds=seconds,
            )  # fmt: skip
        if phase:
            waits = self.waits.setdefault(phase, {}).setdefault(scenario, {})
            mine = waits.setdefault(server.name, {"samples": 0, "counts": Counter()})
            mine["samples"] += sampler.samples
            mine["counts"].update(sampler.counts)
        self.checks.append(result)
        flag = "" if result.ok else f"  <-- {result.non2xx} non-2xx, {result.socket_errors} sock"
        say(
            f"  {scenario:<7} {server.name:<7} {result.rps:9,.0f} req/s  "
            f"p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms{note}{flag}"
        )
        return result

    def phase(self, phase: str, targets: list[Server], scenarios: Sequence[str]) -> None:
        results: dict[str, dict[str, Aggregate]] = {}
        for scenario in scenarios:
            runs: dict[str, list[WrkResult]] = {server.name: [] for server in targets}
            for _ in range(self.plan.rounds):
                for server in targets:  # interleaved: before, after, before, after
                    result = self._wrk(server, scenario, self.plan.seconds, phase=phase)
                    runs[server.name].append(result)
            results[scenario] = {name: Aggregate.of(r) for name, r in runs.items()}
        self.phases[phase] = results

    def listeners(self, url: str) -> int:
        rows = fetch(
            url,
            "SELECT count(*) AS n FROM pg_stat_activity "
            f"WHERE application_name = '{LISTENER_APPLICATION_NAME}' "
            "AND datname = current_database()",
        )
        return int(rows[0]["n"])

    def open_stream(self, after: Server) -> int:
        """One idle events stream on the after API; waits for its LISTEN connection."""
        self.streams.append(open_idle_stream(after.port, f"/api/{LISTENER_USER}/events"))
        deadline = time.monotonic() + 10
        while (count := self.listeners(self.urls[AFTER])) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Every user watched for the phase (a process id of nobody's, expiring in a day): each
        # write NOTIFYs, the worst case (every writer has a live client somewhere).
        fetch(
            self.urls[AFTER],
            "INSERT INTO event_watches (user_id, process_id, expires_at) "
            "SELECT id, gen_random_uuid(), now() + interval '1 day' FROM users RETURNING 1",
        )
        return count

    def run(self) -> None:
        plan = self.plan
        self.machine = machine_info(self.databases_version())
        self.prepare()
        targets = self.start([BEFORE, AFTER])
        after = targets[1]
        for server in targets:
            if plan.warmup:
                self._wrk(server, "mixed", plan.warmup, note="  (warm-up)")
        listening = self.listeners(self.urls[AFTER])
        self.meta["listeners_during_plain_phase"] = listening
        if listening:
            self.problems.append(f"the after API listens already ({listening} connections)")
        say(f"phase: {PHASE_PLAIN} ({', '.join(plan.scenarios)})")
        self.phase(PHASE_PLAIN, targets, plan.scenarios)
        if plan.stream_phase:
            count = self.open_stream(after)
            self.meta["listeners_during_stream_phase"] = count
            if count != 1:
                self.problems.append(f"expected 1 LISTEN connection on the after API, {count}")
            say(
                f"phase: {PHASE_STREAM} ({', '.join(plan.stream_scenarios)}; LISTEN "
                f"connections of the after API: {count})"
            )
            self.phase(PHASE_STREAM, targets, plan.stream_scenarios)
            after_count = self.listeners(self.urls[AFTER])
            if after_count != 1:
                self.problems.append(f"LISTEN connection gone during the phase ({after_count})")
        self.meta["after_change_seq"] = fetch(
            self.urls[AFTER],
            "SELECT sum(change_seq)::bigint AS users_change_seq_sum, "
            "(SELECT count(*) FROM tombstones) AS tombstones FROM users",
        )[0]
        self.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    def databases_version(self) -> str:
        rows = fetch(self.admin_url, "SELECT version() AS v")
        return str(rows[0]["v"])

    def close(self) -> None:
        for sock in self.streams:
            sock.close()
        for server in self.servers:  # all at once: each waits for its graceful shutdown
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            server.stop()
        if self.plan.keep:
            for db in self.databases:
                say(f"kept database {db.name}")
            for tree in self.worktrees:
                say(f"kept worktree {tree.path}")
            return
        for db in self.databases:
            db.drop()
        for tree in self.worktrees:
            tree.remove()

    # --- report ----------------------------------------------------------------------------

    @property
    def failures(self) -> list[WrkResult]:
        return [r for r in self.checks if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "machine": self.machine,
            "verified": self.verified,
            "phases": {
                phase: {
                    scenario: {name: asdict(agg) for name, agg in by_server.items()}
                    | {"ratio_rps": _ratio(by_server)}
                    for scenario, by_server in scenarios.items()
                }
                for phase, scenarios in self.phases.items()
            },
            "waits": {
                phase: {
                    scenario: {
                        name: {"samples": w["samples"], "counts": dict(w["counts"].most_common())}
                        for name, w in by_server.items()
                    }
                    for scenario, by_server in scenarios.items()
                }
                for phase, scenarios in self.waits.items()
            },
            "checks": [asdict(r) | {"ok": r.ok} for r in self.checks],
            "problems": self.problems,
            "ok": not self.failures and not self.problems,
        }

    def render(self) -> str:
        meta, machine = self.meta, self.machine
        before, after = meta.get("before", {}), meta.get("after", {})
        lines = [
            f"# Change sequence: its cost on writes — {meta['started']}",
            "",
            f"- **before**: {before.get('commit', OLD_COMMIT)} (schema {OLD_REVISION}, "
            f"`PYTHONPATH=<worktree>/src python -m todo_api serve`); **after**: "
            f"{after.get('commit')} (schema {NEW_REVISION}"
            + (", from a worktree" if after.get("worktree") else ", the installed package")
            + ")",
            f"- command: `{meta['command']}`; mode **{meta['mode']}**; {meta['connections']} "
            f"connections; {meta['seconds']:g} s per run x {meta['rounds']} round(s), "
            "interleaved before, after, before, after; mean of the rounds; "
            + (
                f"each API warmed up with {meta['warmup_s']:g} s of `mixed` first"
                if meta["warmup_s"]
                else "no warm-up"
            ),
            f"- data: {meta.get('data', '?')}; both databases on the same PostgreSQL",
            "- settings: APP_ENV=production, AUTH_MODE=none, ACCESS_LOG=false, "
            "METRICS_ENABLED=true, CURSOR_SECRET set, one worker (bench/servers.py)",
            f"- machine: {machine.get('cpu_model')}, {machine.get('cores')} cores "
            f"({meta['pinning']}); {machine.get('postgresql')}; Python {machine.get('python')}; "
            f"load average {machine.get('load_average_at_start')} at start, "
            f"{machine.get('load_average_at_end', '?')} at end",
        ]
        for name, facts in self.verified.items():
            lines.append(
                f"- checked {name}: revision {facts['revision']}, `todo_api` from "
                f"`{facts['todo_api_module']}`, a create answers "
                f"{'with' if facts['create_has_change_seq'] else 'without'} `change_seq`"
            )
        seq = meta.get("after_change_seq")
        if seq:
            lines.append(
                f"- after the run, the after database's users.change_seq sum to "
                f"{seq['users_change_seq_sum']:,} (one per write transaction); "
                f"{seq['tombstones']} tombstones"
            )
        lines.append("")
        notes = {
            PHASE_PLAIN: "No events stream is open: the after API has no LISTEN connection, "
            "and no user is watched, so this is the cost of the triggers (the counter row "
            "update and the watch check; no NOTIFY) and of the wider rows and responses. "
            "`get` and `list` fire no trigger: they are the controls (what differs between "
            "the two APIs and databases besides the triggers, and the machine's drift).",
            PHASE_STREAM: "One `/events` stream is open on the after API and every user has "
            "a live watch (as if each had a client streaming somewhere): every write sends a "
            "NOTIFY, which the stream's LISTEN connection receives and the API process parses. "
            "The before API is unchanged (it has no streams).",
        }
        for phase, scenarios in self.phases.items():
            lines += [f"## {phase[:1].upper()}{phase[1:]}", "", notes.get(phase, ""), ""]
            lines += [
                "| scenario | before req/s | before p50 / p99 ms | after req/s "
                "| after p50 / p99 ms | after/before req/s | after/before p50 | non-2xx |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for scenario, by_server in scenarios.items():
                b, a = by_server[BEFORE], by_server[AFTER]
                label = f"{scenario} (read: control)" if scenario in CONTROLS else scenario
                lines.append(
                    f"| {label} | {b.rps:,.0f} | {b.p50_ms:.1f} / {b.p99_ms:.1f} "
                    f"| {a.rps:,.0f} | {a.p50_ms:.1f} / {a.p99_ms:.1f} "
                    f"| **{_ratio(by_server):.2f}x** "
                    f"| {a.p50_ms / b.p50_ms if b.p50_ms else 0:.2f}x "
                    f"| {b.non2xx + a.non2xx} |"
                )
            lines.append("")
        lines += [
            "## What the database's active backends waited on",
            "",
            "pg_stat_activity of the API's database every 50 ms during the measured runs: "
            "the mean number of active backends, and the share of backend-samples per wait "
            "event (`running`: none, on CPU or in the kernel). `Lock:object` is the "
            "lock a transaction that queued a NOTIFY takes at commit (PreCommit_Notify: one "
            "for the whole cluster, held until the commit is done), `Lock:tuple` / "
            "`Lock:transactionid` a row lock (the user's row), `IO:WALSync` / `LWLock:WALWrite` "
            "the commit's WAL flush.",
            "",
            "| phase | scenario | API | active | top waits |",
            "|---|---|---|---:|---|",
        ]
        for phase_name, waits_by_scenario in self.waits.items():
            for scenario_name, waits_by_api in waits_by_scenario.items():
                for name, w in waits_by_api.items():
                    total = sum(w["counts"].values())
                    top = ", ".join(
                        f"{wait} {100 * n / total:.0f}%" for wait, n in w["counts"].most_common(4)
                    )
                    active = total / w["samples"] if w["samples"] else 0.0
                    lines.append(
                        f"| {phase_name} | {scenario_name} | {name} | {active:.1f} | {top} |"
                    )
        lines.append("")
        lines += ["## Every run, in the order run", ""]
        lines += ["| phase | scenario | round | API | req/s | p50 ms | p99 ms |"]
        lines.append("|---|---|---:|---|---:|---:|---:|")
        for phase, scenarios in self.phases.items():
            for scenario, by_server in scenarios.items():
                for round_ in range(self.plan.rounds):
                    for name, agg in by_server.items():
                        run = agg.runs[round_]
                        lines.append(
                            f"| {phase} | {scenario} | {round_ + 1} | {name} "
                            f"| {run['rps']:,.0f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} |"
                        )
        lines += ["", "## Errors", ""]
        if self.failures or self.problems:
            lines += [
                f"- {r.target} {r.scenario}: {r.non2xx} non-2xx (last {r.last_bad_status}), "
                f"{r.socket_errors} socket errors"
                for r in self.failures
            ]
            lines += [f"- {problem}" for problem in self.problems]
        else:
            lines.append(
                f"None: all {len(self.checks)} wrk runs (warm-ups included) had only 2xx answers "
                "and no socket errors; every check held."
            )
        return "\n".join(lines) + "\n"

    def logs(self) -> list[tuple[str, str]]:
        return [(f"last lines of {server.name}'s log", server.log()) for server in self.servers]

    def write(self) -> Path:
        stem = f"{self.meta['stamp']}-changes"
        return write_report(stem, self.render(), self.to_json(), smoke=self.plan.smoke)


def _ratio(by_server: dict[str, Aggregate]) -> float:
    before = by_server[BEFORE].rps
    return by_server[AFTER].rps / before if before else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    plan = Plan.parse(argv)
    started = time.perf_counter()
    run = execute(lambda workdir: Run(plan, workdir), name="bench.changes", keep=plan.keep)
    path = run.write()
    print(run.render())
    say(f"report: {path.relative_to(REPO)} (+ .json); {time.perf_counter() - started:.0f} s")
    if run.failures or run.problems:
        print(
            f"bench.changes: {len(run.failures)} failed wrk run(s), problems: {run.problems}",
            file=sys.stderr,
        )
        return 1
    if plan.smoke:
        streamed = len(plan.stream_scenarios) if plan.stream_phase else 0
        expected = (len(plan.scenarios) + streamed) * plan.rounds * 2
        assert len(run.checks) == expected, (len(run.checks), expected)
        assert all(r.requests > 0 for r in run.checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
