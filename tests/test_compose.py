"""docker-compose.yml, checked by reading it: Docker does not run on the development and CI
machines, so these tests are what keeps the file in step with the settings and the code."""

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, SettingsLoader

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = ("migrate", "web")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """The part of Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} that this file uses."""

    def replace(match: re.Match[str]) -> str:
        name, kind, argument = match.groups()
        if variables.get(name):
            return variables[name]
        if kind == "?":
            raise ValueError(f"{name}: {argument}")
        return argument or ""

    return _INTERPOLATION.sub(replace, value)


class RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __contains__(self, name: object) -> bool:
        self.read.add(str(name))
        return super().__contains__(name)

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(name)
        return super().get(name, default)


def test_it_runs_postgresql_redis_a_one_shot_migration_and_the_web_process() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", "web"}
    assert SERVICES["postgres"]["image"] == "postgres:16"
    assert SERVICES["redis"]["image"] == "redis:7"
    assert "restart" not in SERVICES["migrate"]


@pytest.mark.parametrize(
    ("service", "probe"),
    [("postgres", "pg_isready"), ("redis", "redis-cli"), ("web", "/healthz")],
)
def test_every_long_running_service_has_a_health_check(service: str, probe: str) -> None:
    check = SERVICES[service]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert any(probe in word for word in check["test"])
    assert check["retries"] > 0


def test_the_web_process_waits_for_healthy_services_and_a_finished_migration() -> None:
    assert SERVICES["web"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_the_web_process_serves_the_asgi_application_of_the_settings() -> None:
    from django.conf import settings

    command = SERVICES["web"]["command"]
    assert command[:1] == ["daphne"]
    module_name, _, attribute = command[-1].partition(":")
    assert f"{module_name}.{attribute}" == settings.ASGI_APPLICATION
    assert getattr(importlib.import_module(module_name), attribute) is not None


def test_the_migration_also_collects_the_static_files_web_serves() -> None:
    script = SERVICES["migrate"]["command"][-1]
    assert "manage.py migrate --noinput" in script
    assert "manage.py collectstatic --noinput" in script


def test_every_named_volume_is_declared_and_used() -> None:
    used = {
        mount.split(":")[0]
        for service in SERVICES.values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert used == set(COMPOSE["volumes"]) == {"postgres-data", "jmirror-data"}


@pytest.mark.parametrize("service", APP_SERVICES)
def test_the_app_services_keep_their_data_in_the_volume_their_environment_names(
    service: str,
) -> None:
    definition = SERVICES[service]
    data_dir = definition["environment"]["JMIRROR_DATA_DIR"]
    assert f"jmirror-data:{data_dir}" in definition["volumes"]
    secret_file = definition["environment"]["DJANGO_SECRET_KEY_FILE"]
    assert secret_file == "/run/secrets/django_secret_key"
    assert definition["secrets"] == ["django_secret_key"]
    assert COMPOSE["secrets"]["django_secret_key"]["file"] == "./secrets/django_secret_key"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_the_app_environment_names_only_variables_the_settings_read_and_they_accept_it(
    service: str, load_settings: SettingsLoader, tmp_path: Path
) -> None:
    declared = {
        name: interpolate(value, {"POSTGRES_PASSWORD": "0123abcd"})
        for name, value in SERVICES[service]["environment"].items()
    }
    secret_file = tmp_path / "django_secret_key"
    secret_file.write_text("k" * 50)
    # Paths of the container, moved into tmp_path so that the settings can run here.
    environ = RecordingEnviron(
        {
            **declared,
            "JMIRROR_DATA_DIR": str(tmp_path / "data"),
            "DJANGO_SECRET_KEY_FILE": str(secret_file),
        }
    )

    settings = load_settings(environ)

    assert set(declared) <= environ.read
    database = settings["DATABASES"]["default"]
    assert (database["ENGINE"], database["HOST"], database["NAME"]) == (
        "django.db.backends.postgresql",
        "postgres",
        "jmirror",
    )
    assert database["PASSWORD"] == "0123abcd"
    assert settings["CHANNEL_LAYERS"]["default"]["CONFIG"] == {"hosts": ["redis://redis:6379/0"]}
    assert settings["ALLOWED_HOSTS"][0] == "localhost"


def test_the_database_password_comes_from_the_operator_not_the_file() -> None:
    with pytest.raises(ValueError, match=r"^POSTGRES_PASSWORD: set POSTGRES_PASSWORD in \.env$"):
        interpolate(SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"], {})


def test_the_image_runs_as_a_user_other_than_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users == ["jmirror"]
    assert dockerfile[-1] == (
        'CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "jmirror_web.asgi:application"]'
    )
