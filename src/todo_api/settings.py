"""Configuration, read from the environment and an optional `.env` file.

Every problem with the configuration is reported at once, in one message that names each
variable, and never repeats a value (a DATABASE_URL usually carries a password).
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from todo_api.database_url import DatabaseTarget, DatabaseUrlError, parse_database_url

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./todo.db"


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

    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
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
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=10 * 1024 * 1024)

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError("must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return level

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
