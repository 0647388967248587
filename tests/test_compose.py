"""docker-compose.yml, checked by reading it: Docker does not run on the development and CI
machines, so these tests are what keeps the file in step with the settings and the code."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, SettingsLoader

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "receiver", "receiver-2")
RECEIVERS = ("receiver", "receiver-2")
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


def test_it_runs_postgresql_redis_a_migration_the_web_process_and_receivers() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", "web", "receiver", "receiver-2"}
    assert SERVICES["postgres"]["image"] == "postgres:16"
    assert SERVICES["redis"]["image"] == "redis:7"
    assert "restart" not in SERVICES["migrate"]


@pytest.mark.parametrize(
    ("service", "probe"),
    [
        ("postgres", "pg_isready"),
        ("redis", "redis-cli"),
        ("web", "/healthz"),
        ("receiver", "http://127.0.0.1:9030/metrics"),
        ("receiver-2", "http://127.0.0.1:9031/metrics"),
    ],
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


def parsed(service: str) -> tuple[str, dict[str, Any]]:
    """The management command a service runs and its options, parsed by that command."""
    from django.core.management import get_commands, load_command_class

    command = SERVICES[service]["command"]
    assert command[:2] == ["python", "manage.py"]
    name = command[2]
    handler = load_command_class(get_commands()[name], name)
    return name, vars(handler.create_parser("manage.py", name).parse_args(command[3:]))


def test_the_web_process_serves_on_the_published_port_without_a_receiver_inside() -> None:
    name, options = parsed("web")

    assert name == "serve"
    everywhere = "0.0.0.0"  # noqa: S104 (inside the container; published on loopback)
    assert (options["bind"], options["port"], options["no_receiver"]) == (everywhere, 8000, True)
    assert SERVICES["web"]["ports"] == [f"127.0.0.1:{options['port']}:{options['port']}"]


@pytest.mark.parametrize("service", RECEIVERS)
def test_each_receiver_listens_on_the_published_udp_port_with_metrics_for_its_health_check(
    service: str,
) -> None:
    name, options = parsed(service)

    assert name == "receive"
    assert options["listen"] == ["0.0.0.0:30030"]
    health = SERVICES[service]["healthcheck"]["test"][-1]
    assert f"http://{options['metrics']}/metrics" in health
    assert SERVICES[service]["stop_grace_period"] == "30s"


def test_the_routers_port_is_published_as_udp_from_the_first_receivers_namespace() -> None:
    assert SERVICES["receiver"]["ports"] == ["30030:30030/udp"]
    assert "network_mode" not in SERVICES["receiver"]
    assert "profiles" not in SERVICES["receiver"]


def test_the_second_receiver_is_a_scale_out_profile_sharing_the_first_ones_port() -> None:
    second = SERVICES["receiver-2"]

    assert second["profiles"] == ["scale-out"]
    # SO_REUSEPORT shares a port within one network namespace only.
    assert second["network_mode"] == "service:receiver"
    assert "ports" not in second
    # One namespace, so one 127.0.0.1: the metrics endpoints must differ.
    assert parsed("receiver")[1]["metrics"] != parsed("receiver-2")[1]["metrics"]
    assert second["depends_on"]["receiver"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("service", RECEIVERS)
def test_a_receiver_starts_after_the_migration_and_with_redis_for_its_live_summaries(
    service: str,
) -> None:
    depends = SERVICES[service]["depends_on"]
    assert depends["migrate"] == {"condition": "service_completed_successfully"}
    assert depends["postgres"] == {"condition": "service_healthy"}
    assert depends["redis"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("service", ["web", *RECEIVERS])
def test_the_long_running_services_restart(service: str) -> None:
    assert SERVICES[service]["restart"] == "unless-stopped"


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
    # Redis is there, so nobody runs a receiver inside the web process by default.
    assert settings["EMBEDDED_RECEIVER"] is False
    # Behind the TLS proxy on the host: HTTPS on, X-Forwarded-Proto trusted, and the
    # health check's plain http://localhost:8000/healthz not redirected.
    assert (settings["HTTPS"], settings["BEHIND_PROXY"]) == (True, True)
    assert settings["SECURE_REDIRECT_EXEMPT"] == [r"^healthz$"]


def test_the_database_password_comes_from_the_operator_not_the_file() -> None:
    with pytest.raises(ValueError, match=r"^POSTGRES_PASSWORD: set POSTGRES_PASSWORD in \.env$"):
        interpolate(SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"], {})


def test_the_image_runs_as_a_user_other_than_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users == ["jmirror"]
    # The image's own command is what the web service runs.
    words = ", ".join(f'"{word}"' for word in SERVICES["web"]["command"])
    assert dockerfile[-1] == f"CMD [{words}]"


def test_the_image_leaves_the_venv_data_and_secrets_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", "secrets", ".env", ".git"} <= set(ignored)
