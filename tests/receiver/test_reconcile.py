"""Start-up reconciliation: a session's counters are raised to what its files hold."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from jmirror_web.audit.models import AuditEvent
from receiver.reconcile import RECEIVER_ACTOR, RECONCILED, reconcile_sessions
from tests.factories import make_capture_file, make_session

pytestmark = pytest.mark.django_db


def test_counters_behind_the_files_are_raised_to_them_logged_and_audited(caplog):
    session = make_session(packets=31_900, stored_packets=31_872, bytes=3_000_000)
    later = session.last_seen + timedelta(seconds=2)
    # Two files: 40,000 + 9,858 packets of 100-byte datagrams (92 bytes stored each).
    make_capture_file(session, packets=40_000, bytes=24 + 40_000 * (16 + 92))
    make_capture_file(session, packets=9_858, bytes=24 + 9_858 * (16 + 92), last_packet=later)

    with caplog.at_level(logging.WARNING, logger="receiver.reconcile"):
        assert reconcile_sessions([session.pk]) == 1

    session.refresh_from_db()
    assert session.stored_packets == 49_858
    # The 17,986 stored packets the counters missed were received packets too.
    assert session.packets == 31_900 + 49_858 - 31_872
    assert session.bytes == 49_858 * 100
    assert session.last_seen == later
    event = AuditEvent.objects.get(action=RECONCILED)
    assert event.actor_name == RECEIVER_ACTOR
    assert event.object_id == str(session.pk)
    assert event.details["changed"]["stored_packets"] == {"before": 31_872, "after": 49_858}
    assert event.details["file_packets"] == 49_858
    lines = [each.getMessage() for each in caplog.records]
    assert len(lines) == 1
    assert "stored_packets 31872 -> 49858" in lines[0]

    # Once reconciled, nothing is left to correct: no second event, no second line.
    caplog.clear()
    assert reconcile_sessions([session.pk]) == 0
    assert AuditEvent.objects.filter(action=RECONCILED).count() == 1
    assert not caplog.records


def test_counters_ahead_of_the_files_are_never_lowered():
    """A file row is a lower bound of what was stored (another receiver may be adding
    to the same session, files may have failed to write): never a reason to lower."""
    session = make_session(packets=500, stored_packets=400, bytes=50_000)
    make_capture_file(session, packets=300, bytes=24 + 300 * 108, last_packet=session.first_seen)

    assert reconcile_sessions([session.pk]) == 0

    before = (session.packets, session.stored_packets, session.bytes, session.last_seen)
    session.refresh_from_db()
    assert (session.packets, session.stored_packets, session.bytes, session.last_seen) == before
    assert not AuditEvent.objects.filter(action=RECONCILED).exists()


def test_a_session_without_files_or_gone_is_left_alone():
    session = make_session(packets=5, stored_packets=5)
    assert reconcile_sessions([session.pk, 999_999]) == 0
    session.refresh_from_db()
    assert (session.packets, session.stored_packets) == (5, 5)
