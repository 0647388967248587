"""A session of a case, and a data directory for its files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from jmirror_web.intercepts.models import Session


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.SESSIONS_DIR = tmp_path / "sessions"
    from jmirror_web.console import stored_packets

    stored_packets.forget_indexes()
    return tmp_path


@pytest.fixture
def session(data_dir: Path) -> Session:
    from tests.factories import make_case, make_intercept, make_router, make_session
    from tests.jmirror_web.conversations.stored_session import T0, row_time

    case = make_case(reference="CONV-CASE")
    router = make_router(name="conv-router")
    intercept = make_intercept(case, liid="CONV-LIID", intercept_id=0x320, routers=[router])
    return make_session(
        intercept,
        router=router,
        mid=0x320,
        sid=0xB0,
        first_seen=row_time(T0),
        last_seen=row_time(T0 + 60 * 1_000_000_000),
    )
