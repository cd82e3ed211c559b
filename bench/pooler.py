"""The benchmark's own PgBouncer in transaction mode (as Neon's -pooler endpoints), no TLS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.servers import free_port, pinned

CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer")


def find_pgbouncer() -> str:
    for candidate in CANDIDATES:
        if found := shutil.which(candidate):
            return found
    raise RuntimeError("pgbouncer is missing (Debian: apt-get install -y pgbouncer)")


class PgBouncer:
    """pool_mode=transaction, auth_type=trust, on a free port of 127.0.0.1."""

    def __init__(self, server_host: str, server_port: int, *, pool_size: int = 20) -> None:
        # Directly under /tmp: run as root, PgBouncer drops to `postgres`, which cannot enter
        # the harness's private work directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="todo_bench_pgbouncer_"))
        self.server = (server_host, server_port)
        self.port = free_port()
        self.pool_size = pool_size
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, cpus: str | None) -> None:
        host, port = self.server
        (self.workdir / "users.txt").write_text('"postgres" ""\n')
        (self.workdir / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.workdir / "users.txt"}
pool_mode = transaction
max_client_conn = 500
default_pool_size = {self.pool_size}
ignore_startup_parameters = extra_float_digits
logfile = {self.workdir / "pgbouncer.log"}
"""
        )
        argv = [find_pgbouncer(), str(self.workdir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(self.workdir, "postgres")
            for path in self.workdir.iterdir():
                shutil.chown(path, "postgres")
            argv[1:1] = ["-u", "postgres"]
        # Console output to a file, never an unread pipe (a full pipe blocks PgBouncer).
        with (self.workdir / "console.log").open("wb") as console:
            self.process = subprocess.Popen(
                pinned(argv, cpus), stdout=console, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not start listening:\n{self.log()}")

    def log(self) -> str:
        text = ""
        for name in ("console.log", "pgbouncer.log"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")[-4000:]
        return text

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT is PgBouncer's immediate shutdown; SIGTERM would wait for every client.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
