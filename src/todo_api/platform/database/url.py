"""Turn the DATABASE_URL people paste into what the async drivers need.

Accepted: `postgresql://`, `postgres://` (Heroku/Neon), `postgresql+asyncpg://`, `sqlite:///path`,
`sqlite+aiosqlite:///path`. libpq query parameters are translated for asyncpg, because SQLAlchemy
hands the URL query to `asyncpg.connect()` as keyword arguments and asyncpg forwards unknown ones
to the server as settings: `sslmode=require` would raise TypeError, `channel_binding` would be
rejected by the server. A parameter we cannot honour is an error that names it, never a silent drop.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

EXPECTED_FORMS = (
    "postgresql://USER:PASSWORD@HOST:5432/DBNAME[?sslmode=require] or sqlite:///path/to/file.db"
)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
SQLITE_SCHEMES = {"sqlite", "sqlite+aiosqlite"}


class DatabaseUrlError(ValueError):
    """The URL cannot be used. The message never repeats the URL (it may hold a password)."""


@dataclass(frozen=True)
class DatabaseTarget:
    url: URL  # with the async driver selected and libpq-only parameters removed
    connect_args: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # facts worth one log line at start-up (e.g. channel binding)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_memory(self) -> bool:
        return self.is_sqlite and self.url.database in (None, "", ":memory:")

    @property
    def is_pooler_host(self) -> bool:
        """Neon names its PgBouncer endpoints `ep-…-pooler.…`."""
        return not self.is_sqlite and "-pooler" in (self.url.host or "")

    def describe(self) -> str:
        """Where we connect, safe to print: no password."""
        if self.is_sqlite:
            return f"sqlite database {self.url.database or ':memory:'}"
        host = f"{self.url.host or 'local socket'}:{self.url.port or 5432}"
        database = self.url.database or "(default)"
        return f"postgresql database {database!r} on {host} as user {self.url.username!r}"

    def masked(self) -> str:
        return self.url.render_as_string(hide_password=True)


def parse_database_url(raw: str) -> DatabaseTarget:
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise DatabaseUrlError(f"is not a valid database URL; expected {EXPECTED_FORMS}") from None
    scheme = url.drivername
    if scheme in SQLITE_SCHEMES:
        return DatabaseTarget(url=url.set(drivername="sqlite+aiosqlite"))
    if scheme in POSTGRES_SCHEMES:
        return _postgres_target(url)
    raise DatabaseUrlError(f"uses the unsupported scheme {scheme!r}; expected {EXPECTED_FORMS}")


def _postgres_target(url: URL) -> DatabaseTarget:
    query = {key: _single(key, value) for key, value in url.query.items()}
    connect_args: dict[str, Any] = {}
    notes: list[str] = []

    sslmode = query.pop("sslmode", None)
    sslrootcert = query.pop("sslrootcert", None)
    if sslmode is not None or sslrootcert is not None:
        connect_args["ssl"] = _ssl_setting(sslmode or "prefer", sslrootcert)  # libpq's default

    channel_binding = query.pop("channel_binding", None)
    if channel_binding is not None:
        if channel_binding not in ("disable", "prefer", "require"):
            raise DatabaseUrlError("parameter channel_binding must be disable, prefer or require")
        if channel_binding != "disable":
            notes.append(
                f"channel_binding={channel_binding} requested, but the asyncpg driver cannot do "
                "SCRAM channel binding; relying on TLS certificate verification instead "
                "(use sslmode=verify-full for protection against a man in the middle)"
            )

    connect_timeout = query.pop("connect_timeout", None)
    if connect_timeout is not None:
        try:
            connect_args["timeout"] = float(connect_timeout)
        except ValueError:
            raise DatabaseUrlError(
                "parameter connect_timeout must be a number of seconds"
            ) from None

    application_name = query.pop("application_name", None)
    if application_name is not None:
        connect_args["server_settings"] = {"application_name": application_name}

    if query:
        names = ", ".join(sorted(query))
        raise DatabaseUrlError(
            f"has parameters this service cannot honour: {names}; "
            "supported: sslmode, sslrootcert, channel_binding, connect_timeout, application_name"
        )
    driver_url = url.set(drivername="postgresql+asyncpg", query={})
    return DatabaseTarget(url=driver_url, connect_args=connect_args, notes=tuple(notes))


def _single(key: str, value: str | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        raise DatabaseUrlError(f"repeats the parameter {key}")
    return value


def _ssl_setting(mode: str, rootcert: str | None) -> ssl.SSLContext | str | bool:
    """Map a libpq sslmode to what asyncpg's `ssl=` accepts."""
    if mode not in SSL_MODES:
        raise DatabaseUrlError(f"parameter sslmode must be one of {', '.join(SSL_MODES)}")
    if mode == "disable":
        return False
    if mode in ("allow", "prefer"):
        return mode
    if mode == "require" and rootcert is None:
        # libpq's `require`: encrypt, but do not verify the certificate.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # verify-ca / verify-full (and `require` with a root certificate, as libpq does).
    try:
        context = ssl.create_default_context(cafile=rootcert)
    except (OSError, ssl.SSLError):
        raise DatabaseUrlError(
            "parameter sslrootcert names a file that cannot be read as CA certificates"
        ) from None
    context.check_hostname = mode == "verify-full"
    return context
