"""The upload queue on the health page (per receiver and node) and on the dashboard
(an alert when uploads fail or a file waits too long), from the receivers' rows."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from jmirror_web.console.health import UPLOAD_ALERT_SECONDS
from jmirror_web.intercepts.access import Role
from jmirror_web.object_store import StorageConfig
from tests.factories import make_user
from tests.jmirror_web.console.test_dashboard import dashboard, make_receiver
from tests.jmirror_web.console.test_health_load import URL, cell

pytestmark = pytest.mark.django_db


def test_the_health_page_shows_each_node_backlog_its_age_and_last_failure(
    client: Client, settings: Any
) -> None:
    settings.STORAGE = StorageConfig("evidence", "site-a", endpoint="http://s3.example:8333")
    make_receiver(
        node="capture-a",
        upload_backlog=12,
        upload_backlog_bytes=3 * 2**30,
        upload_oldest_seconds=UPLOAD_ALERT_SECONDS + 5,
        uploaded_files=345,
        upload_failures=7,
        last_upload_error="file 9: object store s3://evidence/site-a: upload failed (timeout)",
    )
    client.force_login(make_user(Role.SYSADMIN))
    text = client.get(URL).content.decode()
    assert "s3://evidence/site-a at http://s3.example:8333" in text
    assert 'data-node="capture-a"' in text
    assert cell(text, "upload_backlog") == "12"
    assert cell(text, "upload_oldest_seconds") == f"{UPLOAD_ALERT_SECONDS + 5:.0f}"
    assert re.search(r'class="num error" data-field="upload_oldest_seconds"', text)
    assert "upload failed (timeout)" in cell(text, "last_upload_error")


def test_without_a_store_the_health_page_says_files_stay_local(client: Client) -> None:
    make_receiver()
    client.force_login(make_user(Role.SYSADMIN))
    text = client.get(URL).content.decode()
    assert "None configured: capture files stay on each node" in text
    assert "health-uploads" not in text


def test_failing_uploads_and_an_old_backlog_alert_who_looks_after_the_service(
    client: Client,
) -> None:
    make_receiver(
        node="capture-a",
        upload_backlog=4,
        upload_oldest_seconds=UPLOAD_ALERT_SECONDS * 2,
        last_upload_error="object store s3://evidence: reaching the bucket failed (refused)",
    )
    page = dashboard(client, make_user(Role.SYSADMIN))
    assert (
        "Receiver mediation1:4242 (node capture-a): uploads to the evidence store are failing "
        "(4 files waiting): object store s3://evidence: reaching the bucket failed (refused)"
    ) in page
    assert "4 closed files not in the evidence store yet, the oldest for 20 minutes" in page


def test_a_queue_that_keeps_up_raises_no_alert(client: Client) -> None:
    # A failure that the next upload made good, and a fresh backlog: nothing to say.
    make_receiver(upload_backlog=2, upload_oldest_seconds=30, upload_failures=3)
    page = dashboard(client, make_user(Role.SYSADMIN))
    assert 'class="alert' not in page
