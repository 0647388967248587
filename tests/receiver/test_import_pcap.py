"""manage.py import_pcap: an offline capture through the receiver's gate and store."""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from scapy.layers.inet import IP, UDP
from scapy.packet import Packet, Raw
from scapy.utils import wrpcapng

from jmirror_web.audit.log import record
from jmirror_web.audit.models import AuditEvent, verify_chain
from jmirror_web.intercepts.models import (
    CaptureFile,
    ReceiverProcess,
    Session,
    UnclaimedStream,
)
from receiver.management.commands import import_pcap
from receiver.management.commands.import_pcap import iso_ns
from receiver.offline import decode_capture
from receiver.packet_index import INDEX_SUFFIX, index_path, read_index_file
from receiver.pcap_reader import iter_frames
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW
from receiver.traffic import (
    OTHER_ROUTER,
    ROUTER,
    dns_query,
    ethernet_frame,
    full_size_ipv4_tcp,
    ipv4_icmp,
    ipv4_tcp,
    ipv6_udp,
    jmirror_frame,
    outer_fragments,
    padded,
    ppp_lcp,
)
from tests.factories import make_case, make_intercept, make_router
from tests.receiver.router_captures import Capture, capture_params

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
PORT = 30030
S = 1_000_000_000
T0 = 1_795_000_000 * S  # 2026-11-18T11:06:40Z
MID = 0x300


@pytest.fixture
def root(settings, tmp_path: Path) -> Path:
    """The data directory's sessions folder, fresh for each test."""
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    settings.SESSIONS_DIR = settings.DATA_DIR / "sessions"
    return settings.SESSIONS_DIR


def moment(time_ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)


def write_pcap_ns(path: Path, frames: list[tuple[int, bytes]], linktype: int = 1) -> None:
    """A nanosecond pcap, so that receive times are checked to the nanosecond."""
    with path.open("wb") as stream:
        stream.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype))
        for time_ns, data in frames:
            seconds, nanoseconds = divmod(time_ns, S)
            stream.write(struct.pack("<IIII", seconds, nanoseconds, len(data), len(data)))
            stream.write(data)


def frame(inner, *, router: str = ROUTER, mid: int = MID, sid: int = 0x90, port: int = PORT):
    return jmirror_frame(inner, router=router, mid=mid, sid=sid, port=port)


@dataclass
class Built:
    path: Path
    # (router, mid, sid) -> [(time_ns, inner bytes)] of what must be stored, in order
    expected: dict[tuple[str, int, int], list[tuple[int, bytes]]]


@pytest.fixture
def mixed(tmp_path: Path) -> Built:
    """Claimed, unknown-router, unclaimed, out-of-window, malformed and non-jmirror
    datagrams; the warrant runs from T0+10 s to T0+100 s."""
    frames: list[tuple[int, bytes]] = []
    expected: dict[tuple[str, int, int], list[tuple[int, bytes]]] = {}

    def add(time_ns: int, packet: Packet, stored: tuple[str, int, int] | None = None, inner=None):
        for piece in outer_fragments(packet):
            frames.append((time_ns, bytes(padded(piece))))
        if stored is not None:
            expected.setdefault(stored, []).append((time_ns, bytes(inner)))

    add(T0 + 5 * S + 1, frame(ipv4_tcp()))  # before the warrant
    add(T0 + 20 * S + 123, frame(ipv4_tcp()), (ROUTER, MID, 0x90), ipv4_tcp())
    add(T0 + 21 * S + 7, frame(ipv4_icmp(), router=OTHER_ROUTER))  # unknown router
    add(T0 + 22 * S + 999, frame(ipv6_udp()), (ROUTER, MID, 0x90), ipv6_udp())
    add(T0 + 23 * S, frame(ipv4_tcp(), mid=0x301))  # no intercept for this mirror id
    malformed = jmirror_frame(Raw(b"\x00"), mid=MID, sid=0x90)[IP]
    malformed[UDP].remove_payload()
    malformed[UDP].add_payload(Raw(b"\x00\x00\x03"))  # shorter than the jmirror header
    del malformed[IP].len, malformed[UDP].len
    add(T0 + 24 * S, ethernet_frame(malformed))
    add(T0 + 25 * S + 1, ethernet_frame(dns_query()))  # not to the jmirror port
    # Full size: the network fragments the outer datagram; reassembled before the gate.
    add(T0 + 26 * S + 5, frame(full_size_ipv4_tcp()), (ROUTER, MID, 0x90), full_size_ipv4_tcp())
    add(T0 + 27 * S + 42, frame(ppp_lcp(), sid=0x91), (ROUTER, MID, 0x91), ppp_lcp())
    add(T0 + 28 * S + 8, frame(ipv4_icmp()), (ROUTER, MID, 0x90), ipv4_icmp())
    add(T0 + 150 * S, frame(ipv4_icmp()))  # after the warrant
    path = tmp_path / "mixed.pcap"
    write_pcap_ns(path, frames)
    return Built(path, expected)


def records(*, intercept_id: int = MID, window: tuple[int, int] = (T0 + 10 * S, T0 + 100 * S)):
    router = make_router(address=ROUTER, port=PORT)
    case = make_case(valid_from=moment(window[0]), valid_until=moment(window[1]))
    intercept = make_intercept(case, intercept_id=intercept_id, routers=[router])
    return router, intercept


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_pcap", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def stored_files(root: Path) -> dict[str, list[Path]]:
    """The capture files under ``root`` by session directory; each has its packet index
    beside it, a record per packet."""
    by_directory: dict[str, list[Path]] = {}
    for path in sorted(root.glob("*/*")):
        if path.suffix == INDEX_SUFFIX:
            continue
        index = read_index_file(index_path(path))
        assert index is not None, path
        assert len(index) == len(read_pcap(path))
        by_directory.setdefault(path.parent.name, []).append(path)
    return by_directory


def read_pcap(path: Path) -> list[tuple[int, int, bytes]]:
    with path.open("rb") as stream:
        return [(time_ns, linktype, data) for _, time_ns, linktype, data in iter_frames(stream)]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_claimed_packets_are_stored_byte_identical_with_capture_times(root, mixed):
    router, intercept = records()
    out, _ = run(str(mixed.path))

    directories = stored_files(root)
    assert sorted(directories) == [
        f"{intercept.liid}_{ROUTER}_mid-00000300_sid-00000090",
        f"{intercept.liid}_{ROUTER}_mid-00000300_sid-00000091",
    ]
    for (_, _, sid), expected in mixed.expected.items():
        [path] = directories[f"{intercept.liid}_{ROUTER}_mid-00000300_sid-{sid:08x}"]
        stored = read_pcap(path)
        assert [(time_ns, data) for time_ns, _, data in stored] == expected
        linktype = LINKTYPE_PPP_HDLC if sid == 0x91 else LINKTYPE_RAW
        assert {each[1] for each in stored} == {linktype}
        # Named from the capture time of the first packet, not the time of the import.
        first_ns = expected[0][0]
        start = datetime.fromtimestamp(first_ns // S, UTC)
        assert path.name == f"{start:%Y%m%dT%H%M%S}.{first_ns % S:09d}Z-000001.pcap"
    # Nothing else on disk: no unclaimed byte, no file left open.
    assert not list(root.glob("*/*.part"))

    sessions = {session.sid: session for session in Session.objects.all()}
    assert set(sessions) == {0x90, 0x91}
    main = sessions[0x90]
    expected_main = mixed.expected[(ROUTER, MID, 0x90)]
    assert (main.router, main.intercept, main.mid) == (router, intercept, MID)
    assert main.packets == main.stored_packets == len(expected_main) == 4
    assert main.bytes == sum(len(data) + 8 for _, data in expected_main)
    assert main.first_seen == moment(expected_main[0][0])
    assert main.last_seen == moment(expected_main[-1][0])

    rows = CaptureFile.objects.order_by("path")
    assert rows.count() == 2
    for row in rows:
        on_disk = root.parent / row.path
        assert row.closed
        assert row.sha256 == sha256_of(on_disk)
        assert row.bytes == on_disk.stat().st_size
        assert row.packets == len(read_pcap(on_disk))
        assert row.session.sid in (0x90, 0x91)
        assert str(row.path) in out

    assert "stored 5" in out
    assert "dropped: unknown_router 1, no_intercept 1, outside_window 2, malformed 1" in out
    assert "sessions: 2" in out
    assert "files written: 2" in out
    first, last = iso_ns(T0 + 5 * S + 1), iso_ns(T0 + 150 * S)
    assert f"capture: 12 frames from {first} to {last}" in out
    assert first == "2026-11-18T11:06:45.000000001Z"


def test_drops_are_counted_and_unclaimed_streams_listed(root, mixed):
    router, _ = records()
    run(str(mixed.path))

    process = ReceiverProcess.objects.get()
    assert process.stopped_at is not None
    assert process.datagrams == 10  # every datagram to the port, the DNS query excluded
    assert process.malformed == 1
    assert process.drops == {"unknown_router": 1, "no_intercept": 1, "outside_window": 2}
    assert process.open_files == 0
    unclaimed = {
        (row.source, row.mid, row.sid): (row.reason, row.packets, row.router_id)
        for row in UnclaimedStream.objects.all()
    }
    assert unclaimed == {
        (OTHER_ROUTER, MID, 0x90): ("unknown_router", 1, None),
        (ROUTER, 0x301, 0x90): ("no_intercept", 1, router.pk),
        (ROUTER, MID, 0x90): ("outside_window", 2, router.pk),
    }
    row = UnclaimedStream.objects.get(reason="outside_window")
    assert (row.first_seen, row.last_seen) == (moment(T0 + 5 * S + 1), moment(T0 + 150 * S))


def test_the_import_is_audited_with_the_input_hash_and_counts(root, mixed):
    records()
    run(str(mixed.path))

    started, done = AuditEvent.objects.filter(action__startswith="capture.import")
    assert started.action == "capture.import_started"
    assert done.action == "capture.import"
    assert done.actor_name.startswith("os:")
    assert done.object_type == "intercepts.ReceiverProcess"
    details = done.details
    assert details["file"] == "mixed.pcap"
    assert details["size"] == mixed.path.stat().st_size
    assert details["sha256"] == details["sha256_read"] == sha256_of(mixed.path)
    assert details["started_event"] == started.pk
    assert details["outcome"] == "complete"
    assert (details["datagrams"], details["stored"], details["malformed"]) == (10, 5, 1)
    assert details["drops"] == {"unknown_router": 1, "no_intercept": 1, "outside_window": 2}
    assert details["sessions"] == 2
    assert details["files_total"] == 2
    assert {each["sha256"] for each in details["files"]} == set(
        CaptureFile.objects.values_list("sha256", flat=True)
    )
    assert verify_chain() is None


def test_the_same_file_is_refused_a_second_time_unless_again(root, mixed, tmp_path):
    records()
    run(str(mixed.path))
    before = sorted(root.glob("*/*"))

    copy = tmp_path / "renamed.pcap"  # the same bytes under another name: still refused
    copy.write_bytes(mixed.path.read_bytes())
    for path in (mixed.path, copy):
        with pytest.raises(CommandError, match=r"already imported on .* by os:.*--again") as error:
            run(str(path))
        assert error.value.returncode == 2
        assert "\n" not in str(error.value)
    assert sorted(root.glob("*/*")) == before
    assert AuditEvent.objects.filter(action="capture.import_refused").count() == 2
    assert Session.objects.get(sid=0x90).stored_packets == 4

    out, _ = run(str(mixed.path), "--again")
    assert "stored 5" in out
    assert Session.objects.get(sid=0x90).stored_packets == 8
    assert CaptureFile.objects.count() == 4
    assert len(sorted(root.glob("*/*.pcap"))) == 4
    assert AuditEvent.objects.filter(action="capture.import").count() == 2


def test_an_import_that_never_finished_blocks_another(root, mixed):
    records()
    record(
        "capture.import_started",
        details={"file": "mixed.pcap", "sha256": sha256_of(mixed.path)},
        actor="os:someone",
    )
    with pytest.raises(CommandError, match=r"started on .* by os:someone never finished"):
        run(str(mixed.path))
    assert not root.exists() or not list(root.glob("*/*"))


def test_an_import_that_stored_nothing_does_not_block_another(root, mixed):
    records()
    out, _ = run(str(mixed.path), "--port", "5000")
    assert "stored 0" in out
    assert "hint: no datagram went to those ports; busiest others: 30030 (10), 53 (1)" in out
    out, _ = run(str(mixed.path), "--port", str(PORT))
    assert "stored 5" in out


def test_default_ports_come_from_the_routers_and_settings(root, tmp_path, settings):
    settings.JMIRROR_LISTEN = [("127.0.0.1", 7001)]
    router = make_router(address=ROUTER, port=6502)
    case = make_case(valid_from=moment(T0), valid_until=moment(T0 + 100 * S))
    make_intercept(case, intercept_id=MID, routers=[router])
    frames = [
        (T0 + index * S, bytes(padded(frame(ipv4_icmp(), port=port))))
        for index, port in enumerate((6502, 7001, 30030, 9999), start=1)
    ]
    path = tmp_path / "ports.pcap"
    write_pcap_ns(path, frames)
    out, _ = run(str(path))
    assert "to the ports imported, 6502 7001 30030; 1 to others" in out
    assert Session.objects.get().stored_packets == 3


def test_rotation_and_file_expiry_follow_capture_time(root, tmp_path):
    records(window=(T0, T0 + 10 * 3600 * S))
    frames = [
        (T0 + 1 * S, bytes(padded(frame(ipv4_icmp())))),
        (T0 + 2 * S, bytes(padded(frame(ipv4_icmp())))),
        # Over an hour later: a new file (rotation by age, by the capture's clock).
        (T0 + 3700 * S, bytes(padded(frame(ipv4_icmp())))),
        (T0 + 3701 * S, bytes(padded(frame(ipv4_icmp(), sid=0x91)))),
    ]
    path = tmp_path / "hours.pcap"
    write_pcap_ns(path, frames)
    run(str(path))
    rows = list(CaptureFile.objects.filter(session__sid=0x90).order_by("first_packet"))
    assert [row.packets for row in rows] == [2, 1]
    assert [row.first_packet for row in rows] == [moment(T0 + S), moment(T0 + 3700 * S)]
    assert all(row.closed and row.sha256 == sha256_of(root.parent / row.path) for row in rows)


def test_pcapng_input(root, tmp_path):
    records()
    packets = []
    for index in range(3):
        packet = frame(ipv4_tcp())
        packet.time = (T0 + (20 + index) * S) / S
        packets.append(packet)
    path = tmp_path / "capture.pcapng"
    wrpcapng(str(path), packets)
    out, _ = run(str(path))
    assert "stored 3" in out
    [stored] = root.glob("*/*.pcap")
    assert [data for _, _, data in read_pcap(stored)] == [bytes(ipv4_tcp())] * 3


def test_a_truncated_capture_keeps_what_is_complete_and_fails(root, mixed, tmp_path):
    records()
    whole = mixed.path.read_bytes()
    # Cut inside the last record (the out-of-window one): every claimed packet is whole.
    path = tmp_path / "cut.pcap"
    path.write_bytes(whole[:-20])
    with pytest.raises(CommandError, match=r"cut.pcap: truncated record data at byte \d+") as error:
        run(str(path))
    assert error.value.returncode == 1
    assert Session.objects.get(sid=0x90).stored_packets == 4
    rows = CaptureFile.objects.all()
    assert rows.count() == 2
    assert all(row.closed and row.sha256 == sha256_of(root.parent / row.path) for row in rows)
    done = AuditEvent.objects.get(action="capture.import")
    assert done.details["outcome"] == "truncated"
    assert done.details["stored"] == 5
    assert "truncated record data" in done.details["error"]
    # Recorded as imported: the same damaged file is not imported twice either.
    with pytest.raises(CommandError, match="already imported"):
        run(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty file: not a pcap or pcapng file"),
        (b"hello, this is text\n" * 3, r"not a pcap or pcapng file \(starts with 0x68656c6c\)"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", r"truncated pcap file header \(6 of 24 bytes\)"),
    ],
)
def test_files_that_are_not_captures_are_refused(root, tmp_path, content, message):
    path = tmp_path / "input.pcap"
    path.write_bytes(content)
    with pytest.raises(CommandError, match=f"^{path}: {message}$") as error:
        run(str(path))
    assert error.value.returncode == 2
    assert not AuditEvent.objects.filter(action__startswith="capture.").exists()
    assert not ReceiverProcess.objects.exists()


def test_missing_file_directory_and_fifo_are_refused(root, tmp_path):
    with pytest.raises(CommandError, match=r"missing.pcap: No such file or directory$") as error:
        run(str(tmp_path / "missing.pcap"))
    assert error.value.returncode == 2
    with pytest.raises(CommandError, match=r": is a directory$"):
        run(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CommandError, match=r"fifo: not a regular file"):
        run(str(fifo))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_refused(root, mixed):
    mixed.path.chmod(0)
    with pytest.raises(CommandError, match=r"mixed.pcap: Permission denied$"):
        run(str(mixed.path))


def test_a_file_over_the_size_limit_is_refused(root, mixed):
    size = mixed.path.stat().st_size
    with pytest.raises(CommandError, match=rf"{size} bytes is over the limit of 1024 bytes"):
        run(str(mixed.path), "--max-bytes", "1K")
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--port", "0", "0 is not a UDP port"),
        ("--port", "65536", "65536 is not a UDP port"),
        ("--port", "http", "'http' is not a port number"),
        ("--max-bytes", "0", "'0': the size must be positive"),
        ("--max-bytes", "lots", "'lots' is not a size in bytes"),
    ],
)
def test_bad_options_are_refused(root, mixed, option, value, message):
    with pytest.raises(CommandError, match=f"^Error: argument {option}: {message}"):
        run(str(mixed.path), option, value)


def test_progress_bar_only_when_asked_or_on_a_terminal(root, mixed):
    records()
    _, err = run(str(mixed.path), "--progress", "--again")
    assert "\rhashing" in err
    assert "100.0%" in err
    _, err = run(str(mixed.path), "--again")  # stderr is no terminal here
    assert err == ""
    _, err = run(str(mixed.path), "--no-progress", "--again")
    assert err == ""


def test_the_command_line_gives_one_line_and_exit_status_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "import_pcap", str(tmp_path / "missing.pcap")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr == f"CommandError: {tmp_path / 'missing.pcap'}: No such file or directory\n"
    )


@pytest.mark.captures
@pytest.mark.parametrize("router_capture", capture_params(), indirect=True)
def test_router_captures_store_what_decode_finds(root, router_capture: Capture):
    path, port, mid = router_capture.path, router_capture.port, router_capture.mid
    routers = [make_router(address=address, port=port) for address in router_capture.routers]
    case = make_case(
        valid_from=datetime(2009, 1, 1, tzinfo=UTC), valid_until=datetime(2013, 1, 1, tzinfo=UTC)
    )
    make_intercept(case, intercept_id=mid, routers=routers)
    with path.open("rb") as stream:
        decoded = list(decode_capture(stream, [port], Counter()))
    assert len(decoded) == router_capture.frames
    expected: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
    for _, time_ns, router, _, packet in decoded:
        assert packet.intercept_id == mid
        expected.setdefault((router, packet.sid), []).append((time_ns, packet.data))

    out, _ = run(str(path), "--port", str(port))

    assert f"stored {len(decoded)}," in out
    sessions = Session.objects.select_related("router")
    assert {(s.router.address, s.sid): s.stored_packets for s in sessions} == {
        key: len(packets) for key, packets in expected.items()
    }
    for session in sessions:
        stored = []
        for row in CaptureFile.objects.filter(session=session).order_by("first_packet", "path"):
            assert row.sha256 == sha256_of(root.parent / row.path)
            stored += [(time_ns, data) for time_ns, _, data in read_pcap(root.parent / row.path)]
        assert stored == expected[(session.router.address, session.sid)]


def spy_on_snapshots(monkeypatch, action=None) -> list[tuple[bool, list[str]]]:
    """Every snapshot the import's tally absorbs: (final, names of the files closed)."""
    seen: list[tuple[bool, list[str]]] = []
    absorb = import_pcap.Tally.absorb

    def spy(self, snapshot):
        seen.append((snapshot.final, [each.path.name for each in snapshot.closed_files]))
        if action is not None:
            action(snapshot)
        absorb(self, snapshot)

    monkeypatch.setattr(import_pcap.Tally, "absorb", spy)
    return seen


def test_a_quiet_sessions_file_is_closed_when_capture_time_passes_its_age(
    root, tmp_path, monkeypatch
):
    records(window=(T0, T0 + 10 * 3600 * S))
    frames = [
        (T0 + 1 * S, bytes(padded(frame(ipv4_icmp())))),
        (T0 + 2 * S, bytes(padded(frame(ipv4_icmp())))),
        # Only another session from here on; capture time passes the hour of sid 0x90's
        # file, which is then closed at a tick, not at the end of the import.
        (T0 + 3700 * S, bytes(padded(frame(ipv4_icmp(), sid=0x91)))),
        (T0 + 3701 * S, bytes(padded(frame(ipv4_icmp(), sid=0x91)))),
    ]
    path = tmp_path / "quiet.pcap"
    write_pcap_ns(path, frames)
    seen = spy_on_snapshots(monkeypatch)
    run(str(path))
    [quiet] = CaptureFile.objects.filter(session__sid=0x90)
    assert quiet.packets == 2
    closed_at_ticks = [name for final, names in seen if not final for name in names]
    assert closed_at_ticks == [Path(quiet.path).name]


def test_an_interrupted_import_keeps_what_it_stored_and_fails(root, mixed, monkeypatch):
    records()
    monkeypatch.setattr(import_pcap, "_CHECK_EVERY", 1)
    interrupted = []

    def interrupt(snapshot):
        if snapshot.sessions and not interrupted:
            interrupted.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    spy_on_snapshots(monkeypatch, interrupt)
    with pytest.raises(CommandError, match=r"mixed.pcap: interrupted after \d+ of \d+ bytes"):
        run(str(mixed.path))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    done = AuditEvent.objects.get(action="capture.import")
    assert done.details["outcome"] == "interrupted"
    assert 0 < done.details["stored"] < 5
    rows = CaptureFile.objects.all()
    assert sum(row.packets for row in rows) == done.details["stored"]
    assert all(row.closed and row.sha256 == sha256_of(root.parent / row.path) for row in rows)
    assert Session.objects.get(sid=0x90).stored_packets == done.details["stored"]
    with pytest.raises(CommandError, match="already imported"):
        run(str(mixed.path))


def test_bytes_appended_after_the_hash_are_not_imported(root, mixed, monkeypatch):
    records()
    claim = import_pcap.Command._claim
    size = mixed.path.stat().st_size

    def grow_then_claim(self, path, identity, again):
        with mixed.path.open("ab") as stream:  # tcpdump still writing
            stream.write(mixed.path.read_bytes()[24:])
        return claim(self, path, identity, again)

    monkeypatch.setattr(import_pcap.Command, "_claim", grow_then_claim)
    out, _ = run(str(mixed.path))
    assert out.startswith("complete:")
    assert "stored 5" in out
    done = AuditEvent.objects.get(action="capture.import")
    assert done.details["size"] == done.details["bytes_read"] == size


def test_a_file_changed_after_the_hash_is_reported(root, mixed, monkeypatch):
    records()
    claim = import_pcap.Command._claim

    def change_then_claim(self, path, identity, again):
        content = bytearray(mixed.path.read_bytes())
        content[-1] ^= 0xFF  # inside the last (out-of-window) packet
        mixed.path.write_bytes(content)
        return claim(self, path, identity, again)

    monkeypatch.setattr(import_pcap.Command, "_claim", change_then_claim)
    with pytest.raises(CommandError, match=r"mixed\.pcap: the file changed while it was imported"):
        run(str(mixed.path))
    done = AuditEvent.objects.get(action="capture.import")
    assert done.details["outcome"] == "changed"
    assert done.details["sha256_read"] == sha256_of(mixed.path) != done.details["sha256"]


def test_rows_the_database_refused_make_the_import_fail_with_the_files_kept(
    root, mixed, monkeypatch
):
    records()
    monkeypatch.setattr(import_pcap.Bookkeeper, "write", lambda self: False)
    with pytest.raises(CommandError, match=r"the packets are stored but the database refused"):
        run(str(mixed.path))
    assert len(list(root.glob("*/*.pcap"))) == 2
    assert not list(root.glob("*/*.part"))
