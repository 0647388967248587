"""docker-compose.yml, checked by reading it: Docker does not run on the development and CI
machines, so these tests are what keeps the file in step with the settings and the code."""

import configparser
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, SettingsLoader

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "receiver", "receiver-2", "capture-2")
RECEIVERS = ("receiver", "receiver-2", "capture-2")
# What the app services set for boto3 (the S3 client) rather than for the settings.
BOTO3_VARIABLES = {"AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED"}
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


def test_it_runs_postgresql_redis_the_store_a_migration_the_web_process_and_receivers() -> None:
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "s3",
        "s3-init",
        "migrate",
        "web",
        "receiver",
        "receiver-2",
        "capture-2",
    }
    assert SERVICES["postgres"]["image"] == "postgres:16"
    assert SERVICES["redis"]["image"] == "redis:7"
    assert SERVICES["s3"]["image"].startswith("chrislusf/seaweedfs:")
    assert SERVICES["s3-init"]["image"].startswith("amazon/aws-cli:")
    assert "restart" not in SERVICES["migrate"]
    assert "restart" not in SERVICES["s3-init"]


@pytest.mark.parametrize(
    ("service", "probe"),
    [
        ("postgres", "pg_isready"),
        ("redis", "redis-cli"),
        ("s3", "http://127.0.0.1:8333/healthz"),
        ("web", "/healthz"),
        ("receiver", "http://127.0.0.1:9030/metrics"),
        ("receiver-2", "http://127.0.0.1:9031/metrics"),
        ("capture-2", "http://127.0.0.1:9030/metrics"),
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
        "s3-init": {"condition": "service_completed_successfully"},
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
    # A receiver refuses to start without its store; once running it rides out outages.
    assert depends["s3-init"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("service", ["web", "s3", *RECEIVERS])
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
    assert (
        used
        == set(COMPOSE["volumes"])
        == {
            "postgres-data",
            "jmirror-data",
            "capture-2-data",
            "s3-data",
        }
    )


@pytest.mark.parametrize("service", APP_SERVICES)
def test_the_app_services_keep_their_data_in_the_volume_their_environment_names(
    service: str,
) -> None:
    definition = SERVICES[service]
    data_dir = definition["environment"]["JMIRROR_DATA_DIR"]
    volume = "capture-2-data" if service == "capture-2" else "jmirror-data"
    assert definition["volumes"] == [f"{volume}:{data_dir}"]
    secret_file = definition["environment"]["DJANGO_SECRET_KEY_FILE"]
    assert secret_file == "/run/secrets/django_secret_key"
    assert definition["secrets"] == ["django_secret_key", "s3_credentials"]
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

    assert set(declared) - BOTO3_VARIABLES <= environ.read
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
    # The evidence store, with its credentials in a secret file and not in the URL.
    storage = settings["STORAGE"]
    assert (storage.bucket, storage.prefix, storage.endpoint) == (
        "jmirror-evidence",
        "",
        "http://s3:8333",
    )
    assert str(storage.lock_mode) == "COMPLIANCE"
    assert declared["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/s3_credentials"
    assert (
        settings["JMIRROR_LOCAL_KEEP_HOURS"],
        settings["JMIRROR_SESSION_QUIET_SECONDS"],
        settings["JMIRROR_ROTATE_SECONDS"],
    ) == (24, 60, 3600)
    assert settings["NODE_NAME"] == declared["JMIRROR_NODE_NAME"]


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


def test_each_capture_host_has_its_own_node_name_and_the_scale_out_receiver_shares_its_host_s() -> (
    None
):
    nodes = {
        service: SERVICES[service]["environment"]["JMIRROR_NODE_NAME"] for service in RECEIVERS
    }
    assert nodes == {"receiver": "capture-1", "receiver-2": "capture-1", "capture-2": "capture-2"}
    # A container's host name is its random id: every app service names its node.
    assert SERVICES["web"]["environment"]["JMIRROR_NODE_NAME"] == "web"


def test_the_second_capture_host_is_a_profile_with_its_own_data_port_and_metrics() -> None:
    second = SERVICES["capture-2"]

    assert second["profiles"] == ["several-hosts"]
    assert "network_mode" not in second  # a host of its own, in production
    assert second["ports"] == ["30031:30030/udp"]
    assert parsed("capture-2")[1]["listen"] == ["0.0.0.0:30030"]
    assert second["volumes"] != SERVICES["receiver"]["volumes"]
    # Nothing in the default set and the store's services is left out of `up`.
    for service in ("s3", "s3-init", "web", "receiver"):
        assert "profiles" not in SERVICES[service]


def test_the_store_credentials_are_secrets_never_in_the_storage_url_or_the_environment() -> None:
    for service in APP_SERVICES:
        environment = SERVICES[service]["environment"]
        assert "@" not in environment["JMIRROR_STORAGE_URL"]
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(environment)
    assert SERVICES["s3"]["secrets"] == ["s3_identities"]
    assert "-s3.config=/run/secrets/s3_identities" in SERVICES["s3"]["command"]
    assert SERVICES["s3-init"]["secrets"] == ["s3_credentials"]
    assert COMPOSE["secrets"]["s3_credentials"]["file"] == "./secrets/s3_credentials"
    assert COMPOSE["secrets"]["s3_identities"]["file"] == "./secrets/s3_identities.json"
    assert "ports" not in SERVICES["s3"]  # the compose network only


def test_the_store_starts_before_the_bucket_is_made_and_the_bucket_before_anything_uses_it() -> (
    None
):
    assert SERVICES["s3-init"]["depends_on"] == {"s3": {"condition": "service_healthy"}}
    for service in ("web", *RECEIVERS):
        condition = SERVICES[service]["depends_on"]["s3-init"]["condition"]
        assert condition == "service_completed_successfully"


def _bucket_script() -> tuple[str, dict[str, str]]:
    """s3-init's shell script as Compose hands it to ``sh -c`` ($$ is a literal $), and
    its environment with the defaults Compose fills in."""
    init = SERVICES["s3-init"]
    assert init["entrypoint"] == ["sh", "-c"]
    script = init["command"][0].replace("$$", "$")
    environment = {name: interpolate(str(value), {}) for name, value in init["environment"].items()}
    return script, environment


def _run_bucket_script(
    s3_server: Any, bucket: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    script, environment = _bucket_script()
    credentials = tmp_path / "s3_credentials"
    credentials.write_text(
        "[default]\n"
        f"aws_access_key_id = {s3_server.environment()['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {s3_server.environment()['AWS_SECRET_ACCESS_KEY']}\n"
    )
    run_environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **environment,
        "ENDPOINT": s3_server.endpoint,
        "BUCKET": bucket,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": os.devnull,
    }
    return subprocess.run(
        ["sh", "-c", script],
        env=run_environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


needs_aws_cli = pytest.mark.skipif(
    shutil.which("aws") is None, reason="the aws command (the AWS CLI) is not installed"
)


@needs_aws_cli
def test_the_bucket_script_makes_an_object_lock_bucket_and_accepts_it_again(
    s3_server: Any, tmp_path: Path
) -> None:
    """s3-init's own script, run with the AWS CLI against a real S3 server (SeaweedFS)."""
    bucket = f"compose-{uuid.uuid4().hex[:12]}"

    made = _run_bucket_script(s3_server, bucket, tmp_path)
    again = _run_bucket_script(s3_server, bucket, tmp_path)

    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"bucket {bucket} made with Object Lock"
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"bucket {bucket} exists"
    import boto3

    lock = s3_server.client(boto3).get_object_lock_configuration(Bucket=bucket)
    assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"


@needs_aws_cli
def test_the_bucket_script_refuses_an_existing_bucket_without_object_lock(
    s3_server: Any, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket(object_lock=False)

    result = _run_bucket_script(s3_server, bucket, tmp_path)

    assert result.returncode == 1
    assert f"bucket {bucket} has no Object Lock: evidence there would be deletable" in result.stderr


def test_the_readme_recipe_makes_one_key_pair_in_both_credential_files(tmp_path: Path) -> None:
    """The README's lines that make the store's two credential files, run: the AWS
    credentials file the app services read and the S3 gateway's identities hold the same
    key pair, and the gateway's identity may create the bucket (s3-init) and lock objects."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme[readme.index("## Deployment") :], re.S)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if "S3_" in line or "secrets/s3_" in line]
    assert len(lines) >= 4, "the Deployment recipe makes no store credentials"
    (tmp_path / "secrets").mkdir()
    subprocess.run(["sh", "-c", "\n".join(["set -eu", *lines])], cwd=tmp_path, check=True)

    credentials = configparser.ConfigParser()
    credentials.read(tmp_path / "secrets" / "s3_credentials")
    (identity,) = json.loads((tmp_path / "secrets" / "s3_identities.json").read_text())[
        "identities"
    ]
    (pair,) = identity["credentials"]
    assert pair == {
        "accessKey": credentials["default"]["aws_access_key_id"],
        "secretKey": credentials["default"]["aws_secret_access_key"],
    }
    assert len(pair["secretKey"]) >= 30
    assert "Admin" in identity["actions"]
    for name in ("s3_credentials", "s3_identities.json"):
        assert (tmp_path / "secrets" / name).stat().st_mode & 0o777 == 0o644


def test_the_store_s_health_check_asks_a_probe_seaweedfs_answers_without_credentials(
    s3_server: Any,
) -> None:
    import urllib.request

    probe = SERVICES["s3"]["healthcheck"]["test"][-1]
    port = re.search(r"-s3\.port=(\d+)", " ".join(SERVICES["s3"]["command"]))
    assert port is not None
    assert probe == f"http://127.0.0.1:{port.group(1)}/healthz"
    url = f"{s3_server.endpoint}/healthz"  # http://127.0.0.1:PORT, made by the fixture
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
        assert answer.status == 200
