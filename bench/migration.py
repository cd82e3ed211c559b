"""`python -m bench.migration`: migration 0004 on the benchmark's 1,000,000-task database.

Builds the data `--large` ends with (bench-000001..1000 with 900 tasks each, bench-big with
100,000) in revision 0003's shape (before lists, labels, due dates, priority and positions),
then runs the real `todo_api db upgrade` (batched, on a direct connection) and times it while
another connection reads an unrelated user's page every 50 ms: the longest read is the worst
stall a reader saw; reads still waiting after 0.2 s have their blockers recorded. Then it
seeds the task model's data (priorities, due dates, labels), checks `users.task_count`, and
writes `results/<time>-migration.md` and `.json`. `--keep-database` keeps it (for EXPLAIN).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.database import SEED_REVISION, BenchDatabase, admin_url_from_env
from bench.report import RESULTS, git_state
from bench.servers import REPO, api_env

USERS, TASKS_PER_USER, BIG_TASKS = 1000, 900, 100_000


def say(message: str) -> None:
    print(f"bench.migration [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migration")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--tasks-per-user", type=int, default=TASKS_PER_USER)
    parser.add_argument("--big-user-tasks", type=int, default=BIG_TASKS)
    parser.add_argument(
        "--statement-timeout",
        help="DB_STATEMENT_TIMEOUT for the upgrade (the API's default, 30 s, bounds every "
        "statement of the migration too)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="todo_bench_migration_"))
    db = BenchDatabase(admin_url_from_env())
    env = api_env(db.url, metrics=True)
    if args.statement_timeout:
        env["DB_STATEMENT_TIMEOUT"] = args.statement_timeout
    result: dict[str, object] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git_state(REPO),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "statement_timeout": args.statement_timeout or "default (30 s)",
    }
    try:
        db.create()
        say(f"created {db.name}; migrating to {SEED_REVISION}")
        db.migrate(env, workdir, revision=SEED_REVISION)
        started = time.perf_counter()
        db.seed_big_user_0003(args.big_user_tasks)
        db.seed_0003(args.users, args.users * args.tasks_per_user)
        db.analyze()
        tasks = db.count_tasks()
        result["tasks"] = tasks
        result["seed_s"] = round(time.perf_counter() - started, 1)
        say(f"seeded {tasks:,} tasks at {SEED_REVISION} in {result['seed_s']} s; upgrading")
        watched = db.migrate_watched(env, workdir)
        result["migration"] = watched
        say(
            f"migration to head: {watched['seconds']} s; worst read of another user "
            f"{watched['max_read_ms']} ms at {watched['max_read_at_s']} s "
            f"({watched['reads']} reads, p99 {watched['p99_read_ms']} ms)"
        )
        for line in watched["log"]:
            say(f"  | {line}")
        started = time.perf_counter()
        result["decorated"] = db.decorate()
        db.analyze()
        result["decorate_s"] = round(time.perf_counter() - started, 1)
        say(f"task model data: {result['decorated']} in {result['decorate_s']} s")
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["database"] = db.name if args.keep_database else None
    finally:
        if args.keep_database:
            say(f"kept database {db.name} ({db.url})")
        else:
            db.drop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{stamp}-migration.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    m = result["migration"]
    md = [
        f"# Migration 0004 on {result['tasks']:,} tasks ({result['started']})",
        "",
        f"- git: {result['git']}",
        f"- load average at start {result['load_average_at_start']}, at end "
        f"{result['load_average_at_end']}",
        f"- DB_STATEMENT_TIMEOUT for the upgrade: {result['statement_timeout']}",
        f"- seed at {SEED_REVISION}: {result['seed_s']} s",
        f"- `todo_api db upgrade` (0003 -> head): **{m['seconds']} s**",  # type: ignore[index]
        f"- reader of other users every 50 ms: {m['reads']} reads, max "  # type: ignore[index]
        f"**{m['max_read_ms']} ms** at {m['max_read_at_s']} s, p99 {m['p99_read_ms']} ms, "  # type: ignore[index]
        f"max gap between read starts {m['max_gap_ms']} ms",  # type: ignore[index]
        f"- reads over 100 ms: {m['slow_reads']}",  # type: ignore[index]
        f"- blockers of reads waiting > 0.2 s: {m['blocked']}",  # type: ignore[index]
        "",
        "Migration log:",
        "",
        *[f"    {line}" for line in m["log"]],  # type: ignore[index]
        "",
    ]
    path.with_suffix(".md").write_text("\n".join(md))
    say(f"report: {path.relative_to(REPO)} (+ .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
