"""Fixtures of the export tests (the helpers are in :mod:`.evidence`, imported lazily:
this file is loaded before Django is set up)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from tests.jmirror_web.exports.evidence import Stored


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.SESSIONS_DIR = tmp_path / "sessions"
    return tmp_path


@pytest.fixture
def stored(data_dir: Path) -> Stored:
    """A session of 12 packets, one second apart, in 3 rotated files."""
    from tests.jmirror_web.exports.evidence import stored_session

    return stored_session(data_dir)


@pytest.fixture
def analyst(stored: Stored) -> User:
    """An analyst assigned to the stored session's case."""
    from jmirror_web.intercepts.access import Role
    from tests.factories import assign, make_user

    user = make_user(Role.ANALYST)
    assign(user, stored.case)
    return user
