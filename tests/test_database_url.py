"""Unit tests: the DATABASE_URL people paste becomes what the async drivers need, or a clear error.

No database is contacted here. Every error is checked for the expected form and for the absence
of the password, because these messages end up in logs and terminals.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import pytest

from support import PRODUCTION_CURSOR_SECRET
from todo_api.platform.database.url import DatabaseUrlError, parse_database_url
from todo_api.settings import DEFAULT_SQLITE_URL, AppEnv, ConfigError, Settings, load_settings

PASSWORD = "s3cr3t-pw-XYZ"
PG = f"postgresql://app:{PASSWORD}@db.example.com:5432/todo"
NEON = (
    "postgresql://u:p@ep-x-pooler.us-east-2.aws.neon.tech/neondb"
    "?sslmode=require&channel_binding=require"
)
EXPECTED_POSTGRES_FORM = "postgresql://USER:PASSWORD@HOST:5432/DBNAME"
EXPECTED_SQLITE_FORM = "sqlite:///"


def parse_error(raw: str) -> str:
    """The message of the DatabaseUrlError that parsing `raw` raises."""
    with pytest.raises(DatabaseUrlError) as caught:
        parse_database_url(raw)
    assert caught.value.__cause__ is None  # nothing chained that could carry the URL
    return str(caught.value)


@pytest.fixture
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings see neither the developer's environment nor a `.env` file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


# --- accepted schemes and driver selection -------------------------------------------------------


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgres", "postgresql+asyncpg"], ids=lambda s: s
)
def test_postgres_schemes_select_the_asyncpg_driver(scheme: str) -> None:
    target = parse_database_url(f"{scheme}://app:{PASSWORD}@db.example.com:6543/todo")

    assert target.url.drivername == "postgresql+asyncpg"
    assert target.dialect == "postgresql"
    assert not target.is_sqlite
    assert (target.url.host, target.url.port, target.url.database) == (
        "db.example.com",
        6543,
        "todo",
    )
    assert (target.url.username, target.url.password) == ("app", PASSWORD)
    assert target.connect_args == {}
    assert target.notes == ()


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+aiosqlite"])
def test_sqlite_schemes_select_the_aiosqlite_driver(scheme: str) -> None:
    target = parse_database_url(f"{scheme}:///data/todo.db")

    assert target.url.drivername == "sqlite+aiosqlite"
    assert target.url.database == "data/todo.db"
    assert target.is_sqlite
    assert not target.is_memory
    assert target.connect_args == {}


def test_sqlite_absolute_path_is_kept() -> None:
    target = parse_database_url("sqlite:////var/lib/todo/todo.db")

    assert target.url.database == "/var/lib/todo/todo.db"


def test_sqlite_without_a_path_is_an_in_memory_database() -> None:
    assert parse_database_url("sqlite://").is_memory
    assert parse_database_url("sqlite+aiosqlite:///:memory:").is_memory


def test_surrounding_whitespace_is_ignored() -> None:
    target = parse_database_url(f"  {PG}\n")

    assert target.url.host == "db.example.com"


# --- Neon ---------------------------------------------------------------------------------------


def test_neon_connection_string_parses() -> None:
    target = parse_database_url(NEON)

    assert target.url.drivername == "postgresql+asyncpg"
    assert target.url.host == "ep-x-pooler.us-east-2.aws.neon.tech"
    assert target.url.database == "neondb"
    assert (target.url.username, target.url.password) == ("u", "p")
    assert isinstance(target.connect_args["ssl"], ssl.SSLContext)


def test_neon_connection_string_leaves_no_query_on_the_driver_url() -> None:
    target = parse_database_url(NEON)

    assert dict(target.url.query) == {}
    assert "?" not in target.url.render_as_string(hide_password=False)


def test_neon_channel_binding_becomes_a_note_not_a_driver_argument() -> None:
    target = parse_database_url(NEON)

    assert "channel_binding" not in target.connect_args
    assert len(target.notes) == 1
    assert "channel_binding=require" in target.notes[0]
    assert "verify-full" in target.notes[0]  # tells the reader what to use instead


def test_channel_binding_prefer_is_also_noted() -> None:
    assert len(parse_database_url(f"{PG}?channel_binding=prefer").notes) == 1


def test_channel_binding_disable_needs_no_note() -> None:
    target = parse_database_url(f"{PG}?channel_binding=disable")

    assert target.notes == ()
    assert target.connect_args == {}


def test_unknown_channel_binding_value_is_an_error_naming_the_parameter() -> None:
    message = parse_error(f"{PG}?channel_binding=always")

    assert "channel_binding" in message
    assert PASSWORD not in message


# --- sslmode -------------------------------------------------------------------------------------


def ssl_of(query: str) -> object:
    return parse_database_url(f"{PG}?{query}").connect_args["ssl"]


def test_sslmode_disable_turns_tls_off() -> None:
    assert ssl_of("sslmode=disable") is False


@pytest.mark.parametrize("mode", ["allow", "prefer"])
def test_sslmode_allow_and_prefer_are_passed_to_asyncpg_by_name(mode: str) -> None:
    assert ssl_of(f"sslmode={mode}") == mode


def test_sslmode_require_encrypts_without_verifying_the_certificate() -> None:
    context = ssl_of("sslmode=require")

    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_NONE


def test_sslmode_verify_ca_verifies_the_certificate_but_not_the_hostname() -> None:
    context = ssl_of("sslmode=verify-ca")

    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_sslmode_verify_full_verifies_certificate_and_hostname() -> None:
    context = ssl_of("sslmode=verify-full")

    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_sslmode_require_with_a_root_certificate_verifies_the_ca_like_libpq() -> None:
    context = ssl_of(f"sslmode=require&sslrootcert={certifi.where()}")

    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.get_ca_certs()  # the given bundle was loaded


def test_unreadable_sslrootcert_is_an_error_naming_the_parameter(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"

    message = parse_error(f"{PG}?sslmode=verify-full&sslrootcert={missing}")

    assert "sslrootcert" in message
    assert PASSWORD not in message


def test_unknown_sslmode_is_an_error_listing_the_valid_modes() -> None:
    message = parse_error(f"{PG}?sslmode=strict")

    assert "sslmode" in message
    for mode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        assert mode in message
    assert PASSWORD not in message


# --- other libpq parameters ---------------------------------------------------------------------


def test_connect_timeout_becomes_the_asyncpg_timeout_in_seconds() -> None:
    target = parse_database_url(f"{PG}?connect_timeout=7")

    assert target.connect_args == {"timeout": 7.0}
    assert dict(target.url.query) == {}


def test_non_numeric_connect_timeout_is_an_error_naming_the_parameter() -> None:
    message = parse_error(f"{PG}?connect_timeout=soon")

    assert "connect_timeout" in message
    assert PASSWORD not in message


def test_application_name_becomes_a_server_setting() -> None:
    target = parse_database_url(f"{PG}?application_name=todo-worker")

    assert target.connect_args == {"server_settings": {"application_name": "todo-worker"}}
    assert dict(target.url.query) == {}


def test_all_supported_parameters_together_leave_a_clean_driver_url() -> None:
    target = parse_database_url(
        f"{PG}?sslmode=disable&channel_binding=prefer&connect_timeout=3.5&application_name=todo"
    )

    assert target.connect_args == {
        "ssl": False,
        "timeout": 3.5,
        "server_settings": {"application_name": "todo"},
    }
    assert dict(target.url.query) == {}
    assert len(target.notes) == 1


def test_unknown_parameter_is_an_error_naming_it() -> None:
    message = parse_error(f"{PG}?sslmode=require&pool_mode=transaction")

    assert "pool_mode" in message
    assert "sslmode, sslrootcert, channel_binding, connect_timeout, application_name" in message
    assert PASSWORD not in message


def test_several_unknown_parameters_are_all_named() -> None:
    message = parse_error(f"{PG}?target_session_attrs=read-write&options=-c%20x%3Dy")

    assert "options" in message
    assert "target_session_attrs" in message


def test_repeated_parameter_is_an_error_naming_it() -> None:
    message = parse_error(f"{PG}?sslmode=require&sslmode=disable")

    assert "sslmode" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("parameter", ["sslmode", "channel_binding", "connect_timeout"])
def test_an_invalid_parameter_value_is_never_echoed(parameter: str) -> None:
    # Someone may paste the password into the wrong place; the value is never repeated.
    message = parse_error(f"postgresql://app@db.example.com/todo?{parameter}={PASSWORD}")

    assert parameter in message
    assert PASSWORD not in message


# --- unsupported and unparseable ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        f"mysql://app:{PASSWORD}@db.example.com/todo",
        f"postgresql+psycopg2://app:{PASSWORD}@db.example.com/todo",
        f"http://app:{PASSWORD}@db.example.com/todo",
    ],
    ids=["mysql", "postgresql+psycopg2", "http"],
)
def test_unsupported_scheme_is_an_error_naming_it_with_the_expected_form(raw: str) -> None:
    message = parse_error(raw)

    assert "unsupported scheme" in message
    assert repr(raw.split("://")[0]) in message
    assert EXPECTED_POSTGRES_FORM in message
    assert EXPECTED_SQLITE_FORM in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "not a url",
        PASSWORD,
        f"app:{PASSWORD}@db.example.com:5432/todo",
        f"postgresql://app:{PASSWORD}@db.example.com:notaport/todo",
        f"postgresql://app:{PASSWORD}@[::1/todo",
        f"jdbc:postgresql://db.example.com/todo?user=app&password={PASSWORD}",
        f"://app:{PASSWORD}@db.example.com/todo",
    ],
    ids=[
        "empty",
        "blank",
        "words",
        "just-a-password",
        "no-scheme",
        "bad-port",
        "bad-ipv6",
        "jdbc",
        "empty-scheme",
    ],
)
def test_garbage_is_an_error_showing_the_expected_form_without_the_password(raw: str) -> None:
    message = parse_error(raw)

    assert "not a valid database URL" in message
    assert EXPECTED_POSTGRES_FORM in message
    assert EXPECTED_SQLITE_FORM in message
    assert PASSWORD not in message


# --- printable forms -----------------------------------------------------------------------------


def test_describe_names_host_port_database_and_user_but_not_the_password() -> None:
    text = parse_database_url(PG).describe()

    assert "db.example.com:5432" in text
    assert "'todo'" in text
    assert "'app'" in text
    assert PASSWORD not in text


def test_describe_assumes_the_default_port() -> None:
    text = parse_database_url(f"postgresql://app:{PASSWORD}@db.example.com/todo").describe()

    assert "db.example.com:5432" in text


def test_masked_url_hides_the_password() -> None:
    masked = parse_database_url(PG).masked()

    assert PASSWORD not in masked
    assert "***" in masked


def test_describe_of_sqlite_names_the_file() -> None:
    assert parse_database_url("sqlite:///data/todo.db").describe() == (
        "sqlite database data/todo.db"
    )


# --- Settings ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("isolated_settings")
def test_settings_without_database_url_use_the_sqlite_file_in_the_working_directory() -> None:
    settings = load_settings()

    assert settings.app_env is AppEnv.development
    assert settings.database_url is None
    assert settings.database == parse_database_url(DEFAULT_SQLITE_URL)
    assert settings.database.url.database == "./todo.db"


@pytest.mark.usefixtures("isolated_settings")
def test_settings_read_database_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", NEON)

    settings = load_settings()

    assert settings.database.url.drivername == "postgresql+asyncpg"
    assert isinstance(settings.database.connect_args["ssl"], ssl.SSLContext)
    assert settings.database.notes


@pytest.mark.usefixtures("isolated_settings")
def test_settings_read_a_dotenv_file_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={PG}\n", encoding="utf-8")

    assert load_settings().database.url.host == "db.example.com"


@pytest.mark.usefixtures("isolated_settings")
def test_migrations_use_database_url_direct_when_given() -> None:
    direct = "postgresql://app:pw@ep-x.us-east-2.aws.neon.tech/neondb?sslmode=require"

    settings = load_settings(database_url=NEON, database_url_direct=direct)

    assert settings.database.url.host == "ep-x-pooler.us-east-2.aws.neon.tech"
    assert settings.database_direct.url.host == "ep-x.us-east-2.aws.neon.tech"


@pytest.mark.usefixtures("isolated_settings")
def test_migrations_fall_back_to_database_url_without_a_direct_url() -> None:
    settings = load_settings(database_url=NEON)

    assert settings.database_direct is settings.database


@pytest.mark.usefixtures("isolated_settings")
def test_production_requires_database_url() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(app_env="production")

    assert "DATABASE_URL" in str(caught.value)
    assert "APP_ENV=production" in str(caught.value)


@pytest.mark.usefixtures("isolated_settings")
def test_production_rejects_a_blank_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "   ")

    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings()


@pytest.mark.usefixtures("isolated_settings")
def test_production_accepts_a_postgres_url() -> None:
    settings = load_settings(
        app_env="production",
        database_url=PG,
        auth_mode="none",
        cursor_secret=PRODUCTION_CURSOR_SECRET,
    )

    assert settings.database.dialect == "postgresql"


@pytest.mark.usefixtures("isolated_settings")
def test_invalid_database_url_is_a_config_error_with_the_expected_form_and_no_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{PASSWORD}@db.example.com:notaport/x")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert "DATABASE_URL" in message
    assert EXPECTED_POSTGRES_FORM in message
    assert PASSWORD not in message
    assert caught.value.__cause__ is None


@pytest.mark.usefixtures("isolated_settings")
def test_invalid_database_url_direct_is_named_as_such() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(database_url=PG, database_url_direct=f"mysql://a:{PASSWORD}@h/db")

    message = str(caught.value)
    assert "DATABASE_URL_DIRECT" in message
    assert "mysql" in message
    assert PASSWORD not in message


@pytest.mark.usefixtures("isolated_settings")
def test_unknown_url_parameter_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(database_url=f"{PG}?pgbouncer=true")

    assert "DATABASE_URL" in str(caught.value)
    assert "pgbouncer" in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.usefixtures("isolated_settings")
def test_every_invalid_variable_is_named_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("AUTH_MODE", "none")  # else production also names its missing key source
    monkeypatch.setenv("CURSOR_SECRET", PRODUCTION_CURSOR_SECRET)  # else it is named too
    monkeypatch.setenv("DB_POOL_SIZE", "abc")
    monkeypatch.setenv("LOG_LEVEL", "loud")
    monkeypatch.setenv("MAX_BODY_BYTES", "1")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    lines = str(caught.value).splitlines()
    assert lines[0] == "Invalid configuration:"
    named = {line.strip().split(":")[0] for line in lines[1:]}
    assert named == {"DATABASE_URL", "DB_POOL_SIZE", "LOG_LEVEL", "MAX_BODY_BYTES"}


@pytest.mark.usefixtures("isolated_settings")
def test_settings_repr_never_shows_the_database_urls() -> None:
    settings = load_settings(database_url=PG, database_url_direct=PG)

    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
