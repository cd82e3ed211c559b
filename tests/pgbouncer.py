"""A real PgBouncer in transaction pooling mode, with client TLS, in front of the test server.

This is what Neon's `-pooler` endpoints are: the API must work through it without
server-side prepared statement reuse. `.ci/run` installs Debian's `pgbouncer`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from support import free_port

PGBOUNCER_CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer")


def find_pgbouncer() -> str | None:
    for candidate in PGBOUNCER_CANDIDATES:
        if found := shutil.which(candidate):
            return found
    return None


class PgBouncer:
    def __init__(self, server_host: str, server_port: int) -> None:
        # Directly under /tmp: when run as root, PgBouncer drops to `postgres`, which cannot
        # enter pytest's private temporary directories.
        self.workdir = Path(tempfile.mkdtemp(prefix="todo-pgbouncer-"))
        self.server = (server_host, server_port)
        self.port = free_port()
        self.certificate = self.workdir / "server.crt"  # self-signed: also its own CA
        self.process: subprocess.Popen[bytes] | None = None

    def make_certificate(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(self.workdir / "server.key"), "-out", str(self.certificate)],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self, executable: str) -> None:
        self.make_certificate()
        cert, key = self.certificate, self.workdir / "server.key"
        (self.workdir / "users.txt").write_text('"postgres" ""\n')
        host, port = self.server
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
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
client_tls_sslmode = require
client_tls_key_file = {key}
client_tls_cert_file = {cert}
logfile = {self.workdir / "pgbouncer.log"}
"""
        )
        command = [executable, str(self.workdir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(self.workdir, "postgres")
            for path in self.workdir.iterdir():
                shutil.chown(path, "postgres")
            command[1:1] = ["-u", "postgres"]
        # Console output to a file, never an unread pipe: once the pipe's buffer is full,
        # PgBouncer blocks on its next log line and every client hangs.
        with open(self.workdir / "console.log", "wb") as console:
            self.process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT)
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                output = (self.workdir / "console.log").read_text()
                raise RuntimeError(f"pgbouncer exited: {output}{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not start listening: {self.log()}")

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT is PgBouncer's immediate shutdown; SIGTERM would wait for every client.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.environ.get("KEEP_PGBOUNCER_LOG"):
            print(self.log()[-20000:])
        shutil.rmtree(self.workdir, ignore_errors=True)
