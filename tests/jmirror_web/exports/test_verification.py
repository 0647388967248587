"""Chain of custody after the fact: stored files re-hashed against their recorded SHA-256
(an altered one is reported, audited and stays an alert until verified again), and the
verify page telling which export a file or hash is."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from jmirror_web.exports.models import Export
from jmirror_web.exports.verification import verify_capture_file
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile
from tests.factories import assign, make_capture_file, make_user
from tests.jmirror_web.exports.evidence import Stored, body, events, stored_session

pytestmark = pytest.mark.django_db


def alter(data_dir: Path, capture: CaptureFile) -> None:
    path = data_dir / capture.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one bit of one packet's content
    path.write_bytes(bytes(data))


def test_an_untouched_file_verifies_and_the_check_is_audited(stored: Stored) -> None:
    capture = stored.files[0]
    check = verify_capture_file(capture, actor="os:test")
    assert (check.ok, check.detail) == (True, "matches the recorded SHA-256")
    capture.refresh_from_db()
    assert capture.verify_ok is True
    assert capture.verified_at is not None
    [event] = events("capture_file.verify")
    assert event.details["ok"] is True
    assert event.actor_name == "os:test"
    assert not events("capture_file.verify_failed")


def test_a_file_altered_on_disk_is_reported_audited_and_alerted(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    capture = stored.files[1]
    alter(data_dir, capture)
    check = verify_capture_file(capture)
    assert check.ok is False
    assert check.detail.startswith("SHA-256 on disk is ")
    assert check.detail.endswith(f"not the recorded {capture.sha256}")
    [failed] = events("capture_file.verify_failed")
    assert failed.object_id == str(capture.pk)
    assert failed.details["recorded_sha256"] == capture.sha256

    client.force_login(analyst)
    dashboard = client.get(reverse("home")).content.decode()
    assert f"stored file {capture.path} does not match its recorded SHA-256" in dashboard
    session_page = client.get(reverse("console:session", args=[stored.session.pk]))
    assert "data-altered" in session_page.content.decode()

    # Put back as it was: the next check clears the alert.
    alter(data_dir, capture)
    assert verify_capture_file(capture).ok is True
    assert "does not match" not in client.get(reverse("home")).content.decode()
    session_page = client.get(reverse("console:session", args=[stored.session.pk]))
    assert "data-altered" not in session_page.content.decode()


def test_the_alert_is_only_for_users_who_see_the_case(
    client: Client, stored: Stored, data_dir: Path
) -> None:
    alter(data_dir, stored.files[0])
    verify_capture_file(stored.files[0])
    other = make_user(Role.ANALYST)
    client.force_login(other)
    assert "does not match" not in client.get(reverse("home")).content.decode()
    client.force_login(make_user(Role.LI_ADMIN))
    assert "does not match" in client.get(reverse("home")).content.decode()


def test_a_missing_file_is_a_mismatch(stored: Stored, data_dir: Path) -> None:
    (data_dir / stored.files[0].path).unlink()
    check = verify_capture_file(stored.files[0])
    assert (check.ok, check.detail) == (False, "the file is missing from disk")


def test_open_and_purged_files_are_skipped(stored: Stored) -> None:
    open_file = make_capture_file(stored.session, closed=False, sha256="")
    assert verify_capture_file(open_file).ok is None
    purged = stored.files[0]
    purged.purged_at = purged.created_at
    assert verify_capture_file(purged).ok is None
    assert not events("capture_file.verify")


def test_verify_files_prints_each_file_and_exits_1_on_a_mismatch(
    stored: Stored, data_dir: Path
) -> None:
    output = io.StringIO()
    call_command("verify_files", "--case", stored.case.reference, stdout=output)
    assert output.getvalue().count("ok       ") == 3
    assert "3 files checked, 0 altered or missing" in output.getvalue()

    alter(data_dir, stored.files[2])
    output = io.StringIO()
    with pytest.raises(CommandError, match="1 stored file") as raised:
        call_command("verify_files", "--session", str(stored.session.pk), stdout=output)
    assert raised.value.returncode == 1
    assert f"MISMATCH {stored.files[2].path}: SHA-256 on disk is" in output.getvalue()
    assert events("capture_file.verify_failed")[0].actor_name.startswith("os:")


def test_verify_files_only_checks_the_case_asked_for(stored: Stored, data_dir: Path) -> None:
    other = stored_session(data_dir, count=2)
    alter(data_dir, other.files[0])
    output = io.StringIO()
    call_command("verify_files", "--case", stored.case.reference, stdout=output)
    assert other.files[0].path not in output.getvalue()
    with pytest.raises(CommandError, match="No case 'NOPE'"):
        call_command("verify_files", "--case", "NOPE", stdout=io.StringIO())


def test_the_session_page_button_reverifies_for_the_download_right(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    alter(data_dir, stored.files[0])
    client.force_login(analyst)
    url = reverse("exports:verify_session_files", args=[stored.session.pk])
    page = client.get(reverse("console:session", args=[stored.session.pk])).content.decode()
    assert f'action="{url}"' in page
    response = client.post(url, follow=True)
    text = response.content.decode()
    assert "1 of 3 file(s) do not match their recorded SHA-256" in text
    assert len(events("capture_file.verify")) == 3


def test_users_without_the_right_cannot_reverify(client: Client, stored: Stored) -> None:
    url = reverse("exports:verify_session_files", args=[stored.session.pk])
    for user in (make_user(Role.ANALYST), make_user(Role.AUDITOR), make_user(Role.SYSADMIN)):
        client.force_login(user)
        assert client.post(url).status_code == 404
    client.logout()
    assert client.post(url).status_code == 302
    assert not events("capture_file.verify")
    assert len(events("export.refused")) == 4


def test_an_li_administrator_reverifies_without_an_assignment(
    client: Client, stored: Stored
) -> None:
    client.force_login(make_user(Role.LI_ADMIN))
    url = reverse("exports:verify_session_files", args=[stored.session.pk])
    assert client.post(url).status_code == 302
    assert len(events("capture_file.verify")) == 3


# The verify page -----------------------------------------------------------------------


@pytest.fixture
def exported(client: Client, stored: Stored, analyst: User) -> tuple[Export, bytes]:
    client.force_login(analyst)
    data = body(
        client.get(reverse("exports:session", args=[stored.session.pk]), {"format": "pcap"})
    )
    return Export.objects.get(), data


def test_an_uploaded_export_is_recognised(client: Client, exported: tuple[Export, bytes]) -> None:
    export, data = exported
    upload = SimpleUploadedFile("evidence.pcap", data)
    response = client.post(reverse("exports:verify"), {"file": upload})
    assert response.status_code == 200
    text = response.content.decode()
    assert f'href="{reverse("exports:manifest", args=[export.pk])}"' in text
    assert export.sha256 in text
    [event] = events("export.verify")
    assert event.details["exports"] == [export.pk]
    assert event.details["size"] == len(data)


def test_a_pasted_hash_of_a_stored_file_is_recognised(
    client: Client, stored: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    capture = stored.files[0]
    response = client.post(reverse("exports:verify"), {"sha256": capture.sha256.upper()})
    assert f"Stored capture file {capture.path}" in response.content.decode()
    assert events("export.verify")[0].details["capture_files"] == [capture.pk]


def test_an_altered_export_matches_nothing(client: Client, exported: tuple[Export, bytes]) -> None:
    _, data = exported
    upload = SimpleUploadedFile("evidence.pcap", data[:-1] + bytes([data[-1] ^ 1]))
    response = client.post(reverse("exports:verify"), {"file": upload})
    assert "data-no-match" in response.content.decode()
    assert events("export.verify")[0].details["exports"] == []


def test_matches_the_user_may_not_see_are_not_shown(
    client: Client, exported: tuple[Export, bytes]
) -> None:
    export, _ = exported
    client.force_login(make_user(Role.ANALYST))  # of no case
    response = client.post(reverse("exports:verify"), {"sha256": export.sha256})
    text = response.content.decode()
    assert "data-no-match" in text
    assert export.file_name not in text
    assert events("export.verify")[0].details["not_shown"] == 1


def test_an_auditor_sees_every_matching_export(
    client: Client, exported: tuple[Export, bytes]
) -> None:
    export, _ = exported
    client.force_login(make_user(Role.AUDITOR))
    response = client.post(reverse("exports:verify"), {"sha256": export.sha256})
    assert export.file_name in response.content.decode()


def test_an_upload_over_the_limit_is_refused_unread(
    client: Client, analyst: User, settings: object
) -> None:
    settings.JMIRROR_VERIFY_MAX_MB = 1  # type: ignore[attr-defined]
    client.force_login(analyst)
    upload = SimpleUploadedFile("big.pcap", b"x" * (2 * 1024 * 1024))
    response = client.post(reverse("exports:verify"), {"file": upload})
    assert response.status_code == 400
    assert "The file is larger than 1 MB: it was not read." in response.content.decode()
    assert events("export.verify")[0].details == {"outcome": "file too large"}


def test_an_upload_just_under_the_limit_is_hashed(
    client: Client, analyst: User, settings: object
) -> None:
    settings.JMIRROR_VERIFY_MAX_MB = 1  # type: ignore[attr-defined]
    client.force_login(analyst)
    data = b"y" * (1024 * 1024)
    response = client.post(reverse("exports:verify"), {"file": SimpleUploadedFile("a", data)})
    assert response.status_code == 200
    assert hashlib.sha256(data).hexdigest() in response.content.decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "Choose a file or paste a SHA-256."),
        ({"sha256": "abc"}, "A SHA-256 is 64 hexadecimal digits."),
        ({"sha256": "g" * 64}, "A SHA-256 is 64 hexadecimal digits."),
    ],
)
def test_the_verify_form_explains_what_it_needs(
    client: Client, analyst: User, fields: dict[str, str], message: str
) -> None:
    client.force_login(analyst)
    response = client.post(reverse("exports:verify"), fields)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_the_verify_page_checks_csrf(analyst: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(analyst)
    assert client.post(reverse("exports:verify"), {"sha256": "a" * 64}).status_code == 403
    page = client.get(reverse("exports:verify"))
    assert page.status_code == 200
    token = page.cookies["csrftoken"].value
    ok = client.post(reverse("exports:verify"), {"sha256": "a" * 64, "csrfmiddlewaretoken": token})
    assert ok.status_code == 200


def test_the_verify_page_needs_a_sign_in(client: Client) -> None:
    response = client.get(reverse("exports:verify"))
    assert response.status_code == 302
    assert events("export.refused")[0].details["reason"] == "not signed in"


def test_other_assigned_analysts_see_the_altered_files_too(
    client: Client, stored: Stored, data_dir: Path
) -> None:
    colleague = make_user(Role.ANALYST)
    assign(colleague, stored.case)
    alter(data_dir, stored.files[0])
    verify_capture_file(stored.files[0])
    client.force_login(colleague)
    assert "does not match its recorded SHA-256" in client.get(reverse("home")).content.decode()


def test_an_li_administrator_sees_the_verify_button_but_no_download_form(
    client: Client, stored: Stored
) -> None:
    client.force_login(make_user(Role.LI_ADMIN))
    page = client.get(reverse("console:session", args=[stored.session.pk])).content.decode()
    assert reverse("exports:verify_session_files", args=[stored.session.pk]) in page
    assert reverse("exports:session", args=[stored.session.pk]) not in page
    for capture in stored.files:
        assert capture.sha256 in page


def test_every_signed_in_user_finds_the_verify_page_in_the_navigation(
    client: Client, analyst: User
) -> None:
    client.force_login(make_user(Role.SYSADMIN))
    assert f'href="{reverse("exports:verify")}"' in client.get(reverse("home")).content.decode()
