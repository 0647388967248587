"""Start-up reconciliation of session counters with the evidence a crash left on disk.

A receiver killed without warning (``kill -9``, a power cut, the OOM killer) has its
packets in the page cache, and the start-up repair (:meth:`receiver.store.PcapStore.recover`,
``close_finished_rows``) makes each file's row say exactly what the file holds. Its session
counters, though, are written from a separate thread about once a second: the counts of
the last second died with the process. :func:`reconcile_sessions` raises the counters of
every session whose files were repaired to at least what its files hold, and logs and
audits each correction.

Counters are only ever raised, never lowered: a file row says what reached the disk, so
it is a lower bound of what was stored. (The live receiver hands its buffers to the
kernel before each snapshot of its counts, so a session's counters never run ahead of
its files; see ``Receiver.tick``.) Another receiver may be writing the same session at
the same time (SO_REUSEPORT moves a dead receiver's streams to its sibling), so the
update is made of SQL expressions on the row's current values, not of values read first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest, Least

from jmirror_web.audit.log import record
from jmirror_web.intercepts.models import CaptureFile, Session

logger = logging.getLogger(__name__)

#: The audit action of one session's correction, and who the event names.
RECONCILED: Final = "session counts reconciled"
RECEIVER_ACTOR: Final = "system:receiver"

# A stored packet is the jmirror datagram without its 8-byte header, in a record with a
# 16-byte header, in a file with a 24-byte header (receiver.store). A session's ``bytes``
# counts whole datagrams, so a file of P packets and S bytes held S - 24 - 8 * P of them.
_FILE_HEADER: Final = 24
_JMIRROR_HEADER: Final = 8
_RECORD_HEADER: Final = 16

_COUNTERS: Final = ("stored_packets", "packets", "bytes", "first_seen", "last_seen")


def _what_files_hold(session_id: int) -> tuple[int, int, datetime | None, datetime | None]:
    """Packets, datagram bytes, first and last packet time of a session's file rows
    (purged files included: their rows keep what the files held)."""
    packets = datagram_bytes = 0
    first: datetime | None = None
    last: datetime | None = None
    for count, size, first_packet, last_packet in CaptureFile.objects.filter(
        session_id=session_id, packets__gt=0
    ).values_list("packets", "bytes", "first_packet", "last_packet"):
        packets += count
        datagram_bytes += max(0, size - _FILE_HEADER - count * (_RECORD_HEADER - _JMIRROR_HEADER))
        if first_packet is not None and (first is None or first_packet < first):
            first = first_packet
        if last_packet is not None and (last is None or last_packet > last):
            last = last_packet
    return packets, datagram_bytes, first, last


def _counters(session_id: int) -> dict[str, Any] | None:
    counters: dict[str, Any] | None = (
        Session.objects.filter(pk=session_id).values(*_COUNTERS).first()
    )
    return counters


def reconcile_sessions(session_ids: Iterable[int]) -> int:
    """Raise the counters of each session to at least what its files hold: stored packets
    to the files' packets, received packets by as many as were missing from the stored
    ones (every stored packet was received), bytes to the files' datagram bytes, and the
    first and last time seen out to the files' packet times. Returns how many sessions
    were corrected; each correction is logged and audited with the values before and
    after."""
    corrected = 0
    for session_id in sorted(set(session_ids)):
        with transaction.atomic():
            packets, datagram_bytes, first, last = _what_files_hold(session_id)
            if not packets:
                continue
            before = _counters(session_id)
            if before is None:
                continue
            changes: dict[str, Any] = {
                "stored_packets": Greatest(F("stored_packets"), Value(packets)),
                # Missing stored packets were missing from the received ones too. SET
                # expressions read the row as it was, on SQLite and PostgreSQL alike.
                "packets": Greatest(
                    F("packets"),
                    F("packets") + Value(packets) - F("stored_packets"),
                    Value(packets),
                ),
                "bytes": Greatest(F("bytes"), Value(datagram_bytes)),
            }
            if first is not None:
                changes["first_seen"] = Least(F("first_seen"), Value(first))
            if last is not None:
                changes["last_seen"] = Greatest(F("last_seen"), Value(last))
            Session.objects.filter(pk=session_id).update(**changes)
            after = _counters(session_id)
            if after is None or after == before:
                continue
            session = Session.objects.select_related("router").get(pk=session_id)
            changed = {
                name: {"before": _plain(before[name]), "after": _plain(after[name])}
                for name in _COUNTERS
                if before[name] != after[name]
            }
            record(
                RECONCILED,
                session,
                actor=RECEIVER_ACTOR,
                details={
                    "reason": "files repaired after a receiver stopped without closing them",
                    "file_packets": packets,
                    "changed": changed,
                },
            )
        corrected += 1
        logger.warning(
            "session %s (id %d): counters raised to what its files hold after a crash: %s",
            session,
            session_id,
            ", ".join(
                f"{name} {values['before']} -> {values['after']}"
                for name, values in changed.items()
            ),
        )
    return corrected


def _plain(value: Any) -> Any:
    """A counter as the audit details can hold it (JSON): times as ISO 8601 text."""
    return value.isoformat() if isinstance(value, datetime) else value
