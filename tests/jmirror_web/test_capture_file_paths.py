"""A stored file's place on disk (CaptureFile.on_disk, CaptureFile.stored_path): a row that
names anything outside the sessions directory is refused alike by every reader (export,
packet page, verification, retention), and the purge deletes nothing outside it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from jmirror_web.audit.models import AuditEvent
from jmirror_web.exports.models import Export
from jmirror_web.exports.verification import verify_capture_file
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile, OutsideSessionsDirectory
from jmirror_web.intercepts.retention import PURGED, purge
from tests.factories import (
    assign,
    make_capture_file,
    make_case,
    make_intercept,
    make_session,
    make_user,
)

pytestmark = pytest.mark.django_db

REFUSED = "is recorded outside the sessions directory; it is not read, exported or deleted."
WARRANT_END = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
DUE = WARRANT_END + timedelta(days=31)


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path / "data"
    settings.SESSIONS_DIR = settings.DATA_DIR / "sessions"
    settings.SESSIONS_DIR.mkdir(parents=True)
    return settings.DATA_DIR


# Each way out: what the row says, given the data directory, and the file it would reach
# (made, and a .pcap, so that only the sessions directory rule protects it).
Escape = Callable[[Path], tuple[str, Path]]


def _absolute_elsewhere(data_dir: Path) -> tuple[str, Path]:
    victim = data_dir.parent / "elsewhere" / "victim.pcap"
    return str(victim), victim


def _absolute_in_the_data_directory(data_dir: Path) -> tuple[str, Path]:
    victim = data_dir / "victim.pcap"
    return str(victim), victim


def _climbing_out_of_the_sessions_directory(data_dir: Path) -> tuple[str, Path]:
    return "sessions/../../elsewhere/victim.pcap", data_dir.parent / "elsewhere" / "victim.pcap"


def _relative_without_the_sessions_prefix(data_dir: Path) -> tuple[str, Path]:
    return "victim.pcap", data_dir / "victim.pcap"


def _climbing_out_of_the_data_directory(data_dir: Path) -> tuple[str, Path]:
    return "../elsewhere/victim.pcap", data_dir.parent / "elsewhere" / "victim.pcap"


def _through_a_symbolic_link(data_dir: Path) -> tuple[str, Path]:
    victim = data_dir.parent / "elsewhere" / "victim.pcap"
    link = data_dir / "sessions" / "LIID_router_mid-00000001_sid-00000001" / "link.pcap"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    return "sessions/LIID_router_mid-00000001_sid-00000001/link.pcap", victim


ESCAPES: list[Escape] = [
    _absolute_elsewhere,
    _absolute_in_the_data_directory,
    _climbing_out_of_the_sessions_directory,
    _relative_without_the_sessions_prefix,
    _climbing_out_of_the_data_directory,
    _through_a_symbolic_link,
]


@pytest.fixture(params=ESCAPES, ids=lambda escape: escape.__name__.strip("_"))
def escape(request: pytest.FixtureRequest, data_dir: Path) -> tuple[str, Path]:
    text, victim = request.param(data_dir)
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"not the receiver's")
    return text, victim


def refusal(row: CaptureFile) -> str:
    return f"Capture file {row.pk} {REFUSED}"


# The translation itself ----------------------------------------------------------------


def test_a_row_of_the_store_is_found_under_the_sessions_directory(data_dir: Path) -> None:
    relative = Path("LIID_router_mid-00000001_sid-00000002") / "a.pcap"
    text = CaptureFile.stored_path(relative)
    assert text == "sessions/LIID_router_mid-00000001_sid-00000002/a.pcap"
    assert CaptureFile.stored_path(data_dir / "sessions" / relative) == text
    row = make_capture_file(path=text)
    assert row.on_disk() == data_dir / "sessions" / relative
    absolute = make_capture_file(path=str(data_dir / "sessions" / relative.with_name("b.pcap")))
    assert absolute.on_disk() == data_dir / "sessions" / relative.with_name("b.pcap")


def test_a_file_being_written_is_found_under_its_part_name(data_dir: Path) -> None:
    folder = data_dir / "sessions" / "LIID_router_mid-00000001_sid-00000003"
    folder.mkdir()
    (folder / "a.pcap.part").write_bytes(b"")
    row = make_capture_file(path=CaptureFile.stored_path(folder / "a.pcap"), closed=False)
    assert row.on_disk() == folder / "a.pcap.part"
    with row.open_for_reading() as stream:
        assert stream.read() == b""


@pytest.mark.parametrize(
    "place", [Path("/elsewhere/a.pcap"), Path("../a.pcap"), Path("x/../../a.pcap"), Path()]
)
def test_the_inverse_refuses_what_is_not_a_file_of_the_store(data_dir: Path, place: Path) -> None:
    with pytest.raises(OutsideSessionsDirectory):
        CaptureFile.stored_path(place)


def test_a_row_outside_the_sessions_directory_has_no_place_on_disk(
    escape: tuple[str, Path],
) -> None:
    text, _victim = escape
    row = make_capture_file(path=text)
    with pytest.raises(OutsideSessionsDirectory) as raised:
        row.on_disk()
    assert str(raised.value) == refusal(row)


# Every reader refuses it alike -----------------------------------------------------------


def test_the_export_refuses_it(client: Client, data_dir: Path, escape: tuple[str, Path]) -> None:
    from tests.jmirror_web.exports.evidence import stored_session

    stored = stored_session(data_dir)
    analyst = make_user(Role.ANALYST)
    assign(analyst, stored.case)
    row = stored.files[0]
    row.path = escape[0]
    row.save()
    client.force_login(analyst)
    response = client.get(reverse("exports:session", args=[stored.session.pk]), {"format": "pcap"})
    assert response.status_code == 400
    assert refusal(row) in response.content.decode()
    assert not Export.objects.exists()


def test_the_packet_page_refuses_it(
    client: Client, data_dir: Path, escape: tuple[str, Path]
) -> None:
    from tests.jmirror_web.exports.evidence import stored_session

    stored = stored_session(data_dir)
    analyst = make_user(Role.ANALYST)
    assign(analyst, stored.case)
    first = min(stored.files, key=lambda each: each.first_packet or DUE)
    first.path = escape[0]
    first.save()
    client.force_login(analyst)
    response = client.get(reverse("console:packet", args=[stored.session.pk, 1]))
    assert response.status_code == 200
    assert response.context["unavailable"] == refusal(first)


def test_the_verification_refuses_it(escape: tuple[str, Path]) -> None:
    row = make_capture_file(path=escape[0])
    check = verify_capture_file(row)
    assert (check.ok, check.detail) == (False, refusal(row))


def _ended_session() -> Any:
    case = make_case(
        valid_from=WARRANT_END - timedelta(days=60), valid_until=WARRANT_END, retention_days=30
    )
    return make_session(
        make_intercept(case),
        first_seen=WARRANT_END - timedelta(days=2),
        last_seen=WARRANT_END - timedelta(days=1),
    )


def test_the_purge_refuses_it_and_deletes_nothing_outside(escape: tuple[str, Path]) -> None:
    text, victim = escape
    row = make_capture_file(_ended_session(), path=text)
    report = purge(DUE)
    assert [(each.path, each.state, each.error) for each in report.files] == [
        (text, "failed", refusal(row))
    ]
    assert victim.read_bytes() == b"not the receiver's"
    assert CaptureFile.objects.get(pk=row.pk).purged_at is None
    assert not AuditEvent.objects.filter(action=PURGED).exists()


def test_finishing_an_earlier_purge_refuses_it_and_deletes_nothing_outside(
    escape: tuple[str, Path],
) -> None:
    text, victim = escape
    row = make_capture_file(_ended_session(), path=text, purged_at=DUE)
    report = purge(DUE)
    assert [(each.path, each.state, each.error) for each in report.files] == [
        (text, "failed", refusal(row))
    ]
    assert victim.read_bytes() == b"not the receiver's"
    assert CaptureFile.objects.get(pk=row.pk).file_deleted_at is None
