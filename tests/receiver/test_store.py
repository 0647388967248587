"""PcapStore: per-session pcap files, rotation, hashing, crash repair and write errors."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from scapy.utils import rdpcap

from receiver.store import (
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    SNAPLEN,
    PcapStore,
    SessionKey,
    repair,
    session_directory_name,
)

REPO = Path(__file__).resolve().parents[2]
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
SECOND = 1_000_000_000
SESSION = SessionKey(liid="LIID-1", router="192.0.2.1", mid=0x300, sid=0x90)
SESSION6 = SessionKey(liid="LIID-1", router="2001:db8::1", mid=0x300, sid=0x91)


def ipv4(src: str = "10.0.0.1", dst: str = "10.0.0.2", payload: bytes = b"") -> bytes:
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
        bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))),
    )  # fmt: skip
    return header + udp


def ipv6(src: bytes = bytes.fromhex("20010db8000000000000000000000001")) -> bytes:
    udp = struct.pack("!HHHH", 5353, 53, 8, 0)
    return struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64, src, bytes(16)) + udp


def ppp(protocol: int, payload: bytes) -> bytes:
    return struct.pack("!BBH", 0xFF, 0x03, protocol) + payload


LCP_CONFIGURE_REQUEST = ppp(0xC021, bytes.fromhex("0101000a0506deadbeef"))


def pcap_records(path: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """The link type and (time in ns, data) of every record, read by hand."""
    raw = path.read_bytes()
    magic, _, _, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", raw)
    assert (magic, snaplen) == (0xA1B23C4D, SNAPLEN)
    records, offset = [], 24
    while offset < len(raw):
        seconds, nanoseconds, included, original = struct.unpack_from("<IIII", raw, offset)
        assert included == original
        records.append((seconds * SECOND + nanoseconds, raw[offset + 16 : offset + 16 + included]))
        offset += 16 + included
    assert offset == len(raw)
    return linktype, records


def tshark_rows(path: Path, *fields: str) -> list[list[str]]:
    assert TSHARK is not None
    command = [TSHARK, "-r", str(path), "-T", "fields"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "appears to have been cut short" not in result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


def test_packets_come_back_byte_identical_and_in_order_with_nanosecond_times(tmp_path):
    store = PcapStore(tmp_path)
    packets = [(T0 + i * 1_001, ipv4(payload=bytes([i]) * i)) for i in range(50)]
    for time_ns, data in packets:
        store.write(SESSION, time_ns, data, LINKTYPE_RAW)

    [closed] = store.close_all()

    path = tmp_path / closed.path
    assert pcap_records(path) == (LINKTYPE_RAW, packets)
    read_back = rdpcap(str(path))
    assert [bytes(packet) for packet in read_back] == [data for _, data in packets]
    assert [int(packet.time * SECOND) for packet in read_back] == [t for t, _ in packets]
    assert (closed.packets, closed.first_ns, closed.last_ns) == (50, T0, T0 + 49 * 1_001)
    assert closed.session == SESSION


def test_the_recorded_sha256_size_and_path_match_the_file_on_disk(tmp_path):
    store = PcapStore(tmp_path)
    for i in range(1000):
        store.write(SESSION, T0 + i, ipv4(payload=os.urandom(i % 200)), LINKTYPE_RAW)
        if i % 100 == 0:
            store.flush()

    [closed] = store.close_all()

    content = (tmp_path / closed.path).read_bytes()
    assert closed.sha256 == hashlib.sha256(content).hexdigest()
    assert closed.bytes == len(content)
    assert closed.path == Path(
        "LIID-1_192.0.2.1_mid-00000300_sid-00000090/20231114T221320.123456789Z-000001.pcap"
    )
    assert list(tmp_path.rglob("*.part")) == []


@needs_tshark
@pytest.mark.tshark
def test_tshark_shows_the_inner_layers_of_raw_ip_and_ppp_files(tmp_path):
    store = PcapStore(tmp_path)
    store.write(SESSION, T0, ipv4("192.0.2.55"), LINKTYPE_RAW)
    store.write(SESSION, T0 + 1, ipv6(), LINKTYPE_RAW)
    store.write(SESSION6, T0 + 2, LCP_CONFIGURE_REQUEST, LINKTYPE_PPP_HDLC)
    store.write(SESSION6, T0 + 3, ppp(0x0021, ipv4("198.51.100.7")), LINKTYPE_PPP_HDLC)
    store.write(SESSION6, T0 + 4, ppp(0x0057, ipv6()), LINKTYPE_PPP_HDLC)

    raw_file, ppp_file = sorted(store.close_all(), key=lambda closed: closed.linktype)[::-1]

    fields = ("frame.time_epoch", "ip.src", "ipv6.src", "ppp.protocol")
    assert tshark_rows(tmp_path / raw_file.path, *fields) == [
        ["1700000000.123456789", "192.0.2.55", "", ""],
        ["1700000000.123456790", "", "2001:db8::1", ""],
    ]
    assert tshark_rows(tmp_path / ppp_file.path, *fields) == [
        ["1700000000.123456791", "", "", "0xc021"],
        ["1700000000.123456792", "198.51.100.7", "", "0x0021"],
        ["1700000000.123456793", "", "2001:db8::1", "0x0057"],
    ]


def test_a_file_rotates_once_it_reaches_the_size_limit(tmp_path):
    store = PcapStore(tmp_path, rotate_bytes=24 + 3 * (16 + 100))
    for i in range(7):
        store.write(SESSION, T0 + i, bytes([0x45]) + bytes(99), LINKTYPE_RAW)

    rotated = store.take_closed()
    closed = rotated + store.close_all()

    assert [file.packets for file in rotated] == [3, 3]
    assert [file.packets for file in closed] == [3, 3, 1]
    assert [file.first_ns for file in closed] == [T0, T0 + 3, T0 + 6]
    assert [file.path.name[-11:] for file in closed] == [
        "000001.pcap",
        "000002.pcap",
        "000003.pcap",
    ]
    assert store.take_closed() == []


def test_a_file_rotates_when_packet_times_pass_the_age_limit(tmp_path):
    store = PcapStore(tmp_path, rotate_seconds=60)
    for offset in (0, 59 * SECOND, 60 * SECOND, 61 * SECOND, 125 * SECOND):
        store.write(SESSION, T0 + offset, ipv4(), LINKTYPE_RAW)

    closed = store.close_all()

    assert [(f.first_ns - T0, f.last_ns - T0, f.packets) for f in closed] == [
        (0, 59 * SECOND, 2),
        (60 * SECOND, 61 * SECOND, 2),
        (125 * SECOND, 125 * SECOND, 1),
    ]
    assert closed[1].path.name == "20231114T221420.123456789Z-000002.pcap"


def test_a_session_mixing_link_types_keeps_one_file_per_type_side_by_side(tmp_path):
    store = PcapStore(tmp_path)
    for step in range(50):  # alternating, as a PPP subscriber's mirror can
        store.write(SESSION, T0 + 2 * step, ipv4(), LINKTYPE_RAW)
        store.write(SESSION, T0 + 2 * step + 1, LCP_CONFIGURE_REQUEST, LINKTYPE_PPP_HDLC)
    assert store.open_sessions == 1

    closed = store.close_all()

    assert sorted((f.linktype, f.packets, f.first_ns, f.last_ns) for f in closed) == [
        (LINKTYPE_PPP_HDLC, 50, T0 + 1, T0 + 99),
        (LINKTYPE_RAW, 50, T0, T0 + 98),
    ]
    for file in closed:
        assert pcap_records(tmp_path / file.path)[0] == file.linktype


def test_sessions_are_kept_apart_even_with_the_same_mid_and_sid(tmp_path):
    store = PcapStore(tmp_path)
    other_router = SESSION._replace(router="192.0.2.2")
    store.write(SESSION, T0, ipv4("10.0.0.1"), LINKTYPE_RAW)
    store.write(other_router, T0, ipv4("10.0.0.2"), LINKTYPE_RAW)

    closed = store.close_all()

    assert {file.session for file in closed} == {SESSION, other_router}
    assert len({file.path.parent for file in closed}) == 2


def test_flush_due_puts_buffered_packets_on_disk_once_the_interval_has_passed(tmp_path):
    store = PcapStore(tmp_path, flush_interval=1.0)
    store.flush_due(100.0)
    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    [part] = tmp_path.rglob("*.pcap.part")
    assert part.stat().st_size == 24  # the header only: the packet is still buffered

    store.flush_due(100.5)
    assert part.stat().st_size == 24
    store.flush_due(101.0)
    assert pcap_records(part) == (LINKTYPE_RAW, [(T0, ipv4())])


def test_a_full_buffer_is_written_out_without_waiting_for_flush_due(tmp_path):
    store = PcapStore(tmp_path, buffer_bytes=1000)
    for i in range(10):
        store.write(SESSION, T0 + i, bytes([0x45]) + bytes(199), LINKTYPE_RAW)

    [part] = tmp_path.rglob("*.pcap.part")
    assert part.stat().st_size == 24 + 10 * 216


def test_written_pages_are_released_from_the_page_cache_as_a_file_grows(tmp_path, monkeypatch):
    """Each 16 MiB of growth: the kernel hears of the range one to three steps back,
    once to write it out and once more to drop it, and the file stays whole."""
    advised: list[tuple[int, int, int]] = []
    real_fadvise = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        advised.append((offset, length, os.fstat(fd).st_size))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    store = PcapStore(tmp_path)
    step = 16 * 2**20
    packet = bytes([0x45]) + bytes(65_519)  # 64 KiB records
    count = 5 * step // (16 + len(packet)) + 1  # just over 80 MiB
    for i in range(count):
        store.write(SESSION, T0 + i, packet, LINKTYPE_RAW)
    store.flush()
    assert len(advised) == 5
    for offset, length, size in advised:
        # Never the last step of what the file held: it may still be written out.
        assert 0 <= offset < offset + length <= size - step
        assert length <= 2 * step
    # Every byte up to three steps before the end was advised twice: written, dropped.
    final = advised[-1][2]
    for probe in range(0, final - 3 * step, 2**20):
        assert sum(offset <= probe < offset + length for offset, length, _ in advised) >= 2
    [closed] = store.close_all()
    assert closed.packets == count
    assert hashlib.sha256((tmp_path / closed.path).read_bytes()).hexdigest() == closed.sha256


def test_a_file_system_without_page_cache_advice_changes_nothing(tmp_path, monkeypatch):
    def refuse(*args: object) -> None:
        raise OSError(errno.ESPIPE, "Illegal seek")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    store = PcapStore(tmp_path)
    for i in range(400):
        store.write(SESSION, T0 + i, bytes([0x45]) + bytes(65_000), LINKTYPE_RAW)
    [closed] = store.close_all()
    assert closed.packets == 400
    assert not store.store_errors


@pytest.mark.parametrize(
    ("liid", "router"),
    [
        ("../../etc", "192.0.2.1"),
        ("LIID-1", "../../../tmp"),
        ("a/b", "c/d"),
        ("..", ".."),
        ("", ""),
        ("x" * 300, "y" * 300),
        ("nul\x00byte", "back\\slash"),
        ("\udcff", "é"),
    ],
)
def test_hostile_liid_and_router_values_cannot_leave_the_root(tmp_path, liid, router):
    root = tmp_path / "root"
    store = PcapStore(root)
    session = SessionKey(liid=liid, router=router, mid=1, sid=2)
    store.write(session, T0, ipv4(), LINKTYPE_RAW)

    [closed] = store.close_all()

    assert store.store_errors == {}
    assert len(closed.path.parts) == 2
    assert (root / closed.path).resolve().parent.parent == root.resolve()
    assert len(closed.path.parts[0]) <= 128  # well inside NAME_MAX (255)


def test_directory_names_show_the_session_and_keep_distinct_hostile_values_apart():
    assert (
        session_directory_name(SessionKey("LI_x.1-2", "2001:db8::1", 0xC0000300, 0x90))
        == "LI_x.1-2_2001-db8--1_mid-c0000300_sid-00000090"
    )
    assert session_directory_name(SessionKey("a/b", "r", 1, 2)) != session_directory_name(
        SessionKey("a_b", "r", 1, 2)
    )
    assert "/" not in session_directory_name(SessionKey("a/b", "r/s", 1, 2))


def test_repair_truncates_a_partial_last_record_exactly_to_the_last_whole_one(tmp_path):
    store = PcapStore(tmp_path)
    for i in range(5):
        store.write(SESSION, T0 + i, ipv4(payload=bytes([i]) * 10), LINKTYPE_RAW)
    store.flush()
    [part] = tmp_path.rglob("*.pcap.part")
    whole = part.read_bytes()
    # What kill -9 in the middle of an os.write leaves: a header and half the data.
    with part.open("ab") as stream:
        stream.write(struct.pack("<IIII", T0 // SECOND, 6, 100, 100) + bytes(40))

    repaired = repair(part)

    assert part.read_bytes() == whole
    assert repaired.truncated_bytes == 16 + 40
    assert (repaired.packets, repaired.first_ns, repaired.last_ns) == (5, T0, T0 + 4)
    assert repaired.sha256 == hashlib.sha256(whole).hexdigest()
    assert repaired.bytes == len(whole)


@pytest.mark.parametrize(
    "tail",
    [
        b"\x01\x02\x03",  # a record header cut short
        struct.pack("<IIII", 1, 2, SNAPLEN + 1, SNAPLEN + 1) + bytes(64),  # absurd length
        struct.pack("<IIII", 1, 2, 30, 30),  # header but no data
    ],
)
def test_repair_drops_every_kind_of_broken_tail(tmp_path, tail):
    store = PcapStore(tmp_path)
    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    [closed] = store.close_all()
    path = tmp_path / closed.path
    whole = path.read_bytes()
    path.write_bytes(whole + tail)

    repaired = repair(path)

    assert (repaired.packets, repaired.truncated_bytes) == (1, len(tail))
    assert path.read_bytes() == whole
    assert repaired.sha256 == closed.sha256


def test_repair_refuses_a_file_that_is_not_our_pcap_format(tmp_path):
    short, other = tmp_path / "short.pcap", tmp_path / "other.pcap"
    short.write_bytes(b"\xd4\xc3\xb2\xa1")
    other.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

    with pytest.raises(ValueError, match="shorter than a pcap file header"):
        repair(short)
    with pytest.raises(ValueError, match="not a little-endian nanosecond pcap file"):
        repair(other)
    assert short.read_bytes() == b"\xd4\xc3\xb2\xa1"


@needs_tshark
@pytest.mark.tshark
def test_a_receiver_killed_with_sigkill_leaves_files_that_recover_closes(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from receiver.store import PcapStore, SessionKey, LINKTYPE_RAW, LINKTYPE_PPP_HDLC
        store = PcapStore(Path(sys.argv[1]))
        raw = SessionKey("LIID-1", "192.0.2.1", 1, 2)
        hdlc = SessionKey("LIID-1", "2001:db8::1", 1, 3)
        for i in range(1000):
            store.write(raw, {T0} + i, {ipv4()!r}, LINKTYPE_RAW)
            store.write(hdlc, {T0} + i, {LCP_CONFIGURE_REQUEST!r}, LINKTYPE_PPP_HDLC)
        store.flush()
        for i in range(5):  # buffered only: lost with the process, as documented
            store.write(raw, {T0 + SECOND} + i, {ipv4()!r}, LINKTYPE_RAW)
        print("flushed", flush=True)
        sys.stdin.read()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "flushed\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    parts = sorted(tmp_path.rglob("*.pcap.part"))
    assert len(parts) == 2
    for part in parts:  # readable by tshark before any repair
        assert len(tshark_rows(part, "frame.number")) == 1000
    with parts[0].open("ab") as stream:
        stream.write(b"\x00" * 7)

    recovered = PcapStore.recover(tmp_path)

    assert [file.packets for file in recovered] == [1000, 1000]
    assert sorted(file.linktype for file in recovered) == [LINKTYPE_PPP_HDLC, LINKTYPE_RAW]
    assert list(tmp_path.rglob("*.part")) == []
    for file in recovered:
        path = tmp_path / file.path
        assert file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (file.first_ns, file.last_ns) == (T0, T0 + 999)
        assert len(tshark_rows(path, "frame.number")) == 1000
    assert PcapStore.recover(tmp_path) == []


def die(store: PcapStore) -> None:
    """What a kill does to a store: its descriptors (and their locks) go, nothing else."""
    for file in store._files.values():
        os.close(file.fd)
    store._files.clear()


def test_recover_leaves_files_a_live_store_is_writing(tmp_path):
    live = PcapStore(tmp_path)
    live.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    live.flush()

    assert PcapStore.recover(tmp_path) == []
    assert len(list(tmp_path.rglob("*.pcap.part"))) == 1  # untouched, still being written
    live.write(SESSION, T0 + 1, ipv4(), LINKTYPE_RAW)
    [closed] = live.close_all()
    assert closed.packets == 2

    dead = PcapStore(tmp_path)
    dead.write(SESSION, T0 + 2, ipv4(), LINKTYPE_RAW)
    dead.flush()
    die(dead)
    [recovered] = PcapStore.recover(tmp_path)
    assert recovered.packets == 1


def test_recover_removes_files_with_no_whole_record_and_skips_foreign_ones(tmp_path):
    session_dir = tmp_path / "LIID-1_192.0.2.1_mid-00000001_sid-00000002"
    session_dir.mkdir()
    store = PcapStore(tmp_path)
    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    [empty] = tmp_path.rglob("*.pcap.part")  # a header only: nothing was flushed
    die(store)
    foreign = session_dir / "x.pcap.part"
    foreign.write_bytes(b"not a pcap file at all, but not ours to delete")

    assert PcapStore.recover(tmp_path) == []
    assert not empty.exists()
    assert foreign.exists()


def redirect_part_files_to_dev_full(monkeypatch):
    real_open = os.open

    def open_dev_full(path, flags, mode=0o777, *, dir_fd=None):
        if str(path).endswith(".pcap.part"):
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_dev_full)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_drops_and_counts_packets_and_storing_resumes_when_space_is_free(
    tmp_path, monkeypatch
):
    store = PcapStore(tmp_path)
    with monkeypatch.context() as patch:
        redirect_part_files_to_dev_full(patch)
        for i in range(3):
            store.write(SESSION, T0 + i, ipv4(), LINKTYPE_RAW)  # must not raise
        store.flush_due(1e9)

    assert store.store_errors == {"ENOSPC": 3}
    assert store.open_sessions == 0

    store.write(SESSION, T0 + 10, ipv4(), LINKTYPE_RAW)
    [closed] = store.close_all()
    assert pcap_records(tmp_path / closed.path) == (LINKTYPE_RAW, [(T0 + 10, ipv4())])
    assert store.store_errors == {"ENOSPC": 3}


def test_a_failed_flush_cuts_the_file_back_to_its_last_whole_record(tmp_path, monkeypatch):
    store = PcapStore(tmp_path)
    for i in range(2):
        store.write(SESSION, T0 + i, ipv4(), LINKTYPE_RAW)
    store.flush()
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 10:  # half a buffer reaches the disk, then the disk is full
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", half_then_full)
        for i in range(2, 5):
            store.write(SESSION, T0 + i, ipv4(), LINKTYPE_RAW)
        store.flush()
    store.write(SESSION, T0 + 5, ipv4(), LINKTYPE_RAW)
    [closed] = store.close_all()

    path = tmp_path / closed.path
    assert store.store_errors == {"ENOSPC": 3}
    assert [t for t, _ in pcap_records(path)[1]] == [T0, T0 + 1, T0 + 5]
    assert (closed.packets, closed.last_ns) == (3, T0 + 5)
    assert closed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_that_cannot_be_cut_back_is_left_for_recover(tmp_path, monkeypatch):
    store = PcapStore(tmp_path)
    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    store.flush()
    real_write = os.write

    def garbage_then_full(fd, data):
        real_write(fd, b"\x07" * 5)
        raise OSError(errno.EIO, "Input/output error")

    def cannot_truncate(fd, length):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", garbage_then_full)
        patch.setattr(os, "ftruncate", cannot_truncate)
        store.write(SESSION, T0 + 1, ipv4(), LINKTYPE_RAW)
        store.flush()

    assert store.store_errors == {"EIO": 1}
    assert store.close_all() == []
    [recovered] = PcapStore.recover(tmp_path)
    assert (recovered.packets, recovered.first_ns, recovered.last_ns) == (1, T0, T0)


def test_an_unusable_root_counts_errors_instead_of_raising(tmp_path):
    root = tmp_path / "a-file"
    root.write_bytes(b"")
    store = PcapStore(root)

    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    store.write(SESSION, T0 + 1, ipv4(), LINKTYPE_RAW)

    assert store.store_errors == {"ENOTDIR": 2}
    assert store.close_all() == []


def test_a_session_whose_packets_were_all_dropped_leaves_no_file(tmp_path, monkeypatch):
    store = PcapStore(tmp_path)
    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    with monkeypatch.context() as patch:
        patch.setattr(
            os,
            "write",
            lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")),
        )
        store.flush()

    assert store.close_all() == []
    assert list(tmp_path.rglob("*.pcap*")) == []


def test_an_oversized_packet_is_cut_to_the_snaplen_and_keeps_its_original_length(tmp_path):
    store = PcapStore(tmp_path)
    store.write(SESSION, T0, bytes([0x45]) + bytes(SNAPLEN + 99), LINKTYPE_RAW)
    [closed] = store.close_all()

    raw = (tmp_path / closed.path).read_bytes()
    assert struct.unpack_from("<II", raw, 24 + 8) == (SNAPLEN, SNAPLEN + 100)
    assert repair(tmp_path / closed.path).packets == 1


def test_close_expired_closes_the_files_of_sessions_that_went_quiet(tmp_path):
    store = PcapStore(tmp_path, rotate_seconds=60)
    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    store.write(SESSION6, T0 + 30 * SECOND, ipv4(), LINKTYPE_RAW)

    store.close_expired(T0 + 59 * SECOND)
    assert store.take_closed() == []
    store.close_expired(T0 + 60 * SECOND)

    assert [file.session for file in store.take_closed()] == [SESSION]
    assert store.open_sessions == 1


def test_a_quiet_session_s_file_closes_hashed_after_the_quiet_time_and_a_busy_one_stays_open(
    tmp_path,
):
    store = PcapStore(tmp_path, quiet_seconds=60)
    quiet, busy = SESSION, SESSION6
    store.write(quiet, T0, ipv4(), LINKTYPE_RAW)
    store.write(quiet, T0 + 5 * SECOND, ipv4(payload=b"last"), LINKTYPE_RAW)
    for second in range(0, 121, 10):
        store.write(busy, T0 + second * SECOND, ipv4(), LINKTYPE_RAW)

    store.close_expired(T0 + 65 * SECOND - 1)  # one ns short of the quiet one's time
    assert store.take_closed() == []
    store.close_expired(T0 + 65 * SECOND)
    (closed,) = store.take_closed()
    assert (closed.session, closed.packets, closed.last_ns) == (quiet, 2, T0 + 5 * SECOND)
    on_disk = tmp_path / closed.path
    assert closed.sha256 == hashlib.sha256(on_disk.read_bytes()).hexdigest()
    assert not on_disk.with_name(on_disk.name + ".part").exists()
    # The busy session's packet 10 s ago keeps its file open, well past the quiet one's.
    store.close_expired(T0 + 130 * SECOND)
    assert store.take_closed() == []
    store.flush()
    assert [file.session for file in store.open_files()] == [busy]
    # The quiet session's next packet opens its next file.
    store.write(quiet, T0 + 131 * SECOND, ipv4(), LINKTYPE_RAW)
    store.flush()
    assert sorted(file.packets for file in store.open_files()) == [1, 13]


def test_without_a_quiet_time_only_the_age_limit_closes_a_quiet_file(tmp_path):
    store = PcapStore(tmp_path, rotate_seconds=3600)
    store.write(SESSION, T0, ipv4(), LINKTYPE_RAW)
    store.close_expired(T0 + 3599 * SECOND)
    assert store.take_closed() == []
    assert store.quiet_seconds is None


@pytest.mark.parametrize("quiet", [0, -1, float("nan")])
def test_a_quiet_time_that_is_not_positive_is_refused(tmp_path, quiet):
    with pytest.raises(ValueError, match="quiet_seconds must be positive"):
        PcapStore(tmp_path, quiet_seconds=quiet)
