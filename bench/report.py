"""Machine facts, targets, and the markdown/JSON report written to bench/results/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.wrk import WrkResult

RESULTS = Path(__file__).resolve().parent / "results"

# The targets: reported, never asserted.
MIN_RATIO = 0.5
MAX_P99_MS = 50.0
MAX_RSS_MB = 150.0
MAX_GROWTH = 0.10
MAX_READY_S = 2.0
MIN_SCALE_RATIO = 0.8


@dataclass
class Aggregate:
    """One scenario on one server: the rounds' mean req/s, p50 and p99; summed error counts."""

    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    runs: list[dict[str, Any]]

    @classmethod
    def of(cls, runs: list[WrkResult]) -> Aggregate:
        return cls(
            rps=statistics.fmean(r.rps for r in runs),
            p50_ms=statistics.fmean(r.p50_ms for r in runs),
            p99_ms=statistics.fmean(r.p99_ms for r in runs),
            non2xx=sum(r.non2xx for r in runs),
            socket_errors=sum(r.socket_errors for r in runs),
            runs=[asdict(r) | {"rps": round(r.rps, 1)} for r in runs],
        )


@dataclass
class Target:
    what: str
    value: str
    limit: str
    met: bool


@dataclass
class Report:
    meta: dict[str, Any]
    machine: dict[str, Any]
    # phase -> scenario -> server name -> aggregate
    phases: dict[str, dict[str, dict[str, Aggregate]]] = field(default_factory=dict)
    startup_s: list[float] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    checks: list[WrkResult] = field(default_factory=list)  # every wrk run, for the error gate
    targets: list[Target] = field(default_factory=list)
    profile: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[WrkResult]:
        return [r for r in self.checks if not r.ok]


def machine_info(postgres_version: str) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "postgresql": postgres_version.split(" on ")[0],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_state(repo: Path) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src")
    return f"{commit}{' + uncommitted src changes' if dirty else ''}"


def evaluate_targets(report: Report, api: str, reference: str) -> None:
    targets: list[Target] = []
    for phase, scenarios in report.phases.items():
        for scenario, by_server in scenarios.items():
            a, r = by_server.get(api), by_server.get(reference)
            if a and r and r.rps:
                ratio = a.rps / r.rps
                targets.append(
                    Target(
                        f"{phase} {scenario}: API/reference",
                        f"{ratio:.2f}x",
                        ">= 0.5x",
                        ratio >= MIN_RATIO,
                    )
                )
            if a:
                targets.append(
                    Target(
                        f"{phase} {scenario}: API p99",
                        f"{a.p99_ms:.1f} ms",
                        "<= 50 ms",
                        a.p99_ms <= MAX_P99_MS,
                    )
                )
    if "1M" in report.phases and "100k" in report.phases:
        for scenario in ("get", "list"):
            small = report.phases["100k"].get(scenario, {}).get(api)
            large = report.phases["1M"].get(scenario, {}).get(api)
            if small and large and small.rps:
                ratio = large.rps / small.rps
                targets.append(
                    Target(
                        f"{scenario}: 1M / 100k tasks",
                        f"{ratio:.2f}x",
                        ">= 0.8x",
                        ratio >= MIN_SCALE_RATIO,
                    )
                )
    for phase, scenarios in report.phases.items():
        deep, shallow = scenarios.get("list-deep", {}).get(api), scenarios.get("list", {}).get(api)
        if deep and shallow and shallow.rps:
            ratio = deep.rps / shallow.rps
            targets.append(
                Target(
                    f"{phase} list-deep / list",
                    f"{ratio:.2f}x",
                    ">= 0.8x",
                    ratio >= MIN_SCALE_RATIO,
                )
            )
    memory = report.memory.get(api, {})
    if "peak_mb" in memory:
        targets.append(
            Target(
                "API peak RSS",
                f"{memory['peak_mb']:.1f} MB",
                "<= 150 MB",
                memory["peak_mb"] <= MAX_RSS_MB,
            )
        )
    if "growth" in memory:
        growth = memory["growth"]
        targets.append(
            Target(
                "API RSS growth, run 2 vs run 1",
                f"{100 * growth:+.1f}%",
                "<= +10%",
                growth <= MAX_GROWTH,
            )
        )
    if report.startup_s:
        median = statistics.median(report.startup_s)
        targets.append(
            Target("start to ready (median)", f"{median:.2f} s", "<= 2 s", median <= MAX_READY_S)
        )
    report.targets = targets


def _ms(value: float) -> str:
    return f"{value:.1f}"


def render(report: Report, servers: list[str]) -> str:
    meta, machine = report.meta, report.machine
    api, reference = servers[0], servers[-1]
    lines = [
        f"# todo-api benchmark — {meta['started']}",
        "",
        f"- mode: **{meta['mode']}**; {meta['connections']} connections; "
        f"{meta['seconds']} s per run x {meta['rounds']} rounds, servers interleaved "
        f"({', '.join(servers)}), mean of the rounds",
        f"- code: {meta['git']}; data: {meta['data']}",
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores "
        f"({meta['pinning']}); {machine['postgresql']}; Python {machine['python']}; "
        f"load average {machine['load_average_at_start']} at start, "
        f"{machine.get('load_average_at_end', '?')} at end",
    ]
    migration = meta.get("migration")
    if migration:
        lines.append(
            f"- migration 0003 -> head (`todo_api db upgrade`, batched) on "
            f"{migration['tasks']:,} tasks: {migration['seconds']} s; a reader of other users "
            f"every 50 ms ({migration['reads']} reads) waited at most "
            f"{migration['max_read_ms']} ms (at {migration['max_read_at_s']} s)"
        )
    lines.append("")
    for phase, scenarios in report.phases.items():
        lines += [f"## {phase}", ""]
        head = "| scenario |"
        rule = "|---|"
        for name in servers:
            head += f" {name} req/s | p50 ms | p99 ms | non-2xx | sock err |"
            rule += "---:|---:|---:|---:|---:|"
        head += " API/ref |"
        rule += "---:|"
        if len(servers) == 3:
            head += " metrics on/off |"
            rule += "---:|"
        lines += [head, rule]
        for scenario, by_server in scenarios.items():
            row = f"| {scenario} |"
            for name in servers:
                a = by_server[name]
                row += f" {a.rps:,.0f} | {_ms(a.p50_ms)} | {_ms(a.p99_ms)} |"
                row += f" {a.non2xx} | {a.socket_errors} |"
            ratio = by_server[api].rps / by_server[reference].rps if by_server[reference].rps else 0
            row += f" **{ratio:.2f}x** |"
            if len(servers) == 3:
                on, off = by_server[api].rps, by_server[servers[1]].rps
                row += f" {on / off if off else 0:.2f}x |"
            lines.append(row)
        lines.append("")
    if report.startup_s:
        samples = ", ".join(f"{s:.2f}" for s in report.startup_s)
        median = statistics.median(report.startup_s)
        lines += [
            "## Start to ready",
            "",
            "Spawn of `python -m todo_api serve` -> first 200 on `/health/ready` "
            f"(migrated database, AUTO_MIGRATE=true): median **{median:.2f} s** "
            f"(samples: {samples} s).",
            "",
        ]
    if report.memory:
        lines += ["## Memory (VmHWM = peak RSS of the serving process)", ""]
        lines += ["| server | reading | VmHWM MB | VmRSS MB |", "|---|---|---:|---:|"]
        for name, info in report.memory.items():
            for reading in info.get("readings", []):
                lines.append(
                    f"| {name} | {reading['when']} | {reading['VmHWM'] / 1024:.1f} "
                    f"| {reading['VmRSS'] / 1024:.1f} |"
                )
        growth = report.memory.get(api, {}).get("growth")
        if growth is not None:
            lines += [
                "",
                f"API peak RSS growth between the two mixed runs: **{100 * growth:+.1f}%**.",
            ]
        lines.append("")
    if report.targets:
        lines += ["## Targets (reported, not asserted)", "", "| target | value | goal | met |"]
        lines.append("|---|---:|---|:-:|")
        lines += [
            f"| {t.what} | {t.value} | {t.limit} | {'yes' if t.met else '**no**'} |"
            for t in report.targets
        ]
        lines.append("")
    if report.profile:
        lines += ["## Profiles", ""]
        lines += [f"- {scenario}: `{path}`" for scenario, path in report.profile.items()]
        lines.append("")
    lines += _errors(report)
    return "\n".join(lines) + "\n"


def _errors(report: Report) -> list[str]:
    failures = report.failures
    lines = ["## Errors", ""]
    if failures:
        lines += [
            f"- {r.target} {r.scenario}: {r.non2xx} non-2xx (last status {r.last_bad_status}), "
            f"{r.socket_errors} socket errors, {r.requests} requests"
            for r in failures
        ]
    else:
        lines.append(
            f"None: all {len(report.checks)} wrk runs had only 2xx answers and no socket errors."
        )
    return lines


def latency_phase(path: str, connections: int) -> str:
    """The key of one (path, connections) pair in `Report.phases` (latency mode)."""
    return f"{path}, {connections} connection{'' if connections == 1 else 's'}"


LATENCY_PATHS = {
    "direct": "Direct to PostgreSQL",
    "pgbouncer": "Through PgBouncer (pool_mode=transaction)",
}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def render_latency(report: Report, servers: list[str]) -> str:
    """Latency mode: p50/p99 per scenario and connection count, per path, API next to reference."""
    meta, machine, info = report.meta, report.machine, report.meta["latency"]
    api, reference = servers[0], servers[-1]
    delay = info["delay_ms_one_way"]
    check = info["self_check"]
    lines = [
        f"# todo-api latency benchmark — {meta['started']}",
        "",
        f"- mode: **latency**; **+{delay:g} ms each way** between the servers and the database "
        f"(a delaying TCP proxy, `bench/delay.py`): {2 * delay:g} ms per database round trip",
        f"- {meta['seconds']} s per run x {meta['rounds']} round(s), each after a "
        f"{info['warmup_s']:g} s warm-up of the same load; servers interleaved "
        f"({', '.join(servers)}); connections: {', '.join(map(str, info['levels']))}",
        f"- code: {meta['git']}; data: {meta['data']}",
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores "
        f"({meta['pinning']}); {machine['postgresql']}; Python {machine['python']}; "
        f"load average {machine['load_average_at_start']} at start, "
        f"{machine.get('load_average_at_end', '?')} at end",
        f"- proxy self-check: round trip {check['round_trip_ms']['median']:.2f} ms median "
        f"(min {check['round_trip_ms']['min']:.2f}) for {2 * delay:g} ms configured "
        f"({check['timer']} wake-ups)",
        "",
        "Latencies in ms, HTTP request to response as wrk sees it. **API/ref**: the API's "
        "latency over the reference's (1.00x = as fast, higher = slower). **API - ref**: the "
        "API's extra milliseconds at the median; at 1 connection, divided by the round trip "
        f"({2 * delay:g} ms), it is roughly the number of extra database round trips.",
        "",
    ]
    for path, title in LATENCY_PATHS.items():
        details = info["paths"].get(path)
        if details is None:
            continue
        lines += [f"## {title}", "", details["description"], ""]
        lines += [
            "| scenario | conns | API p50 | API p99 | ref p50 | ref p99 | API/ref p50 "
            "| API/ref p99 | API - ref p50 | API req/s | ref req/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for scenario in info["scenarios"]:
            for connections in info["levels"]:
                by_server = report.phases.get(latency_phase(path, connections), {}).get(scenario)
                if not by_server:
                    continue
                a, r = by_server[api], by_server[reference]
                lines.append(
                    f"| {scenario} | {connections} | {_ms(a.p50_ms)} | {_ms(a.p99_ms)} "
                    f"| {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | **{_ratio(a.p50_ms, r.p50_ms)}** "
                    f"| {_ratio(a.p99_ms, r.p99_ms)} | {a.p50_ms - r.p50_ms:+.1f} "
                    f"| {a.rps:,.0f} | {r.rps:,.0f} |"
                )
        proxy = details.get("proxy") or {}
        late = proxy.get("overshoot_us", {})
        lines += [
            "",
            f"Delay proxy: {proxy.get('connections', '?')} connections, "
            f"{proxy.get('chunks', 0):,} chunks; each held {delay:g} ms plus "
            f"{late.get('p50', '?')} µs (p50) / {late.get('p99', '?')} µs (p99) late; "
            f"at most {100 * details.get('proxy_cpu_max', 0):.0f}% of a core during a run.",
            "",
        ]
    lines += _errors(report)
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> dict[str, Any]:
    data = asdict(report)
    data["checks"] = [asdict(r) | {"ok": r.ok} for r in report.checks]
    data["ok"] = not report.failures
    return data


def write(
    report: Report,
    servers: list[str],
    *,
    directory: Path = RESULTS,
    suffix: str = "",
    latest: bool = True,
) -> tuple[Path, str]:
    """`<stamp><suffix>.md/.json` and `latest<suffix>.md/.json` in `directory`.

    The latency mode writes with suffix "-latency" (its own renderer, its own `latest`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    latency = report.meta.get("mode") == "latency"
    markdown = render_latency(report, servers) if latency else render(report, servers)
    payload = json.dumps(to_json(report), indent=2, default=str) + "\n"
    stamp = report.meta["stamp"]
    for stem in (f"{stamp}{suffix}", f"latest{suffix}")[: 2 if latest else 1]:
        (directory / f"{stem}.md").write_text(markdown)
        (directory / f"{stem}.json").write_text(payload)
    return directory / f"{stamp}{suffix}.md", markdown
