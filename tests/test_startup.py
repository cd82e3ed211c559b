"""Start-up through the real command line, as a deployment runs it: a subprocess.

Each run gets an environment without any of the service's variables and a scratch working
directory, so neither the developer's shell nor a `.env` file leaks in. Every run's output is
checked for the password.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from support import PRODUCTION_CURSOR_SECRET, clean_env, free_port
from todo_api.platform.database import migrate

PASSWORD = "s3cr3t-pw-XYZ"
EXPECTED_POSTGRES_FORM = "postgresql://USER:PASSWORD@HOST:5432/DBNAME"
RUN_TIMEOUT = 30.0
READY_TIMEOUT = 20.0
CONFIG_ERROR_EXIT = 2  # the README's promise for configuration problems


def serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "todo_api", "serve", "--port", str(port)]


def run_serve(cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run `serve` expecting it to fail on its own; output is stdout and stderr together."""
    return subprocess.run(
        serve_command(free_port()),
        cwd=cwd,
        env=clean_env(**variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def config_error_lines(output: str) -> list[str]:
    """The lines of the single "Invalid configuration" block."""
    assert output.count("Invalid configuration") == 1, output
    block = output[output.index("Invalid configuration") :]
    return [line.strip() for line in block.splitlines()[1:] if line.startswith("  ")]


# --- configuration errors -----------------------------------------------------------------------


def test_production_without_database_url_exits_naming_database_url(tmp_path: Path) -> None:
    # AUTH_MODE=none: production's default (jwt) would also name the missing key source.
    result = run_serve(
        tmp_path, APP_ENV="production", AUTH_MODE="none", CURSOR_SECRET=PRODUCTION_CURSOR_SECRET
    )

    assert result.returncode == CONFIG_ERROR_EXIT, result.stdout
    assert [line.split(":")[0] for line in config_error_lines(result.stdout)] == ["DATABASE_URL"]
    assert "APP_ENV=production" in result.stdout
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "todo.db").exists()  # no SQLite fallback in production


def test_every_invalid_variable_is_named_in_one_message(tmp_path: Path) -> None:
    result = run_serve(
        tmp_path,
        APP_ENV="production",
        AUTH_MODE="none",
        CURSOR_SECRET=PRODUCTION_CURSOR_SECRET,
        DB_POOL_SIZE="abc",
        LOG_LEVEL="loud",
    )

    assert result.returncode == CONFIG_ERROR_EXIT, result.stdout
    named = [line.split(":")[0] for line in config_error_lines(result.stdout)]
    assert sorted(named) == ["DATABASE_URL", "DB_POOL_SIZE", "LOG_LEVEL"]
    assert "abc" not in result.stdout  # values are never repeated, only named
    assert "loud" not in result.stdout
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@db.example.com:notaport/todo",
        f"app:{PASSWORD}@db.example.com:5432/todo",
        f"mysql://app:{PASSWORD}@db.example.com/todo",
    ],
    ids=["bad-port", "no-scheme", "unsupported-scheme"],
)
def test_unusable_database_url_is_reported_with_the_expected_form_and_no_password(
    tmp_path: Path, url: str
) -> None:
    result = run_serve(tmp_path, DATABASE_URL=url)

    assert result.returncode == CONFIG_ERROR_EXIT, result.stdout
    lines = config_error_lines(result.stdout)
    assert len(lines) == 1
    assert lines[0].startswith("DATABASE_URL:")
    assert EXPECTED_POSTGRES_FORM in lines[0]
    assert PASSWORD not in result.stdout
    assert "Traceback" not in result.stdout


def test_unknown_url_parameter_is_reported_by_name_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://app:{PASSWORD}@db.example.com/todo?sslmode=require&pgbouncer=true"

    result = run_serve(tmp_path, DATABASE_URL=url)

    assert result.returncode == CONFIG_ERROR_EXIT, result.stdout
    assert "pgbouncer" in result.stdout
    assert PASSWORD not in result.stdout


# --- unreachable database -----------------------------------------------------------------------


def test_unreachable_database_retries_until_the_deadline_then_exits_naming_it(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    result = run_serve(
        tmp_path,
        DATABASE_URL=f"postgresql://u:{PASSWORD}@127.0.0.1:1/db",
        DB_CONNECT_DEADLINE="2",
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 1, result.stdout
    assert 2 <= elapsed < 15, f"took {elapsed:.1f}s to give up on a refused connection"
    assert "cannot connect to postgresql database 'db' on 127.0.0.1:1" in result.stdout
    assert "Connection refused" in result.stdout or "ConnectionRefused" in result.stdout
    # Each attempt is logged with its reason, then one final message.
    assert result.stdout.count("database attempt") >= 2
    assert "gave up after" in result.stdout
    assert "Traceback" not in result.stdout
    assert PASSWORD not in result.stdout
    assert "ready in" not in result.stdout


def test_wrong_database_name_fails_at_once_without_retrying(tmp_path: Path) -> None:
    # A missing database will not appear by waiting: no retries, even with a long deadline.
    server = make_url(os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"))
    url = server.set(database="todo_no_such_database", password=PASSWORD)
    started = time.monotonic()
    result = run_serve(
        tmp_path, DATABASE_URL=url.render_as_string(hide_password=False), DB_CONNECT_DEADLINE="60"
    )

    assert result.returncode == 1, result.stdout
    assert time.monotonic() - started < 15
    assert "todo_no_such_database" in result.stdout
    assert "database attempt" not in result.stdout
    assert PASSWORD not in result.stdout


def test_db_check_against_an_unreachable_database_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "todo_api", "db", "check"],
        cwd=tmp_path,
        env=clean_env(DATABASE_URL=f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    assert "cannot connect to postgresql database 'db' on 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


# --- success -------------------------------------------------------------------------------------


def serve_until_healthy(cwd: Path, **variables: str) -> tuple[int, str]:
    """Start `serve`, wait for GET /health 200, stop it with SIGTERM; (exit code, log)."""
    port = free_port()
    log_path = cwd / "server.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            serve_command(port),
            cwd=cwd,
            env=clean_env(**variables),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        status = wait_for_health(process, port)
        assert status == 200, log_path.read_text(encoding="utf-8")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return code, log_path.read_text(encoding="utf-8")


def wait_for_health(process: subprocess.Popen[str], port: int) -> int | None:
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return None  # exited before answering
            try:
                return client.get("/health").status_code
            except httpx.TransportError:
                time.sleep(0.05)
    return None


def assert_stopped_gracefully(code: int, log: str) -> None:
    # An orderly stop is exit status 0 (uvicorn re-raises the signal it caught once it has shut
    # down; `serve` turns that into a normal exit instead of a death by SIGTERM).
    assert code == 0, log
    assert "Application shutdown complete" in log


def test_serves_on_a_fresh_sqlite_file_with_no_configuration(tmp_path: Path) -> None:
    code, log = serve_until_healthy(tmp_path)

    assert_stopped_gracefully(code, log)
    ready = [line for line in log.splitlines() if "ready in" in line]
    assert len(ready) == 1, log
    assert "sqlite database ./todo.db" in ready[0]
    assert f"schema revision {migrate.head_revision()}" in ready[0]
    assert (tmp_path / "todo.db").is_file()  # the default lives in the working directory
    assert "Traceback" not in log
    assert PASSWORD not in log


def test_serves_on_postgresql_without_ever_logging_the_password(
    tmp_path: Path, postgresql_server_url: str
) -> None:
    # The test server trusts local connections, so a password in the URL is accepted and unused.
    url = make_url(postgresql_server_url).set(password=PASSWORD)
    raw = url.render_as_string(hide_password=False)

    code, log = serve_until_healthy(
        tmp_path, DATABASE_URL=f"{raw}?sslmode=disable&channel_binding=prefer", LOG_LEVEL="DEBUG"
    )

    assert_stopped_gracefully(code, log)
    ready = [line for line in log.splitlines() if "ready in" in line]
    assert len(ready) == 1, log
    assert f"postgresql database '{url.database}' on 127.0.0.1:" in ready[0]
    assert "channel_binding=prefer requested" in log  # the note is logged once at start-up
    assert PASSWORD not in log
