"""Configuration, read from the environment and an optional `.env` file.

Every problem with the configuration is reported at once, in one message that names each
variable, and never repeats a value (a DATABASE_URL usually carries a password).
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from todo_api.platform.database.url import DatabaseTarget, DatabaseUrlError, parse_database_url

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./todo.db"
# The dev servers of Next.js (3000) and Vite (5173): allowed outside production by default.
DEVELOPMENT_CORS_ORIGINS = (
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
)
_ORIGIN = re.compile(
    r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?"
)


# Development's built-in cursor secret, and the placeholder in .env.example: refused in
# production.
DEFAULT_CURSOR_SECRET = "todo-api-default-cursor-secret"
EXAMPLE_CURSOR_SECRET = "change-me-to-a-long-random-string"


class AppEnv(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class ConfigError(Exception):
    """The configuration is unusable; the message names every offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # Declared first: the DATABASE_URL validator reads it.
    app_env: AppEnv = AppEnv.development
    database_url: str | None = Field(default=None, repr=False)
    # Migrations need a direct (non-pooler) connection: advisory locks do not survive PgBouncer.
    database_url_direct: str | None = Field(default=None, repr=False)
    auto_migrate: bool = True

    # A fixed pool by default: SQLAlchemy closes an overflow connection as soon as it is checked
    # in, so under sustained load beyond the pool size nearly every request would open a new
    # connection (a fork on the server, TLS on Neon). Measured: 64 clients, 10 + 10 vs 20 + 0,
    # 431 vs 599 requests/s.
    db_pool_size: int = Field(default=20, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_pool_timeout: float = Field(default=10.0, gt=0, le=300)
    db_connect_timeout: float = Field(default=10.0, gt=0, le=300)
    db_pool_recycle: int = Field(default=240, ge=1)
    db_statement_timeout: float = Field(default=30.0, gt=0, le=3600)
    # Start-up retries (backoff with jitter) this long: a suspended Neon compute wakes slowly.
    db_connect_deadline: float = Field(default=30.0, ge=0, le=600)
    # `transaction`: behind PgBouncer in transaction mode (no prepared statement reuse);
    # `auto`: transaction when the host is a Neon `-pooler` endpoint, session otherwise.
    db_pool_mode: Literal["auto", "session", "transaction"] = "auto"

    log_level: str = "INFO"
    # `json`: one JSON object per line (for log shippers); `console`: readable lines.
    # Unset: json when APP_ENV=production, console otherwise (see `logs_as_json`).
    log_format: Literal["json", "console"] | None = None
    # One line per request from our middleware (uvicorn's own access log is always off).
    access_log: bool = True
    # Probes (/health, /health/ready, /metrics) arrive every few seconds: they can be left out.
    access_log_health: bool = True
    metrics_enabled: bool = True
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=10 * 1024 * 1024)
    # Signs pagination cursors so edited ones are refused. Every replica needs the same value;
    # production refuses to start without one of its own (see _cursor_secret_chosen).
    cursor_secret: SecretStr = Field(
        default=SecretStr(DEFAULT_CURSOR_SECRET), validate_default=True, repr=False
    )
    # How long an Idempotency-Key is remembered.
    idempotency_ttl_hours: float = Field(default=24, gt=0, le=24 * 30)
    # Per-user quotas (GET /api/{user_id}/limits shows them with their use). Tasks counts live
    # tasks, completed ones included.
    quota_tasks_per_user: int = Field(default=100_000, ge=1, le=10_000_000)
    quota_lists_per_user: int = Field(default=500, ge=1, le=100_000)
    quota_labels_per_user: int = Field(default=500, ge=1, le=100_000)
    quota_labels_per_task: int = Field(default=50, ge=1, le=50)
    # Seconds in-flight requests get to finish after SIGTERM (stragglers are then cancelled).
    # Whole seconds: uvicorn's timeout_graceful_shutdown is an int. Keep it below the
    # orchestrator's own grace period (Kubernetes: 30 s) so the pool is closed before SIGKILL.
    shutdown_timeout: int = Field(default=20, ge=1, le=300)

    # --- the change feed (/sync) and its events stream (/events) ---
    # Deletions are kept this long as tombstones; a sync token older than that answers 410.
    sync_retention_seconds: int = Field(default=2_592_000, ge=1, le=10 * 365 * 86_400)
    # How often each API process purges expired tombstones (the first run: soon after start).
    sync_purge_interval_seconds: float = Field(default=3600, gt=0, le=7 * 86_400)
    # Open streams per user per process; the next one answers 429.
    events_max_streams_per_user: int = Field(default=10, ge=1, le=1000)
    # The LISTEN connection closes this long after the last stream of the process ends.
    events_listener_idle_seconds: float = Field(default=60, ge=0, le=3600)
    # How often the LISTEN connection is checked (a dead one goes unnoticed otherwise).
    events_probe_seconds: float = Field(default=5, gt=0, le=300)

    # --- browsers on other origins (CORS) ---
    # Comma-separated exact origins (`https://app.example.com,http://localhost:3000`), or `*`.
    # Unset: the Next.js and Vite dev servers outside production, none in production.
    cors_origins: str | None = None
    # Declared after cors_origins: its validator refuses `*` with credentials.
    cors_allow_credentials: bool = False
    cors_max_age: int = Field(default=7200, ge=0, le=86400)

    # --- authentication (todo_api.auth) ---
    # Shared secret for HS256/384/512 tokens (e.g. Better Auth's BETTER_AUTH_SECRET).
    auth_jwt_secret: SecretStr | None = None
    # JWKS document with RS256/ES256/EdDSA public keys (Better Auth: <base>/api/auth/jwks).
    auth_jwks_url: str | None = None
    # When set, tokens must carry exactly this `iss` / have this among their `aud`.
    auth_issuer: str | None = None
    auth_audience: str | None = None
    # The claim holding the user id that must equal the path's {user_id}.
    auth_user_claim: str = Field(default="sub", min_length=1, max_length=64)
    # Clock skew tolerated on exp, nbf and iat.
    auth_leeway_seconds: int = Field(default=30, ge=0, le=300)
    # Declared after the key sources: its validator checks that `jwt` has one. Unset: `jwt`
    # when APP_ENV=production, `none` (an open API, logged as a warning) otherwise.
    auth_mode: Literal["jwt", "none"] | None = Field(default=None, validate_default=True)

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError("must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return level

    @field_validator(
        "auth_jwt_secret",
        "auth_jwks_url",
        "auth_issuer",
        "auth_audience",
        "auth_mode",
        "cors_origins",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `AUTH_JWKS_URL=` in a .env file means "not configured", not an empty URL.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("auth_jwt_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 §3.2: an HS256 key must be at least 256 bits; shorter ones are guessable.
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError(
                "must be at least 32 bytes (generate one with `openssl rand -base64 32`)"
            )
        return value

    @field_validator("cursor_secret")
    @classmethod
    def _cursor_secret_chosen(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        # With a secret anyone can read (this code, .env.example), signing is decorative:
        # a forged cursor could walk any key range of the caller's own tasks.
        if info.data.get("app_env") is not AppEnv.production:
            return value
        secret = value.get_secret_value()
        if secret in (DEFAULT_CURSOR_SECRET, EXAMPLE_CURSOR_SECRET) or not secret.strip():
            raise ValueError(
                "must be set to a secret of your own when APP_ENV=production "
                "(generate one with `openssl rand -base64 32`)"
            )
        if len(secret.encode()) < 32:
            raise ValueError("must be at least 32 bytes (`openssl rand -base64 32`)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins_exact(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for origin in _split(value):
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: use scheme://host[:port], such as "
                    "https://app.example.com or http://localhost:3000 (no path, no trailing "
                    "slash), separated by commas"
                )
        return value

    @field_validator("cors_allow_credentials")
    @classmethod
    def _no_wildcard_with_credentials(cls, value: bool, info: ValidationInfo) -> bool:
        # Browsers refuse `Access-Control-Allow-Origin: *` on credentialed requests; echoing
        # any origin instead would let every site act with the user's cookies.
        if value and "*" in _split(info.data.get("cors_origins") or ""):
            raise ValueError("cannot be true while CORS_ORIGINS is *: list the exact origins")
        return value

    @cached_property
    def allowed_origins(self) -> tuple[str, ...]:
        """The origins browsers may call the API from (`*`: any)."""
        if self.cors_origins is None:
            return () if self.app_env is AppEnv.production else DEVELOPMENT_CORS_ORIGINS
        return tuple(_split(self.cors_origins))

    @field_validator("auth_jwks_url")
    @classmethod
    def _jwks_url_usable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        scheme, _, rest = value.partition("://")
        if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
            raise ValueError("must be an http(s) URL, e.g. https://auth.example.com/api/auth/jwks")
        return value

    @field_validator("auth_mode", mode="after")
    @classmethod
    def _auth_mode_resolved(cls, value: str | None, info: ValidationInfo) -> str:
        production = info.data.get("app_env") is AppEnv.production
        mode = value or ("jwt" if production else "none")
        # Skipped when a key variable is itself invalid (absent from info.data): that one is
        # reported by name already.
        key_vars_valid = {"auth_jwt_secret", "auth_jwks_url"} <= info.data.keys()
        no_key = not info.data.get("auth_jwt_secret") and not info.data.get("auth_jwks_url")
        if mode == "jwt" and key_vars_valid and no_key:
            why = " (the default when APP_ENV=production)" if value is None else ""
            raise ValueError(
                f"jwt{why} needs a key source: set AUTH_JWT_SECRET (HS256 shared secret, "
                "at least 32 bytes) or AUTH_JWKS_URL (RS256/ES256/EdDSA keys); "
                "or set AUTH_MODE=none explicitly to serve without authentication"
            )
        return mode

    @property
    def auth_enabled(self) -> bool:
        """Every /api request needs a valid bearer token (AUTH_MODE=jwt)."""
        return self.auth_mode == "jwt"

    @field_validator("database_url", "database_url_direct", mode="after")
    @classmethod
    def _database_url_usable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            if info.field_name == "database_url" and info.data.get("app_env") is AppEnv.production:
                raise ValueError("is required when APP_ENV=production (there is no SQLite default)")
            return None
        try:
            parse_database_url(value)
        except DatabaseUrlError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_or_unset(cls, value: Any) -> Any:
        # `LOG_FORMAT=` (as in .env.example) means "the default for APP_ENV"; any case is fine.
        if isinstance(value, str):
            return value.strip().lower() or None
        return value

    @property
    def logs_as_json(self) -> bool:
        if self.log_format is None:
            return self.app_env is AppEnv.production
        return self.log_format == "json"

    @cached_property
    def database(self) -> DatabaseTarget:
        """The parsed database target (driver URL, connect arguments, a printable form)."""
        return parse_database_url(self.database_url or DEFAULT_SQLITE_URL)

    def behind_transaction_pooler(self, target: DatabaseTarget) -> bool:
        if self.db_pool_mode == "auto":
            return target.is_pooler_host
        return self.db_pool_mode == "transaction" and not target.is_sqlite

    @cached_property
    def database_direct(self) -> DatabaseTarget:
        """Where migrations run: DATABASE_URL_DIRECT, falling back to DATABASE_URL."""
        if self.database_url_direct:
            return parse_database_url(self.database_url_direct)
        return self.database


def _split(origins: str) -> list[str]:
    return [origin.strip() for origin in origins.split(",") if origin.strip()]


def load_settings(**overrides: Any) -> Settings:
    """Build settings or raise ConfigError listing every missing or invalid variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    # Only the location and message: pydantic's own str() would echo input values,
    # and a DATABASE_URL's password must never reach a log or a terminal.
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {name}: {message}")
    return "Invalid configuration:\n" + "\n".join(lines)
