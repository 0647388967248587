"""``manage.py import_pcap FILE [--port N ...]``: store an offline capture as if received live.

A capture taken on a mediation host (tcpdump, dumpcap) while the receiver was down, or on
another host, holds jmirror datagrams that should end up where live ones do. This command
reads the file with :mod:`receiver.pcap_reader` (pcap or pcapng, every link type it supports,
outer IP fragments reassembled), keeps the UDP datagrams to the jmirror ports, and feeds
them to the same :class:`receiver.pipeline.DatagramPipeline` the live receiver uses: the same gate
(decided with each frame's **capture time**, so a packet outside its warrant's window is
dropped and counted as it would have been live), the same per-session pcap store (files
named and stamped with the capture times, rotated by capture time), and the same
:class:`~receiver.bookkeeping.Bookkeeper` writing Session, CaptureFile,
UnclaimedStream and ReceiverProcess rows. Nothing unclaimed reaches the disk.

Chain of custody: the input's SHA-256 is computed before anything is stored; a
``capture.import_started`` audit event is appended (in the same transaction as the check
for an earlier import of the same bytes, so two concurrent imports cannot both pass), and
a ``capture.import`` event at the end carries the file's name, size, SHA-256, outcome and
counts. The bytes imported are hashed again as they are read: a file that changed in
between is reported. Importing the same bytes a second time would store every packet
twice, so it is refused unless ``--again`` is given (an earlier import that stored
nothing does not count; one that never finished does).

Exit status: 0 when the whole file was imported; 2 when the input was refused and nothing
was stored (missing, not a regular file, too large, not a capture, already imported, bad
options); 1 when the import ran but stopped short (truncated or corrupt capture,
interrupted, file changed while read, database rows not written). In the last case
everything read before the problem is stored, its files closed, hashed and recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import signal
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BufferedReader
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Final, cast

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import DatabaseError, transaction

from jmirror_web.audit.actors import shell_actor
from jmirror_web.audit.log import acting_as, record
from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.models import Router
from receiver.bookkeeping import Bookkeeper, file_path
from receiver.gate import DROP_REASONS
from receiver.gate_loader import GateWatcher
from receiver.jmirror import WIRESHARK_DEFAULT_PORT
from receiver.management.commands.decode import udp_port
from receiver.pcap_reader import FRAGMENTS_INCOMPLETE, CaptureError, iter_frames, iter_udp_datagrams
from receiver.pcap_reader import Frame as CaptureFrame
from receiver.pipeline import DatagramPipeline, Snapshot, StreamKey
from receiver.store import FileFacts, PcapStore

logger = logging.getLogger(__name__)

STARTED: Final = "capture.import_started"
IMPORTED: Final = "capture.import"
REFUSED: Final = "capture.import_refused"

COMPLETE: Final = "complete"
TRUNCATED: Final = "truncated"
INTERRUPTED: Final = "interrupted"
CHANGED: Final = "changed"

DEFAULT_MAX_BYTES: Final = 64 * 2**30
# DatagramPipeline time between ticks: file expiry and snapshots follow the capture's clock.
TICK_NS: Final = 250_000_000
# Wall time between database writes (and gate reloads), and between progress updates.
WRITE_INTERVAL: Final = 1.0
PROGRESS_INTERVAL: Final = 0.25
# Frames between looks at the wall clock and the stop flag: a clock read per frame
# would cost more than the bookkeeping it paces.
_CHECK_EVERY: Final = 512
_CHUNK: Final = 1 << 20
# Files listed in the audit event; the CaptureFile rows list them all.
_AUDIT_FILES_LIMIT: Final = 1000
# Exit statuses (argparse's own usage errors exit with 2 as well).
_REFUSED: Final = 2
_INCOMPLETE: Final = 1
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def byte_size(text: str) -> int:
    """``--max-bytes``: a positive number of bytes, with an optional K, M, G or T suffix
    (binary: 64G is 64 GiB)."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 1048576, 64G)")
    size = int(match[1]) * _UNITS[match[2].lower()]
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return size


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def iso_ns(time_ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC to the nanosecond."""
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanoseconds:09d}Z"


def default_ports() -> list[int]:
    """The ports the receiver would listen on: JMIRROR_LISTEN, every jmirror router's
    port, and Wireshark's default 30030."""
    ports = {port for _, port in settings.JMIRROR_LISTEN}
    ports.update(Router.objects.filter(format=Router.Format.JMIRROR).values_list("port", flat=True))
    ports.add(WIRESHARK_DEFAULT_PORT)
    return sorted(ports)


class _HashingReader:
    """The first ``limit`` bytes of ``stream``, hashed and counted as they are read.

    The limit is the size measured before the import: a capture still growing (tcpdump
    still writing it) is imported up to exactly the bytes that were hashed.
    """

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self.position = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        remaining = self._limit - self.position
        if size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        data = self._stream.read(size)
        self.sha256.update(data)
        self.position += len(data)
        return data


class Progress:
    """A one-line progress report on a terminal, rewritten in place with ``\\r``."""

    def __init__(self, out: OutputWrapper | None, total: int) -> None:
        self._out = out
        self._total = max(total, 1)
        self._started = time.monotonic()
        self._next = 0.0
        self._width = 0

    def show(self, label: str, done: int, extra: str = "", *, force: bool = False) -> None:
        if self._out is None:
            return
        now = time.monotonic()
        if now < self._next and not force:
            return
        self._next = now + PROGRESS_INTERVAL
        fraction = min(done / self._total, 1.0)
        filled = int(fraction * 24)
        line = (
            f"{label} [{'#' * filled}{'.' * (24 - filled)}] {fraction:6.1%} "
            f"{human_bytes(done)} of {human_bytes(self._total)}"
        )
        if extra:
            line += f", {extra}"
        padding = " " * max(self._width - len(line), 0)
        self._width = len(line)
        self._out.write(f"\r{line}{padding}", ending="", style_func=str)
        self._out.flush()

    def end(self) -> None:
        """Clear the line so that what follows starts on a clean one."""
        if self._out is None or not self._width:
            return
        self._out.write("\r" + " " * self._width + "\r", ending="", style_func=str)
        self._out.flush()
        self._width = 0


@dataclass
class Tally:
    """What the import stored, gathered from the capture's snapshots."""

    sessions: set[StreamKey] = field(default_factory=set)
    stored: int = 0
    files: list[FileFacts] = field(default_factory=list)

    def absorb(self, snapshot: Snapshot) -> None:
        for key, delta in snapshot.sessions.items():
            self.sessions.add(key)
            self.stored += delta.stored
        self.files += snapshot.closed_files


@dataclass
class Outcome:
    """The result of reading the capture through the pipeline."""

    status: str = COMPLETE
    error: str = ""
    frames: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    # Datagrams to ports not selected, by port: a hint when --port was forgotten.
    by_other_port: Counter[int] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    sha256: str = ""
    bytes_read: int = 0
    stopped: bool = False  # by SIGINT or SIGTERM, before the end of the file

    @property
    def other_ports(self) -> int:
        return self.by_other_port.total()


class Command(BaseCommand):
    help = (
        "Import a pcap or pcapng capture of jmirror streams (e.g. taken by tcpdump on a "
        "mediation host): UDP datagrams to the given ports go through the receiver's gate "
        "and store with their capture times, as if received live. Counters, files and an "
        "audit event are recorded; the same file (by SHA-256) is imported only once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="pcap or pcapng capture file")
        parser.add_argument(
            "--port",
            type=udp_port,
            action="append",
            default=[],
            metavar="N",
            help="import UDP datagrams to this port (repeatable; default: the ports of "
            "JMIRROR_LISTEN, every router's port and 30030)",
        )
        parser.add_argument(
            "--again",
            action="store_true",
            help="import even if the same file (same SHA-256) was imported before: every "
            "packet stored then is stored a second time",
        )
        parser.add_argument(
            "--max-bytes",
            type=byte_size,
            default=DEFAULT_MAX_BYTES,
            metavar="SIZE",
            help="refuse files larger than this (bytes, or with a K/M/G/T suffix; default 64G)",
        )
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="show a progress bar on stderr (default: only when stderr is a terminal)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        size = self._check_file(path, options["max_bytes"])
        wanted = options["progress"]
        show = self.stderr.isatty() if wanted is None else wanted
        progress = Progress(self.stderr if show else None, size)
        stop = threading.Event()
        previous_handlers = self._catch_signals(stop)
        try:
            with acting_as(shell_actor()):
                self._import(path, size, options["port"], options["again"], progress, stop)
        except DatabaseError as error:
            progress.end()
            raise CommandError(f"database error: {error}".splitlines()[0]) from None
        finally:
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)

    @staticmethod
    def _check_file(path: Path, limit: int) -> int:
        """The file's size, or a one-line refusal."""
        try:
            info = path.stat()
        except OSError as error:
            raise CommandError(f"{path}: {error.strerror or error}", returncode=_REFUSED) from None
        if stat.S_ISDIR(info.st_mode):
            raise CommandError(f"{path}: is a directory", returncode=_REFUSED)
        if not stat.S_ISREG(info.st_mode):
            raise CommandError(
                f"{path}: not a regular file (a capture must be read twice: once to hash it)",
                returncode=_REFUSED,
            )
        if info.st_size > limit:
            raise CommandError(
                f"{path}: {info.st_size} bytes is over the limit of {limit} bytes "
                f"({human_bytes(limit)}); raise it with --max-bytes",
                returncode=_REFUSED,
            )
        return info.st_size

    def _import(
        self,
        path: Path,
        size: int,
        ports: list[int],
        again: bool,
        progress: Progress,
        stop: threading.Event,
    ) -> None:
        try:
            stream = path.open("rb")
        except OSError as error:
            raise CommandError(f"{path}: {error.strerror or error}", returncode=_REFUSED) from None
        with stream:
            try:
                iter_frames(stream)  # reads the file header only: is it a capture at all?
                stream.seek(0)
                sha256 = self._hash(stream, size, progress, stop)
                progress.end()
                stream.seek(0)
            except CaptureError as error:
                raise CommandError(f"{path}: {error}", returncode=_REFUSED) from None
            except OSError as error:
                progress.end()
                raise CommandError(
                    f"{path}: {error.strerror or error}", returncode=_REFUSED
                ) from None
            if stop.is_set():
                raise CommandError(f"{path}: interrupted while hashing; nothing was stored")
            selected = sorted(set(ports)) if ports else default_ports()
            identity = {
                "file": path.name,
                "path": str(path.resolve()),
                "size": size,
                "sha256": sha256,
                "ports": selected,
                "again": again,
            }
            started = self._claim(path, identity, again)
            self._run(stream, path, size, selected, identity, started, progress, stop)

    @staticmethod
    def _hash(stream: BufferedReader, size: int, progress: Progress, stop: threading.Event) -> str:
        digest = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        done = 0
        while done < size and not stop.is_set():
            count = stream.readinto(view[: min(_CHUNK, size - done)])
            if not count:
                break
            digest.update(view[:count])
            done += count
            progress.show("hashing  ", done)
        return digest.hexdigest()

    def _claim(self, path: Path, identity: dict[str, Any], again: bool) -> AuditEvent:
        """Append the start event, refusing (and rolling it back) when these bytes were
        imported before. One transaction, and the audit chain's lock taken by the append
        first, so that two imports of the same file cannot both pass the check."""
        refusal = None
        with transaction.atomic():
            started = record(STARTED, details=identity)
            if not again:
                refusal = self._earlier_import(identity["sha256"], started)
                if refusal is not None:
                    transaction.set_rollback(True)
        if refusal is not None:
            record(REFUSED, details=identity | {"reason": refusal})
            raise CommandError(f"{path}: {refusal}", returncode=_REFUSED)
        return started

    @staticmethod
    def _earlier_import(sha256: str, started: AuditEvent) -> str | None:
        """Why importing these bytes again would duplicate stored packets, or None."""
        earlier = list(
            AuditEvent.objects.filter(action__in=(STARTED, IMPORTED), details__sha256=sha256)
            .exclude(pk=started.pk)
            .order_by("id")
        )
        finished = {event.details.get("started_event") for event in earlier}
        for event in earlier:
            who = event.actor_name or "unknown"
            when = f"{event.created_at:%Y-%m-%d %H:%M:%S} UTC"
            if event.action == IMPORTED and event.details.get("stored", 0):
                return (
                    f"already imported on {when} by {who} ({event.details['stored']} packets "
                    f"stored, SHA-256 {sha256}); importing it again would store them twice: "
                    f"give --again to do so anyway"
                )
            if event.action == STARTED and event.pk not in finished:
                return (
                    f"an import of the same file (SHA-256 {sha256}) started on {when} by "
                    f"{who} never finished (still running, or killed): some of its packets "
                    f"may be stored already; give --again to import it anyway"
                )
        return None

    def _run(
        self,
        stream: BufferedReader,
        path: Path,
        size: int,
        ports: list[int],
        identity: dict[str, Any],
        started: AuditEvent,
        progress: Progress,
        stop: threading.Event,
    ) -> None:
        root = Path(settings.SESSIONS_DIR)
        root.mkdir(parents=True, exist_ok=True)
        # No PcapStore.recover() here: files left open under root may belong to a live
        # receiver running right now; recovering them is that receiver's job at start.
        bookkeeper = Bookkeeper(root)
        bookkeeper.register()
        tally = Tally()
        watcher = GateWatcher()
        # No quiet time (JMIRROR_SESSION_QUIET_SECONDS): times here are capture times, so a
        # pause in the recording would split a session's file for nothing; the import
        # closes (and hashes) every file when it ends, minutes at most after it began.
        capture = DatagramPipeline(
            watcher.gate, PcapStore(root), on_tick=[bookkeeper.absorb, tally.absorb]
        )
        reader = _HashingReader(stream, size)
        outcome = Outcome()
        began = time.monotonic()
        next_write = began + WRITE_INTERVAL

        def periodic() -> None:
            nonlocal next_write
            now = time.monotonic()
            if now >= next_write:
                next_write = now + WRITE_INTERVAL
                capture.gate = watcher.refresh()
                bookkeeper.write()
            elapsed = max(now - began, 1e-9)
            datagrams = capture.counters.datagrams
            progress.show(
                "importing",
                reader.position,
                f"{datagrams} datagrams ({datagrams / elapsed:,.0f}/s), {tally.stored} stored",
            )

        try:
            self._feed(capture, reader, ports, outcome, stop, periodic)
        except CaptureError as error:
            outcome.status = TRUNCATED
            outcome.error = f"{path}: {error}"
        finally:
            # Whatever stopped the reading, every file is closed, hashed and recorded.
            capture.finish(outcome.last_ns if outcome.last_ns is not None else time.time_ns())
            progress.end()
        if outcome.stopped and outcome.status == COMPLETE:
            outcome.status = INTERRUPTED
            outcome.error = (
                f"{path}: interrupted after {reader.position} of {size} bytes; what was read "
                f"is stored (importing the file again needs --again and stores that twice)"
            )
        outcome.sha256 = reader.sha256.hexdigest()
        outcome.bytes_read = reader.position
        if outcome.status == COMPLETE and (
            outcome.bytes_read != size or outcome.sha256 != identity["sha256"]
        ):
            outcome.status = CHANGED
            outcome.error = (
                f"{path}: the file changed while it was imported (SHA-256 {identity['sha256']} "
                f"before, {outcome.sha256} of the {outcome.bytes_read} bytes imported)"
            )
        written = bookkeeper.write() or bookkeeper.write()
        self._summary(path, identity, outcome, capture, tally, root)
        details = self._details(identity, started, outcome, capture, tally, root)
        try:
            record(IMPORTED, bookkeeper.process, details=details)
        except DatabaseError as error:
            written = False
            logger.error("the audit event of the import could not be written: %s", error)
        if not written:
            raise CommandError(
                f"{path}: the packets are stored but the database refused the session "
                f"counters, file rows or audit event (see the log)",
                returncode=_INCOMPLETE,
            )
        if outcome.status != COMPLETE:
            raise CommandError(outcome.error, returncode=_INCOMPLETE)

    @staticmethod
    def _feed(
        capture: DatagramPipeline,
        reader: _HashingReader,
        ports: list[int],
        outcome: Outcome,
        stop: threading.Event,
        periodic: Callable[[], None],
    ) -> None:
        """Feed every datagram to a selected port to the capture, ticking it with the
        capture's clock."""
        selected = frozenset(ports)
        handle = capture.handle
        skipped = outcome.skipped

        def frames() -> Iterator[CaptureFrame]:
            # Counts frames and their time range, and does the wall-clock work between
            # frames; stops reading when asked to.
            countdown = _CHECK_EVERY
            first: int | None = None
            last: int | None = None
            count = 0
            try:
                for frame in iter_frames(cast(BinaryIO, reader)):
                    count += 1
                    time_ns = frame[1]
                    if first is None or time_ns < first:
                        first = time_ns
                    if last is None or time_ns > last:
                        last = time_ns
                    yield frame
                    countdown -= 1
                    if not countdown:
                        countdown = _CHECK_EVERY
                        if stop.is_set():
                            outcome.stopped = True
                            return
                        periodic()
            finally:
                outcome.frames = count
                outcome.first_ns, outcome.last_ns = first, last

        latest = -1
        next_tick = -1
        other = outcome.by_other_port
        for _, time_ns, source, _, _, dport, payload in iter_udp_datagrams(frames(), skipped):
            if dport not in selected:
                other[dport] += 1
                continue
            if time_ns > latest:
                latest = time_ns
                if latest >= next_tick:
                    if next_tick >= 0:
                        capture.tick(latest)
                    next_tick = latest + TICK_NS
            handle(payload, source, time_ns)

    @staticmethod
    def _catch_signals(stop: threading.Event) -> dict[int, Any]:
        """SIGINT and SIGTERM end the reading cleanly (files closed, rows written)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(number: int, frame: FrameType | None) -> None:
            stop.set()

        return {
            number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)
        }

    @staticmethod
    def _details(
        identity: dict[str, Any],
        started: AuditEvent,
        outcome: Outcome,
        capture: DatagramPipeline,
        tally: Tally,
        root: Path,
    ) -> dict[str, Any]:
        counters = capture.counters
        files = [
            {"path": file_path(root, each.path), "packets": each.packets, "sha256": each.sha256}
            for each in tally.files
        ]
        details = identity | {
            "started_event": started.pk,
            "outcome": outcome.status,
            "bytes_read": outcome.bytes_read,
            "sha256_read": outcome.sha256,
            "frames": outcome.frames,
            "first_frame": iso_ns(outcome.first_ns) if outcome.first_ns is not None else None,
            "last_frame": iso_ns(outcome.last_ns) if outcome.last_ns is not None else None,
            "datagrams": counters.datagrams,
            "other_ports": outcome.other_ports,
            "stored": tally.stored,
            "drops": {reason: counters.drops[reason] for reason in DROP_REASONS},
            "malformed": counters.malformed,
            "unstorable": counters.unstorable,
            "internal_errors": counters.internal_error,
            "store_errors": dict(capture.store.store_errors),
            "sessions": len(tally.sessions),
            "files_total": len(files),
            "files": files[:_AUDIT_FILES_LIMIT],
        }
        if outcome.error:
            details["error"] = outcome.error
        return details

    def _summary(
        self,
        path: Path,
        identity: dict[str, Any],
        outcome: Outcome,
        capture: DatagramPipeline,
        tally: Tally,
        root: Path,
    ) -> None:
        counters = capture.counters
        lines = [
            f"{outcome.status}: {path} ({identity['size']} bytes, SHA-256 {identity['sha256']})",
        ]
        if outcome.first_ns is not None and outcome.last_ns is not None:
            lines.append(
                f"  capture: {outcome.frames} frames from {iso_ns(outcome.first_ns)} "
                f"to {iso_ns(outcome.last_ns)}"
            )
        else:
            lines.append("  capture: no frames")
        skipped = {reason: count for reason, count in sorted(outcome.skipped.items()) if count}
        incomplete = skipped.pop(FRAGMENTS_INCOMPLETE, 0)
        imported = counters.datagrams
        ports = " ".join(map(str, identity["ports"]))
        line = (
            f"  UDP datagrams: {imported + outcome.other_ports} ({imported} to the ports "
            f"imported, {ports}; {outcome.other_ports} to others)"
        )
        if skipped:
            line += "; frames without one: " + ", ".join(
                f"{reason} {count}" for reason, count in skipped.items()
            )
        if incomplete:
            line += f"; {incomplete} datagrams with missing fragments"
        lines.append(line)
        if outcome.other_ports and not counters.datagrams:
            busiest = ", ".join(
                f"{port} ({count})" for port, count in outcome.by_other_port.most_common(5)
            )
            lines.append(f"  hint: no datagram went to those ports; busiest others: {busiest}")
        drops = ", ".join(f"{reason} {counters.drops[reason]}" for reason in DROP_REASONS)
        line = (
            f"  datagrams: {counters.datagrams}, stored {tally.stored}, dropped: {drops}, "
            f"malformed {counters.malformed}"
        )
        if counters.unstorable:
            line += f", unstorable {counters.unstorable}"
        if counters.internal_error:
            line += f", internal errors {counters.internal_error}"
        errors = sum(capture.store.store_errors.values())
        if errors:
            line += f", store errors {errors}"
        lines.append(line)
        lines.append(f"  sessions: {len(tally.sessions)}")
        lines.append(f"  files written: {len(tally.files)}")
        lines += [
            f"    {file_path(root, each.path)} ({each.packets} packets, sha256 {each.sha256})"
            for each in tally.files
        ]
        self.stdout.write("\n".join(lines))
