"""`python -m bench.explain DATABASE_URL [USER ...]`: EXPLAIN (ANALYZE, BUFFERS) of the API's
real listing statements on a benchmark database (built by `python -m bench.migration
--keep-database`, or `python -m bench --large --keep-database`).

The SQL is the API's own: `todo_api.tasks.repository._page(...)` compiled for asyncpg, with
the parameters `TaskFilter.parameters` computes. Each case is PREPAREd (as asyncpg does) and
EXECUTEd 7 times, so that the plan shown is the one PostgreSQL settles on past the 5 custom
plans; then the same with `plan_cache_mode = force_generic_plan` and `force_custom_plan`.
Writes `results/<time>-explain.md`.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from datetime import date, datetime
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from bench.database import SEARCH_WORDS
from bench.report import RESULTS
from todo_api.platform.http.sorting import Sort
from todo_api.tasks.filters import DueFilter, TaskFilter
from todo_api.tasks.repository import ListingShape, _page
from todo_api.tasks.sorting import DEFAULT_SORT, TaskSortField

DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime | date):
        return f"'{value.isoformat()}'"
    if isinstance(value, uuid.UUID):
        return f"'{value}'"
    return "'" + str(value).replace("'", "''") + "'"


def statement(sort: Any, filters: TaskFilter, user_id: str) -> tuple[str, list[Any]]:
    compiled = _page(ListingShape(sort, None)).compile(dialect=DIALECT)
    parameters = {"owner_id": user_id, **filters.parameters("postgresql", "UTC"), "n": 51}
    parameters["param_1"] = 0  # the literal 0 of `labels_any` (count > 0)
    names = compiled.positiontup or []
    return " ".join(str(compiled).split()), [parameters[name] for name in names]


SUMMARY = re.compile(
    r"^\s*(->\s*)?([A-Z][A-Za-z ]+?(Scan|Join|Loop|Sort|Limit|Aggregate|"
    r"BitmapAnd|BitmapOr|Append|Materialize|Result|Heap Scan|Index Scan)"
    r"[^(]*)"
)


def shape_of(plan: list[str]) -> str:
    nodes = []
    for line in plan:
        match = SUMMARY.match(line)
        if match and "SubPlan" not in line:
            nodes.append(match.group(2).strip())
    return " > ".join(nodes[:6])


async def explain(
    connection: asyncpg.Connection, name: str, sql: str, args: list[Any]
) -> dict[str, Any]:
    values = ", ".join(literal(value) for value in args)
    out: dict[str, Any] = {"name": name}
    for mode in ("auto", "force_generic_plan", "force_custom_plan"):
        await connection.execute(f"SET plan_cache_mode = {mode}")
        await connection.execute("DEALLOCATE ALL")
        await connection.execute(f"PREPARE q AS {sql}")
        for _ in range(7):
            await connection.execute(f"EXECUTE q({values})")
        rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE q({values})")
        plan = [r[0] for r in rows]
        timing = next((line for line in plan if line.startswith("Execution Time")), "")
        started = time.perf_counter()
        for _ in range(5):
            await connection.execute(f"EXECUTE q({values})")
        out[mode] = {
            "plan": plan,
            "execution_ms": float(timing.split(":")[1].split()[0]) if timing else None,
            "wall_ms": round(1000 * (time.perf_counter() - started) / 5, 2),
            "shape": shape_of(plan),
        }
    await connection.execute("RESET plan_cache_mode")
    return out


async def main(url: str, users: list[str]) -> None:
    connection = await asyncpg.connect(url, statement_cache_size=0)
    results = []
    try:
        for user in users:
            inbox = await connection.fetchval(
                "SELECT id FROM lists WHERE user_id = $1 AND is_inbox", user
            )
            label = await connection.fetchval(
                "SELECT label_id FROM task_labels WHERE user_id = $1 GROUP BY label_id "
                "ORDER BY count(*) DESC LIMIT 1",
                user,
            )
            count = await connection.fetchval("SELECT count(*) FROM tasks WHERE user_id = $1", user)
            cases = [
                ("due=overdue", DEFAULT_SORT, TaskFilter(due=DueFilter.OVERDUE)),
                ("due=today", DEFAULT_SORT, TaskFilter(due=DueFilter.TODAY)),
                ("labels_any=<label>", DEFAULT_SORT, TaskFilter(labels_any=(label,))),
                ("due=overdue&labels_any=<label>", DEFAULT_SORT,
                 TaskFilter(due=DueFilter.OVERDUE, labels_any=(label,))),
                ("list_id=<inbox>&sort=position", Sort(TaskSortField.POSITION, False),
                 TaskFilter(list_id=inbox)),
                ("sort=due", Sort(TaskSortField.DUE, False), TaskFilter()),
                ("priority=high", DEFAULT_SORT, TaskFilter(priorities=(3,))),
                *[(f"q={word} ({kind})", DEFAULT_SORT, TaskFilter(q=word))
                  for kind, word in SEARCH_WORDS.items()],
            ]  # fmt: skip
            for name, sort, filters in cases:
                sql, args = statement(sort, filters, user)
                result = await explain(connection, name, sql, args)
                result["user"] = f"{user} ({count:,} tasks)"
                results.append(result)
                print(
                    f"{user:<14} {name:<34} auto {result['auto']['execution_ms']} ms "
                    f"[{result['auto']['shape']}]  generic "
                    f"{result['force_generic_plan']['execution_ms']} ms  custom "
                    f"{result['force_custom_plan']['execution_ms']} ms",
                    flush=True,
                )
    finally:
        await connection.close()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [f"# EXPLAIN (ANALYZE, BUFFERS) of the API's listing statements ({stamp})", ""]
    lines += [
        "| user | case | auto (7th run) ms | generic ms | custom ms | auto plan |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['user']} | `{r['name']}` | {r['auto']['execution_ms']} | "
            f"{r['force_generic_plan']['execution_ms']} | {r['force_custom_plan']['execution_ms']}"
            f" | {r['auto']['shape']} |"
        )
    lines.append("")
    for r in results:
        for mode in ("auto", "force_generic_plan", "force_custom_plan"):
            lines += [
                f"## {r['user']} `{r['name']}` — {mode}",
                "",
                "```",
                *r[mode]["plan"],
                "```",
                "",
            ]
    path = RESULTS / f"{stamp}-explain.md"
    path.write_text("\n".join(lines))
    print(f"report: {path}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:] or ["bench-000500", "bench-big"]))
