"""Start, probe and stop the servers under test (the API and the reference), one process each."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
READY_PATH = "/health/ready"

# Variables the API's settings read: never inherited from the caller's shell, so a developer's
# DB_POOL_SIZE or DATABASE_URL_DIRECT cannot silently change what is measured.
_API_PREFIXES = ("DATABASE_", "DB_")
_API_NAMES = {
    "APP_ENV",
    "AUTO_MIGRATE",
    "LOG_LEVEL",
    "MAX_BODY_BYTES",
    "AUTH_MODE",
    "ACCESS_LOG",
    "METRICS_ENABLED",
    "CURSOR_SECRET",
}


def clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in _API_NAMES and not key.upper().startswith(_API_PREFIXES)
    }


def api_env(database_url: str, *, metrics: bool) -> dict[str, str]:
    """Production settings, one worker, access log off (see bench/README.md)."""
    return clean_env() | {
        "APP_ENV": "production",
        # Production refuses the built-in one; the benchmark's cursors need no secrecy.
        "CURSOR_SECRET": "bench-cursor-secret-of-at-least-32-bytes",
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "true",
        "AUTH_MODE": "none",
        "ACCESS_LOG": "false",
        "METRICS_ENABLED": "true" if metrics else "false",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    if cpus is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", cpus, *argv]


@dataclass
class Server:
    """A running server; `pid` is the process that serves requests (one uvicorn worker)."""

    name: str
    kind: str  # "api" or "reference"
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    spawned_at: float
    ready_seconds: float | None = None
    deep_path: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll /health/ready until the first 200; seconds since spawn."""
        deadline = self.spawned_at + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}\n{self.log()}"
                )
            try:
                status, _ = request(self.port, "GET", READY_PATH, timeout=1.0)
                if status == 200:
                    self.ready_seconds = time.perf_counter() - self.spawned_at
                    return self.ready_seconds
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s\n{self.log()}")

    def memory_kib(self) -> dict[str, int]:
        """VmHWM (peak resident set) and VmRSS of the serving process, in KiB."""
        values: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in {"VmHWM", "VmRSS"}:
                values[key] = int(rest.split()[0])
        return values

    def log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(name: str, kind: str, env: dict[str, str], *, cpus: str | None, workdir: Path) -> Server:
    port = free_port()
    if kind == "api":
        argv = [sys.executable, "-m", "todo_api", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", "1"]
    else:
        argv = [sys.executable, "-m", "uvicorn", "bench.reference:create_app", "--factory"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        argv += ["--log-level", "warning", "--no-server-header"]
        env = env | {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        }
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("ab")
    spawned_at = time.perf_counter()
    process = subprocess.Popen(
        pinned(argv, cpus), env=env, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT
    )
    log_file.close()
    return Server(name, kind, port, process, log_path, spawned_at)


def request(port: int, method: str, path: str, *, timeout: float = 10.0) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, None
    finally:
        connection.close()


def walk_cursors(server: Server, user_id: str, pages: int, limit: int = 50) -> tuple[str, str]:
    """Follow `pages` cursors from the first page, using the server's own `next_cursor`.

    Returns the path of the page reached (requested repeatedly by list-deep) and the id of its
    first task, so the API and the reference can be checked to land on the same page.
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    base = f"/api/{quote(user_id, safe='')}/tasks?limit={limit}"
    path = base
    try:
        for page in range(pages + 1):
            connection.request("GET", path)
            response = connection.getresponse()
            body = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"{server.name}: {path} answered {response.status}: {body}")
            if page == pages:
                return path, str(body["items"][0]["id"])
            cursor = body["next_cursor"]
            if not cursor:
                raise RuntimeError(f"{server.name}: pages ran out after {page + 1}")
            path = f"{base}&cursor={quote(cursor, safe='')}"
    finally:
        connection.close()
    raise AssertionError("unreachable")
