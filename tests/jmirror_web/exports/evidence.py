"""Stored sessions written by the receiver's own store (PcapStore), so that exports are
compared packet by packet with what was really stored, and helpers to read them back.
(Not conftest.py: that is imported before Django is set up when a path is given.)"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from django.utils import timezone

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.models import CaptureFile, Case, Intercept, Router, Session
from receiver import traffic
from receiver.pcap_reader import iter_frames
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import make_case, make_intercept, make_router, make_session

SECOND = 1_000_000_000

Frame = tuple[int, bytes]  # receive time (ns), mirrored packet


def moment(time_ns: int) -> datetime:
    """As the receiver records times on rows: cut to the microsecond."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)


def iso(time_ns: int) -> str:
    return moment(time_ns).isoformat().replace("+00:00", "Z")


@dataclass
class Stored:
    case: Case
    intercept: Intercept
    router: Router
    session: Session
    frames: list[Frame]  # in time order
    files: list[CaptureFile]


def t0() -> int:
    """A whole second an hour ago (inside the factories' warrant), with nanoseconds that
    a microsecond clock would lose."""
    now = timezone.now() - timedelta(hours=1)
    return int(now.timestamp()) * SECOND + 123_456_789


def packets_for(count: int) -> list[bytes]:
    """A mix the filters can tell apart: IPv4 TCP/443, UDP/53 and ICMP from two
    subscriber addresses, and IPv6 UDP."""
    kinds = [
        lambda: traffic.ipv4_tcp(src="203.0.113.7", dport=443),
        lambda: traffic.ipv4_udp(src="203.0.113.8", dport=53),
        lambda: traffic.ipv4_icmp(src="203.0.113.7"),
        lambda: traffic.ipv6_udp(),
    ]
    return [bytes(kinds[i % len(kinds)]().packet) for i in range(count)]


def store(
    data_dir: Path,
    session: Session,
    frames: Iterable[Frame],
    *,
    rotate_seconds: float = 3600,
    linktype: int = LINKTYPE_RAW,
) -> list[CaptureFile]:
    """Write ``frames`` with PcapStore and record their CaptureFile rows, newest first
    (only the ordering by time may put them right)."""
    assert session.intercept is not None
    pcap_store = PcapStore(data_dir / "sessions", rotate_seconds=rotate_seconds)
    key = SessionKey(session.intercept.liid, session.router.address, session.mid, session.sid)
    for time_ns, data in frames:
        pcap_store.write(key, time_ns, data, linktype)
    rows = []
    for closed in reversed(pcap_store.close_all()):
        rows.append(
            CaptureFile.objects.create(
                session=session,
                path=str(Path("sessions") / closed.path),
                first_packet=moment(closed.first_ns),
                last_packet=moment(closed.last_ns),
                packets=closed.packets,
                bytes=closed.bytes,
                sha256=closed.sha256,
                closed=True,
            )
        )
    return rows


def stored_session(
    data_dir: Path,
    *,
    count: int = 12,
    rotate_seconds: float = 4,
    case: Case | None = None,
    start_ns: int | None = None,
    payloads: list[bytes] | None = None,
) -> Stored:
    """A session of ``count`` packets one second apart, rotated every ``rotate_seconds``."""
    case = case or make_case(reference=f"EXP-{next_number()}")
    router = make_router(name=f"mx-{next_number()}")
    intercept = make_intercept(case, liid=f"NZ-{next_number():04d}", routers=[router])
    start_ns = t0() if start_ns is None else start_ns
    payloads = payloads or packets_for(count)
    frames = [(start_ns + i * SECOND, data) for i, data in enumerate(payloads)]
    session = make_session(
        intercept,
        router=router,
        mid=intercept.intercept_id,
        sid=0x90 + next_number(),
        first_seen=moment(frames[0][0]),
        last_seen=moment(frames[-1][0]),
        packets=len(frames),
        stored_packets=len(frames),
    )
    files = store(data_dir, session, frames, rotate_seconds=rotate_seconds)
    return Stored(case, intercept, router, session, frames, files)


_counter = iter(range(1, 1_000_000))


def next_number() -> int:
    return next(_counter)


def body(response: Any) -> bytes:
    """Every byte of a download, read as the client would (the sync test client gets a
    sync iterator; anything else is a bug in the view)."""
    assert isinstance(response, StreamingHttpResponse)
    assert not response.is_async
    return b"".join(response.streaming_content)


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    return [
        (time_ns, linktype, frame) for _, time_ns, linktype, frame in iter_frames(io.BytesIO(data))
    ]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def tshark_count(path: Path) -> int:
    """How many packets tshark reads in a file (it fails on a malformed one)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    result = subprocess.run(
        [tshark, "-n", "-r", str(path), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return len(result.stdout.split())
