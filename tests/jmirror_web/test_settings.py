import asyncio
import os
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jmirror_web.data_directory import prepare
from jmirror_web.environment import (
    ConfigurationError,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_path,
    env_secret,
    env_str,
)
from tests.conftest import REPO, SettingsLoader

LONG_SECRET = "k" * 40


def test_env_str_returns_the_value_or_the_default() -> None:
    assert env_str("NAME", "fallback", environ={"NAME": "value"}) == "value"
    assert env_str("NAME", "fallback", environ={}) == "fallback"


@pytest.mark.parametrize("raw", ["1", "true", "YES", " on ", "True"])
def test_env_bool_reads_every_true_word(raw: str) -> None:
    assert env_bool("FLAG", False, environ={"FLAG": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off", ""])
def test_env_bool_reads_every_false_word_and_blank_as_false(raw: str) -> None:
    assert env_bool("FLAG", True, environ={"FLAG": raw}) is False


def test_env_bool_returns_the_default_when_unset() -> None:
    assert env_bool("FLAG", True, environ={}) is True


def test_env_bool_rejects_any_other_word_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_bool("DJANGO_DEBUG", False, environ={"DJANGO_DEBUG": "maybe"})
    assert str(raised.value) == (
        "DJANGO_DEBUG='maybe' is not a boolean; use one of 1/0, true/false, yes/no, on/off"
    )


@pytest.mark.parametrize(("raw", "value"), [("8000", 8000), (" 42 ", 42), ("0x10", 16)])
def test_env_int_reads_decimal_and_prefixed_integers(raw: str, value: int) -> None:
    assert env_int("PORT", 1, environ={"PORT": raw}) == value


def test_env_int_returns_the_default_when_unset() -> None:
    assert env_int("PORT", 8000, environ={}) == 8000


@pytest.mark.parametrize("raw", ["ten", "", "8000.5"])
def test_env_int_rejects_what_is_not_an_integer(raw: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_int("PORT", 1, environ={"PORT": raw})
    assert str(raised.value) == f"PORT={raw!r} is not an integer"


def test_env_int_rejects_a_value_below_the_minimum() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_int("PORT", 1, minimum=1, maximum=65535, environ={"PORT": "0"})
    assert str(raised.value) == "PORT=0 is below the minimum 1"


def test_env_int_rejects_a_value_above_the_maximum() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_int("PORT", 1, minimum=1, maximum=65535, environ={"PORT": "65536"})
    assert str(raised.value) == "PORT=65536 is above the maximum 65535"


def test_env_int_accepts_the_bounds_themselves() -> None:
    assert env_int("PORT", 5, minimum=1, maximum=65535, environ={"PORT": "1"}) == 1
    assert env_int("PORT", 5, minimum=1, maximum=65535, environ={"PORT": "65535"}) == 65535


def test_env_list_splits_on_commas_and_trims_blanks() -> None:
    assert env_list("HOSTS", [], environ={"HOSTS": " a.example , b.example"}) == [
        "a.example",
        "b.example",
    ]


def test_env_list_reads_a_blank_value_as_an_empty_list() -> None:
    assert env_list("HOSTS", ["default"], environ={"HOSTS": "  "}) == []


def test_env_list_returns_a_copy_of_the_default_when_unset() -> None:
    default = ["localhost"]
    value = env_list("HOSTS", default, environ={})
    assert value == default
    assert value is not default


@pytest.mark.parametrize("raw", ["a,,b", "a,", ",a", "a, ,b"])
def test_env_list_rejects_an_empty_item(raw: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_list("DJANGO_ALLOWED_HOSTS", [], environ={"DJANGO_ALLOWED_HOSTS": raw})
    assert str(raised.value) == f"DJANGO_ALLOWED_HOSTS={raw!r} has an empty item in its list"


def test_env_choice_matches_case_insensitively_and_returns_the_spelling_of_the_choice() -> None:
    assert env_choice("LEVEL", "INFO", ("DEBUG", "INFO"), environ={"LEVEL": " debug "}) == "DEBUG"


def test_env_choice_returns_the_default_when_unset() -> None:
    assert env_choice("LEVEL", "INFO", ("DEBUG", "INFO"), environ={}) == "INFO"


def test_env_choice_rejects_a_word_outside_the_choices() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_choice(
            "JMIRROR_LOG_LEVEL", "INFO", ("DEBUG", "INFO"), environ={"JMIRROR_LOG_LEVEL": "loud"}
        )
    assert str(raised.value) == "JMIRROR_LOG_LEVEL='loud' is not one of DEBUG, INFO"


def test_env_path_resolves_a_relative_path_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert env_path("DIR", Path("/default"), environ={"DIR": "data"}) == tmp_path / "data"


def test_env_path_returns_the_default_when_unset() -> None:
    assert env_path("DIR", Path("/default"), environ={}) == Path("/default")


def test_env_path_rejects_a_blank_value() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_path("JMIRROR_DATA_DIR", Path("/default"), environ={"JMIRROR_DATA_DIR": " "})
    assert str(raised.value) == "JMIRROR_DATA_DIR is set but empty; unset it or give a directory"


def test_env_secret_returns_none_when_neither_form_is_set() -> None:
    assert env_secret("TOKEN", environ={}) is None


def test_env_secret_reads_the_value_directly() -> None:
    assert env_secret("TOKEN", environ={"TOKEN": " s3cret "}) == "s3cret"


def test_env_secret_reads_the_file_form_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert env_secret("TOKEN", environ={"TOKEN_FILE": str(secret)}) == "s3cret"


def test_env_secret_rejects_both_forms_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", environ={"TOKEN": "a", "TOKEN_FILE": str(tmp_path / "token")})
    assert str(raised.value) == "set TOKEN or TOKEN_FILE, not both"


def test_env_secret_rejects_a_blank_direct_value() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", environ={"TOKEN": "  "})
    assert str(raised.value) == "TOKEN is set but empty"


def test_env_secret_rejects_a_blank_file_name() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", environ={"TOKEN_FILE": ""})
    assert str(raised.value) == "TOKEN_FILE is set but empty; unset it or name a file"


def test_env_secret_rejects_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", environ={"TOKEN_FILE": str(missing)})
    assert (
        str(raised.value)
        == f"TOKEN_FILE={str(missing)!r} cannot be read: No such file or directory"
    )


def test_env_secret_rejects_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    # A directory, because root (CI) reads any file whatever its mode.
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", environ={"TOKEN_FILE": str(tmp_path)})
    assert str(raised.value) == f"TOKEN_FILE={str(tmp_path)!r} cannot be read: Is a directory"


def test_env_secret_rejects_an_empty_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(" \n")
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", environ={"TOKEN_FILE": str(secret)})
    assert str(raised.value) == f"TOKEN_FILE={str(secret)!r} is empty"


def test_env_secret_rejects_a_file_that_is_not_text(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", environ={"TOKEN_FILE": str(secret)})
    assert str(raised.value) == f"TOKEN_FILE={str(secret)!r} is not UTF-8 text"


def test_env_secret_rejects_a_short_direct_value_without_quoting_it() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", min_length=32, environ={"TOKEN": "hunter2"})
    assert str(raised.value) == "TOKEN holds 7 characters; at least 32 are needed"


def test_env_secret_rejects_a_short_file_value_naming_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("hunter2\n")
    with pytest.raises(ConfigurationError) as raised:
        env_secret("TOKEN", min_length=32, environ={"TOKEN_FILE": str(secret)})
    assert str(raised.value) == (
        f"TOKEN_FILE={str(secret)!r} holds 7 characters; at least 32 are needed"
    )


def test_an_empty_environment_runs_the_embedded_default(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    data_dir = tmp_path / "nested" / "data"
    settings = load_settings({"JMIRROR_DATA_DIR": str(data_dir)})

    assert settings["DATA_DIR"] == data_dir
    assert settings["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert settings["DATABASES"]["default"]["NAME"] == str(data_dir / "jmirror.sqlite3")
    assert settings["CHANNEL_LAYERS"] == {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }
    assert settings["DEBUG"] is False
    assert settings["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    assert settings["STATIC_ROOT"] == data_dir / "staticfiles"
    assert settings["LOGGING"]["root"]["level"] == "INFO"


def started(settings: dict[str, Any]) -> SimpleNamespace:
    """The settings after what a start does to them (JMirrorConfig.ready)."""
    namespace = SimpleNamespace(**settings)
    prepare(namespace)
    return namespace


def test_the_embedded_default_generates_a_private_secret_key_once(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    loaded = load_settings({})
    key_file = tmp_path / "data" / "secret_key"
    assert loaded["GENERATED_SECRET_KEY_FILE"] == key_file
    assert loaded["SECRET_KEY"] == ""
    assert not key_file.parent.exists()  # the start makes it, not the settings

    first = started(loaded)
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first.SECRET_KEY) >= 32
    assert key_file.read_text() == first.SECRET_KEY
    assert started(load_settings({})).SECRET_KEY == first.SECRET_KEY
    assert sorted(path.name for path in key_file.parent.iterdir()) == ["secret_key"]


def test_an_empty_generated_secret_key_file_stops_the_start(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    key_file = tmp_path / "data" / "secret_key"
    key_file.parent.mkdir()
    key_file.write_text("")
    loaded = load_settings({})
    with pytest.raises(ConfigurationError) as raised:
        started(loaded)
    assert str(raised.value) == (
        f"the generated secret key {str(key_file)!r} holds 0 characters; "
        "delete the file to have a new one made"
    )


def test_an_unreadable_generated_secret_key_stops_the_start(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    key_file = tmp_path / "data" / "secret_key"
    key_file.mkdir(parents=True)
    loaded = load_settings({})
    with pytest.raises(ConfigurationError) as raised:
        started(loaded)
    assert str(raised.value) == (
        f"the generated secret key {str(key_file)!r} cannot be used: Is a directory; "
        "make JMIRROR_DATA_DIR writable or set DJANGO_SECRET_KEY_FILE"
    )


def test_a_data_dir_that_cannot_be_created_stops_the_start(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    in_the_way = tmp_path / "file"
    in_the_way.write_text("")
    loaded = load_settings({"JMIRROR_DATA_DIR": str(in_the_way)})
    with pytest.raises(ConfigurationError) as raised:
        started(loaded)
    assert (
        str(raised.value) == f"JMIRROR_DATA_DIR={str(in_the_way)!r} cannot be created: File exists"
    )


def test_importing_the_settings_creates_nothing_and_loads_no_receiver(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, jmirror_web.settings; "
            "print(sorted(name for name in sys.modules if name.startswith('receiver')))",
        ],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "JMIRROR_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "[]\n"
    assert not data_dir.exists()


def test_the_secret_key_comes_from_its_file_and_nothing_is_generated(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    secret = tmp_path / "django_secret_key"
    secret.write_text(LONG_SECRET + "\n")
    settings = started(load_settings({"DJANGO_SECRET_KEY_FILE": str(secret)}))
    assert settings.SECRET_KEY == LONG_SECRET
    assert settings.GENERATED_SECRET_KEY_FILE is None
    assert not (tmp_path / "data" / "secret_key").exists()


def test_the_secret_key_comes_from_the_environment(load_settings: SettingsLoader) -> None:
    assert load_settings({"DJANGO_SECRET_KEY": LONG_SECRET})["SECRET_KEY"] == LONG_SECRET


def test_a_missing_secret_key_file_stops_the_start(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"DJANGO_SECRET_KEY_FILE": str(missing)})
    assert str(raised.value) == (
        f"DJANGO_SECRET_KEY_FILE={str(missing)!r} cannot be read: No such file or directory"
    )


def test_an_empty_secret_key_file_stops_the_start(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    secret = tmp_path / "django_secret_key"
    secret.write_text("")
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"DJANGO_SECRET_KEY_FILE": str(secret)})
    assert str(raised.value) == f"DJANGO_SECRET_KEY_FILE={str(secret)!r} is empty"


def test_a_secret_key_in_both_forms_stops_the_start(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    secret = tmp_path / "django_secret_key"
    secret.write_text(LONG_SECRET)
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"DJANGO_SECRET_KEY": LONG_SECRET, "DJANGO_SECRET_KEY_FILE": str(secret)})
    assert str(raised.value) == "set DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE, not both"


def test_a_short_secret_key_stops_the_start(load_settings: SettingsLoader) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"DJANGO_SECRET_KEY": "short"})
    assert str(raised.value) == "DJANGO_SECRET_KEY holds 5 characters; at least 32 are needed"


def test_debug_log_level_and_allowed_hosts_come_from_the_environment(
    load_settings: SettingsLoader,
) -> None:
    settings = load_settings(
        {
            "DJANGO_DEBUG": "true",
            "DJANGO_ALLOWED_HOSTS": "li.example.net, 192.0.2.10",
            "JMIRROR_LOG_LEVEL": "debug",
        }
    )
    assert settings["DEBUG"] is True
    assert settings["ALLOWED_HOSTS"] == ["li.example.net", "192.0.2.10"]
    assert settings["LOGGING"]["root"]["level"] == "DEBUG"


def test_a_bad_log_level_stops_the_start(load_settings: SettingsLoader) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"JMIRROR_LOG_LEVEL": "verbose"})
    assert str(raised.value) == (
        "JMIRROR_LOG_LEVEL='verbose' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


def test_a_postgres_url_configures_postgresql_without_persistent_connections(
    load_settings: SettingsLoader,
) -> None:
    database = load_settings({"DATABASE_URL": "postgres://jm:pw@db.example:5433/jmirror"})[
        "DATABASES"
    ]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"], database["NAME"]) == ("db.example", 5433, "jmirror")
    assert (database["USER"], database["PASSWORD"]) == ("jm", "pw")
    assert database["CONN_MAX_AGE"] == 0
    # A vanished database host fails a query within about half a minute, not never.
    assert database["OPTIONS"]["connect_timeout"] == 10
    assert database["OPTIONS"]["tcp_user_timeout"] == 30_000
    assert database["OPTIONS"]["keepalives"] == 1


def test_timeouts_in_the_postgres_url_win_over_the_defaults(
    load_settings: SettingsLoader,
) -> None:
    url = "postgres://jm:pw@db.example/jmirror?connect_timeout=3&tcp_user_timeout=5000"
    options = load_settings({"DATABASE_URL": url})["DATABASES"]["default"]["OPTIONS"]
    assert (options["connect_timeout"], options["tcp_user_timeout"]) == (3, 5000)
    assert options["keepalives_idle"] == 30


def test_a_sqlite_url_names_the_database_file(
    load_settings: SettingsLoader, tmp_path: Path
) -> None:
    database = load_settings({"DATABASE_URL": f"sqlite:///{tmp_path}/other.sqlite3"})["DATABASES"]
    assert database["default"]["NAME"] == f"{tmp_path}/other.sqlite3"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql://jm:hunter2@db/jmirror",
            "DATABASE_URL must be a postgres://, postgresql:// or sqlite:// URL, not mysql://",
        ),
        ("garbage", "DATABASE_URL must be a postgres://, postgresql:// or sqlite:// URL"),
        ("", "DATABASE_URL must be a postgres://, postgresql:// or sqlite:// URL"),
        ("postgres://[::1", "DATABASE_URL is not a valid URL"),
        (
            "postgres://jm:hunter2@db:port/jmirror",
            "DATABASE_URL is not a valid URL; is the port a number, and are special characters"
            " in the password percent-encoded?",
        ),
        ("postgres://jm:hunter2@db", "DATABASE_URL names no database"),
        (
            "sqlite://",
            "DATABASE_URL=sqlite:// is an in-memory database, empty in every process; "
            "name a file: sqlite:////path/to/jmirror.sqlite3",
        ),
    ],
)
def test_a_bad_database_url_stops_the_start_without_quoting_the_password(
    load_settings: SettingsLoader, url: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"DATABASE_URL": url})
    assert str(raised.value) == message


def test_a_redis_url_configures_the_channels_redis_layer(load_settings: SettingsLoader) -> None:
    layers = load_settings({"REDIS_URL": "redis://redis.example:6379/2"})["CHANNEL_LAYERS"]
    assert layers == {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://redis.example:6379/2"]},
        }
    }


def test_a_blank_redis_url_means_the_in_process_layer(load_settings: SettingsLoader) -> None:
    layers = load_settings({"REDIS_URL": "  "})["CHANNEL_LAYERS"]
    assert layers["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "localhost:6379",
            "REDIS_URL must be a redis://, rediss:// or unix:// URL, not localhost://",
        ),
        (
            "http://user:hunter2@redis:6379",
            "REDIS_URL must be a redis://, rediss:// or unix:// URL, not http://",
        ),
        ("//user:hunter2@redis", "REDIS_URL must be a redis://, rediss:// or unix:// URL"),
        ("redis://[::1", "REDIS_URL is not a valid URL"),
    ],
)
def test_a_bad_redis_url_stops_the_start_without_quoting_the_password(
    load_settings: SettingsLoader, url: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"REDIS_URL": url})
    assert str(raised.value) == message


def test_the_test_run_uses_a_throwaway_data_dir_and_not_the_developers() -> None:
    from django.conf import settings

    data_dir: Path = settings.DATA_DIR
    assert data_dir == Path(os.environ["JMIRROR_DATA_DIR"])
    assert data_dir.name.startswith("jmirror-tests-")
    assert data_dir != REPO / "data"


def manage(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_manage_py_check_passes_with_nothing_but_a_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = manage("check", environ={"JMIRROR_DATA_DIR": str(data_dir)})

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "System check identified no issues (0 silenced).\n"
    assert stat.S_IMODE((data_dir / "secret_key").stat().st_mode) == 0o600


def test_the_generated_secret_key_is_made_at_the_first_start_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    environ = {"JMIRROR_DATA_DIR": str(data_dir)}
    show = (
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
    )
    first = manage(*show, environ=environ)
    assert (first.returncode, first.stderr) == (0, "")
    second = manage(*show, environ=environ)
    assert (data_dir / "secret_key").read_text() + "\n" == first.stdout == second.stdout


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "DJANGO_DEBUG",
            "maybe",
            "DJANGO_DEBUG='maybe' is not a boolean; use one of 1/0, true/false, yes/no, on/off",
        ),
        (
            "DATABASE_URL",
            "mysql://jm:hunter2@db/jmirror",
            "DATABASE_URL must be a postgres://, postgresql:// or sqlite:// URL, not mysql://",
        ),
        (
            "REDIS_URL",
            "localhost:6379",
            "REDIS_URL must be a redis://, rediss:// or unix:// URL, not localhost://",
        ),
    ],
)
def test_manage_py_reports_a_bad_value_in_one_line_and_exits_2(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = manage("check", environ={"JMIRROR_DATA_DIR": str(tmp_path), variable: value})

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"jmirror-web: configuration error: {message}\n"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not reachable("127.0.0.1", 6379), reason="no Redis on 127.0.0.1:6379")
async def test_the_configured_redis_layer_carries_a_message(load_settings: SettingsLoader) -> None:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    config = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0"})["CHANNEL_LAYERS"]["default"]
    layer = RedisPubSubChannelLayer(**config["CONFIG"])
    channel = await layer.new_channel()
    await layer.group_add("settings-test", channel)
    await layer.group_send("settings-test", {"type": "test.message", "text": "hello"})
    try:
        assert await asyncio.wait_for(layer.receive(channel), timeout=5) == {
            "type": "test.message",
            "text": "hello",
        }
    finally:
        await layer.group_discard("settings-test", channel)
        await layer.flush()


@pytest.mark.skipif(not reachable("127.0.0.1", 5432), reason="no PostgreSQL on 127.0.0.1:5432")
def test_migrate_runs_against_a_fresh_postgresql_database(tmp_path: Path) -> None:
    import psycopg
    from psycopg import sql

    server = "postgres://127.0.0.1:5432"
    name = f"jmirror_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL refused a connection: {error}")
    # The libpq variables (PGUSER, PGPASSWORD, ...) that let this process in let manage.py in.
    environ = {key: value for key, value in os.environ.items() if key.startswith("PG")}
    environ["JMIRROR_DATA_DIR"] = str(tmp_path)
    environ["DATABASE_URL"] = f"{server}/{name}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            migrated = manage("migrate", "--noinput", environ=environ)
            assert (migrated.returncode, migrated.stderr) == (0, "")
            assert "Applying auth.0001_initial... OK" in migrated.stdout
            assert manage("migrate", "--check", environ=environ).returncode == 0
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_bad_metrics_address_stops_the_start(load_settings: SettingsLoader) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"JMIRROR_METRICS_LISTEN": "9100"})
    assert str(raised.value) == "JMIRROR_METRICS_LISTEN: '9100' is not HOST:PORT"
    assert load_settings({"JMIRROR_METRICS_LISTEN": ""})["JMIRROR_METRICS_LISTEN"] == ""


# Production hardening ---------------------------------------------------------------

PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "li.example.net",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://li.example.net",
    "JMIRROR_HTTPS": "true",
    "JMIRROR_BEHIND_PROXY": "true",
}


def test_the_embedded_default_serves_plain_http_with_short_lived_strict_sessions(
    load_settings: SettingsLoader,
) -> None:
    settings = load_settings({})

    assert settings["HTTPS"] is False
    assert (settings["SESSION_COOKIE_SECURE"], settings["CSRF_COOKIE_SECURE"]) == (False, False)
    assert (settings["SECURE_SSL_REDIRECT"], settings["SECURE_HSTS_SECONDS"]) == (False, 0)
    assert "SECURE_PROXY_SSL_HEADER" not in settings
    assert settings["CSRF_TRUSTED_ORIGINS"] == []
    assert settings["SESSION_COOKIE_AGE"] == 30 * 60
    assert settings["SESSION_EXPIRE_AT_BROWSER_CLOSE"] is True
    assert settings["SESSION_COOKIE_HTTPONLY"] is True
    assert settings["SESSION_COOKIE_SAMESITE"] == "Strict"
    assert settings["X_FRAME_OPTIONS"] == "DENY"
    assert settings["AXES_FAILURE_LIMIT"] == 5
    assert settings["AXES_COOLOFF_TIME"].total_seconds() == 15 * 60
    assert settings["AXES_LOCKOUT_PARAMETERS"] == [["username", "ip_address"]]
    assert settings["AUTHENTICATION_BACKENDS"][0] == "axes.backends.AxesStandaloneBackend"
    assert settings["MIDDLEWARE"][-1] == "axes.middleware.AxesMiddleware"
    assert "ws://localhost:*" in settings["CONTENT_SECURITY_POLICY"]["DIRECTIVES"]["connect-src"]


def test_https_behind_a_proxy_turns_on_secure_cookies_hsts_redirect_and_the_proxy_header(
    load_settings: SettingsLoader,
) -> None:
    settings = load_settings(
        {
            **PRODUCTION,
            "DJANGO_CSRF_TRUSTED_ORIGINS": "https://li.example.net, https://*.ops.example.net:8443/",
            "JMIRROR_SESSION_IDLE_MINUTES": "10",
            "JMIRROR_LOGIN_FAILURE_LIMIT": "3",
            "JMIRROR_LOGIN_COOLOFF_MINUTES": "60",
        }
    )

    assert (settings["SESSION_COOKIE_SECURE"], settings["CSRF_COOKIE_SECURE"]) == (True, True)
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
    assert settings["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert settings["SECURE_HSTS_PRELOAD"] is False
    assert settings["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert settings["CSRF_TRUSTED_ORIGINS"] == [
        "https://li.example.net",
        "https://*.ops.example.net:8443",
    ]
    assert settings["SESSION_COOKIE_AGE"] == 600
    assert settings["AXES_FAILURE_LIMIT"] == 3
    assert settings["AXES_COOLOFF_TIME"].total_seconds() == 3600
    connect = settings["CONTENT_SECURITY_POLICY"]["DIRECTIVES"]["connect-src"]
    assert connect == ["'self'", "wss://li.example.net:*"]


@pytest.mark.parametrize(("raw", "value"), [(None, "off"), ("STAFF", "staff"), (" all ", "all")])
def test_two_factor_is_optional_unless_the_deployment_requires_it(
    load_settings: SettingsLoader, raw: str | None, value: str
) -> None:
    settings = load_settings({} if raw is None else {"JMIRROR_REQUIRE_2FA": raw})
    assert settings["JMIRROR_REQUIRE_2FA"] == value


def test_https_without_a_proxy_trusts_no_forwarded_header(load_settings: SettingsLoader) -> None:
    settings = load_settings({"JMIRROR_HTTPS": "true"})
    assert settings["SESSION_COOKIE_SECURE"] is True
    assert "SECURE_PROXY_SSL_HEADER" not in settings


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "JMIRROR_HTTPS",
            "sometimes",
            "JMIRROR_HTTPS='sometimes' is not a boolean; "
            "use one of 1/0, true/false, yes/no, on/off",
        ),
        (
            "JMIRROR_BEHIND_PROXY",
            "nginx",
            "JMIRROR_BEHIND_PROXY='nginx' is not a boolean; "
            "use one of 1/0, true/false, yes/no, on/off",
        ),
        (
            "DJANGO_CSRF_TRUSTED_ORIGINS",
            "http://li.example.net",
            "DJANGO_CSRF_TRUSTED_ORIGINS: 'http://li.example.net' is not an https://host[:port] "
            "origin",
        ),
        (
            "DJANGO_CSRF_TRUSTED_ORIGINS",
            "li.example.net",
            "DJANGO_CSRF_TRUSTED_ORIGINS: 'li.example.net' is not an https://host[:port] origin",
        ),
        (
            "DJANGO_CSRF_TRUSTED_ORIGINS",
            "https://li.example.net/admin/",
            "DJANGO_CSRF_TRUSTED_ORIGINS: 'https://li.example.net/admin/' has more than "
            "scheme, host and port",
        ),
        (
            "DJANGO_CSRF_TRUSTED_ORIGINS",
            "https://li.example.net:https",
            "DJANGO_CSRF_TRUSTED_ORIGINS: 'https://li.example.net:https' is not a valid origin",
        ),
        (
            "DJANGO_CSRF_TRUSTED_ORIGINS",
            "https://a.example.net,,https://b.example.net",
            "DJANGO_CSRF_TRUSTED_ORIGINS='https://a.example.net,,https://b.example.net' has an "
            "empty item in its list",
        ),
        (
            "JMIRROR_SESSION_IDLE_MINUTES",
            "0",
            "JMIRROR_SESSION_IDLE_MINUTES=0 is below the minimum 1",
        ),
        (
            "JMIRROR_SESSION_IDLE_MINUTES",
            "half an hour",
            "JMIRROR_SESSION_IDLE_MINUTES='half an hour' is not an integer",
        ),
        (
            "JMIRROR_LOGIN_FAILURE_LIMIT",
            "0",
            "JMIRROR_LOGIN_FAILURE_LIMIT=0 is below the minimum 1",
        ),
        (
            "JMIRROR_LOGIN_COOLOFF_MINUTES",
            "forever",
            "JMIRROR_LOGIN_COOLOFF_MINUTES='forever' is not an integer",
        ),
        (
            "JMIRROR_REQUIRE_2FA",
            "yes",
            "JMIRROR_REQUIRE_2FA='yes' is not one of off, staff, all",
        ),
    ],
)
def test_a_bad_hardening_value_stops_the_start(
    load_settings: SettingsLoader, variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({variable: value})
    assert str(raised.value) == message


def production_environ(tmp_path: Path) -> dict[str, str]:
    import secrets

    return {
        "PATH": os.environ.get("PATH", ""),
        "JMIRROR_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        **PRODUCTION,
    }


def test_check_deploy_passes_with_production_settings(tmp_path: Path) -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", environ=production_environ(tmp_path)
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("System check identified no issues")


def test_check_deploy_fails_when_the_deployment_does_not_say_it_is_behind_https(
    tmp_path: Path,
) -> None:
    environ = {**production_environ(tmp_path), "JMIRROR_HTTPS": "false"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", environ=environ)

    assert result.returncode == 1
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


def test_the_capture_file_times_have_defaults_and_bounds(load_settings: SettingsLoader) -> None:
    defaults = load_settings({})
    assert (defaults["JMIRROR_SESSION_QUIET_SECONDS"], defaults["JMIRROR_ROTATE_SECONDS"]) == (
        60,
        3600,
    )
    given = load_settings({"JMIRROR_SESSION_QUIET_SECONDS": "5", "JMIRROR_ROTATE_SECONDS": "300"})
    assert (given["JMIRROR_SESSION_QUIET_SECONDS"], given["JMIRROR_ROTATE_SECONDS"]) == (5, 300)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("JMIRROR_ROTATE_SECONDS", "9"),
        ("JMIRROR_ROTATE_SECONDS", "86401"),
        ("JMIRROR_ROTATE_SECONDS", "an hour"),
        ("JMIRROR_SESSION_QUIET_SECONDS", "0"),
        ("JMIRROR_SESSION_QUIET_SECONDS", "-1"),
    ],
)
def test_a_capture_file_time_out_of_bounds_stops_the_start(
    load_settings: SettingsLoader, name: str, raw: str
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        load_settings({name: raw})
