"""Drive a server with wrk and the Lua script; one `WrkResult` per run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.servers import pinned

SCRIPT = Path(__file__).resolve().parent / "lua" / "scenarios.lua"


def ensure_wrk() -> str:
    """Path of wrk; installs Debian's package when it is missing (needs root and apt-get)."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError("wrk is missing: install it (Debian: apt-get install -y wrk)")
    print("bench: installing wrk (apt-get) ...", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk still missing after apt-get install")
    return found


@dataclass
class WrkResult:
    target: str
    scenario: str
    requests: int
    seconds: float
    non2xx: int
    last_bad_status: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.non2xx == 0 and self.socket_errors == 0


@dataclass(frozen=True)
class WrkSettings:
    binary: str
    connections: int
    threads: int
    cpus: str | None
    data_dir: Path


def run_wrk(
    settings: WrkSettings,
    *,
    target: str,
    base_url: str,
    scenario: str,
    seconds: float,
    deep_path: str | None = None,
) -> WrkResult:
    argv = [settings.binary, f"-c{settings.connections}", f"-t{settings.threads}"]
    argv += [f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(SCRIPT), base_url]
    argv += ["--", scenario, str(settings.data_dir)]
    if deep_path:
        argv.append(deep_path)
    completed = subprocess.run(
        pinned(argv, settings.cpus), capture_output=True, text=True, check=False
    )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line.removeprefix("BENCH_JSON "))
            return WrkResult(
                target=target,
                scenario=scenario,
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                non2xx=raw["non2xx"],
                last_bad_status=raw["last_bad_status"],
                connect_errors=raw["connect_errors"],
                read_errors=raw["read_errors"],
                write_errors=raw["write_errors"],
                timeouts=raw["timeouts"],
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
            )
    raise RuntimeError(
        f"wrk gave no result (exit {completed.returncode}):\n{completed.stdout}{completed.stderr}"
    )
