"""``manage.py receive``: live capture of jmirror streams into per-session pcap files.

The capture itself is :class:`receiver.worker.Receiver` (no Django). This module is the
Django shell around it: it repairs files a killed receiver left open, builds the gate from
the records and reloads it when they change, and writes the receiver's counters and
closed files to the database from a separate thread, so a slow or absent database never
holds up the receive loop (counters are kept and written once it answers again).
"""

from __future__ import annotations

import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Final

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection, transaction
from django.db.models import F

from jmirror_web.intercepts.models import CaptureFile, Intercept, Router, Session
from receiver.gate_loader import gate_fingerprint, load_gate
from receiver.store import ClosedFile, PcapStore
from receiver.worker import (
    DEFAULT_RCVBUF,
    Receiver,
    SessionDelta,
    Snapshot,
    StreamKey,
    parse_listen,
)

logger = logging.getLogger("receiver.receive")

# Counters and file rows reach the database at least this often; the gate fingerprint is
# polled at the same pace, so a change to the records takes effect within about 2 s.
WRITE_INTERVAL: Final = 1.0
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# session_directory_name() in receiver.store: <liid>_<router>_mid-<hex>_sid-<hex>.
_DIRECTORY = re.compile(
    r"^(?P<liid>.+)_(?P<router>[^_]+)_mid-(?P<mid>[0-9a-f]{8})_sid-(?P<sid>[0-9a-f]{8})$"
)


def moment(time_ns: int) -> datetime:
    """Nanoseconds since the epoch as an aware UTC datetime (to the microsecond)."""
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def file_path(root: Path, relative: Path) -> str:
    """A CaptureFile path: relative to the data directory when the file is under it."""
    path = root / relative
    try:
        return str(path.relative_to(settings.DATA_DIR))
    except ValueError:
        return str(path)


class Bookkeeper:
    """Collects the receiver's snapshots and writes them to the database in batches.

    Only its own thread touches the pending state. A failed write keeps everything for
    the next attempt: counters are deltas, so nothing is counted twice or lost.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sessions: dict[StreamKey, SessionDelta] = {}
        self.closed: list[ClosedFile] = []

    def absorb(self, snapshot: Snapshot) -> None:
        for key, delta in snapshot.sessions.items():
            pending = self.sessions.get(key)
            if pending is None:
                self.sessions[key] = delta
            else:
                pending.merge(delta)
        self.closed += snapshot.closed_files

    def write(self) -> bool:
        """Write what is pending in one transaction; False (logged) when the database
        refused, with everything kept for the next call."""
        if not self.sessions and not self.closed:
            return True
        try:
            with transaction.atomic():
                self._write_sessions()
                self._write_files()
        except DatabaseError as error:
            logger.warning(
                "database write failed (%s); keeping %d session counters and %d file rows "
                "for the next attempt",
                error,
                len(self.sessions),
                len(self.closed),
            )
            # A broken connection is not reused; Django opens a new one on the next query.
            connection.close()
            return False
        self.sessions.clear()
        self.closed.clear()
        return True

    def _write_sessions(self) -> None:
        for (_address, mid, sid), delta in self.sessions.items():
            updated = Session.objects.filter(router_id=delta.router_id, mid=mid, sid=sid).update(
                intercept_id=delta.intercept_pk,
                last_seen=moment(delta.last_ns),
                packets=F("packets") + delta.packets,
                bytes=F("bytes") + delta.bytes,
                stored_packets=F("stored_packets") + delta.stored,
            )
            if not updated:
                Session.objects.create(
                    router_id=delta.router_id,
                    intercept_id=delta.intercept_pk,
                    mid=mid,
                    sid=sid,
                    first_seen=moment(delta.first_ns),
                    last_seen=moment(delta.last_ns),
                    packets=delta.packets,
                    bytes=delta.bytes,
                    stored_packets=delta.stored,
                )

    def _write_files(self) -> None:
        for closed in self.closed:
            if closed.session is None:
                continue  # recovered files are written at start by record_recovered()
            session = Session.objects.get(
                router__address=closed.session.router,
                mid=closed.session.mid,
                sid=closed.session.sid,
            )
            save_file_row(session, self.root, closed)


def save_file_row(session: Session, root: Path, closed: ClosedFile) -> None:
    CaptureFile.objects.update_or_create(
        path=file_path(root, closed.path),
        defaults={
            "session": session,
            "first_packet": moment(closed.first_ns),
            "last_packet": moment(closed.last_ns),
            "packets": closed.packets,
            "bytes": closed.bytes,
            "sha256": closed.sha256,
            "closed": True,
        },
    )


def record_recovered(root: Path, recovered: Sequence[ClosedFile]) -> None:
    """Close the rows of files a killed receiver left open, creating missing rows (and
    their session) from the directory name."""
    for closed in recovered:
        path = file_path(root, closed.path)
        row = CaptureFile.objects.filter(path=path).select_related("session").first()
        if row is not None:
            save_file_row(row.session, root, closed)
            continue
        match = _DIRECTORY.match(closed.path.parent.name)
        router = None
        if match is not None:
            address = match["router"]
            address = address.replace("-", ":") if "-" in address else address
            router = Router.objects.filter(address=address).first()
        if match is None or router is None:
            logger.error("recovered %s but cannot tell its router: no database row made", path)
            continue
        session, _ = Session.objects.get_or_create(
            router=router,
            mid=int(match["mid"], 16),
            sid=int(match["sid"], 16),
            defaults={
                "intercept": Intercept.objects.filter(liid=match["liid"]).first(),
                "first_seen": moment(closed.first_ns),
                "last_seen": moment(closed.last_ns),
            },
        )
        save_file_row(session, root, closed)


def serve(
    listen: Sequence[tuple[str, int]],
    *,
    root: Path,
    stop: threading.Event,
    rcvbuf: int = DEFAULT_RCVBUF,
    ready: Callable[[Receiver], None] | None = None,
) -> Receiver:
    """Receive until ``stop`` is set, then close every file, write the last counters and
    file rows, and return the receiver (for its counters). Runs the capture loop in the
    calling thread and the database work in a second one."""
    root.mkdir(parents=True, exist_ok=True)
    recovered = PcapStore.recover(root)
    record_recovered(root, recovered)
    if recovered:
        logger.info("recovered %d files left open by an earlier receiver", len(recovered))
    fingerprint = gate_fingerprint()
    snapshots: queue.Queue[Snapshot] = queue.Queue()
    receiver = Receiver(
        listen,
        load_gate(),
        PcapStore(root),
        rcvbuf=rcvbuf,
        on_tick=[snapshots.put],
        stop_event=stop,
    )
    for warning in receiver.warnings:
        logger.warning("%s", warning)
    bookkeeper = Bookkeeper(root)

    def bookkeeping() -> None:
        nonlocal fingerprint
        next_write = time.monotonic() + WRITE_INTERVAL
        final = False
        try:
            while not final:
                try:
                    snapshot = snapshots.get(timeout=0.2)
                    bookkeeper.absorb(snapshot)
                    final = snapshot.final
                except queue.Empty:
                    pass
                if time.monotonic() < next_write and not final:
                    continue
                next_write = time.monotonic() + WRITE_INTERVAL
                if not final:
                    try:
                        latest = gate_fingerprint()
                        if latest != fingerprint:
                            receiver.gate = load_gate()
                            fingerprint = latest
                            logger.info("records changed: gate reloaded (%r)", receiver.gate)
                    except DatabaseError as error:
                        logger.warning("cannot check the records (%s); keeping the gate", error)
                        connection.close()
                bookkeeper.write()
            # Last chance at shutdown: one retry, well within the 5 s SIGTERM budget.
            if not bookkeeper.write():
                time.sleep(0.5)
                if not bookkeeper.write():
                    logger.error("shutdown: counters and file rows could not be written")
        finally:
            connection.close()

    writer = threading.Thread(target=bookkeeping, name="receive-bookkeeping", daemon=True)
    writer.start()
    if ready is not None:
        ready(receiver)
    try:
        receiver.run()
    finally:
        stop.set()
        writer.join(timeout=4)
    return receiver


class Command(BaseCommand):
    help = (
        "Receive jmirror mirror streams on UDP and store the packets of intercepts in force "
        "into per-session pcap files under the data directory; counters go to the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen",
            action="append",
            metavar="HOST:PORT",
            help="UDP address to listen on, repeatable (default: JMIRROR_LISTEN)",
        )
        parser.add_argument(
            "--rcvbuf",
            type=int,
            default=DEFAULT_RCVBUF,
            metavar="BYTES",
            help="socket receive buffer to ask for (default: 32 MiB)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            listen = (
                [parse_listen(text) for text in options["listen"]]
                if options["listen"]
                else list(settings.JMIRROR_LISTEN)
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        if options["rcvbuf"] <= 0:
            raise CommandError("--rcvbuf must be a positive number of bytes")
        stop = threading.Event()

        def on_signal(number: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        def ready(receiver: Receiver) -> None:
            where = ", ".join(f"{host}:{port}" for host, port in receiver.addresses)
            self.stdout.write(f"receiving jmirror on {where}")

        try:
            receiver = serve(
                listen,
                root=Path(settings.DATA_DIR) / "sessions",
                stop=stop,
                rcvbuf=options["rcvbuf"],
                ready=ready,
            )
        except OSError as error:
            raise CommandError(f"cannot listen: {error}") from None
        counters = receiver.counters
        self.stdout.write(
            f"stopped: {counters.datagrams} datagrams, {counters.malformed} malformed, "
            f"drops {dict(counters.drops)}, {len(receiver.final_closed)} files closed"
        )
