"""The store's pcapng files: a Contrail session's Ethernet frames with their Juniper
header kept per packet, closed, hashed and repaired as its pcap files are."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from receiver.contrail import contrail_header, decode_contrail, evidence_options
from receiver.pcap import LinkType, enhanced_packet_block, pcapng_section_header
from receiver.pcap_reader import iter_frames
from receiver.store import PART_SUFFIX, STORE_APPLICATION, PcapStore, SessionKey, repair

SESSION = SessionKey("CN2-LIID-1", "10.255.0.7", 0, 0)
ETHERNET = int(LinkType.ETHERNET)
T0 = 1_790_000_000_000_000_000


def datagram(index: int, *, ingress: bool = True) -> bytes:
    frame = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.1.0.5", dst="10.2.0.9", id=index)
        / UDP(sport=40000, dport=53)
        / (b"q" * index)
    )
    flags = 0xA0 | (0x40000000 if ingress else 0)
    header = contrail_header(capture_host=SESSION.router, flags=flags, source_vn="vn-a")
    return header + frame


def block(index: int, **kwargs: bool) -> tuple[bytes, bytes]:
    """The frame of datagram ``index`` and the block the pipeline stores for it."""
    payload = datagram(index, **kwargs)
    packet = decode_contrail(payload)
    options = evidence_options(packet, payload)
    return packet.frame, enhanced_packet_block(0, T0 + index, packet.frame, options)


def test_frames_come_back_byte_identical_from_a_closed_pcapng_file(tmp_path: Path) -> None:
    store = PcapStore(tmp_path)
    frames = []
    for index in range(5):
        frame, stored = block(index, ingress=index % 2 == 0)
        frames.append(frame)
        assert store.write_block(SESSION, T0 + index, stored, ETHERNET)
    [closed] = store.close_all()
    path = tmp_path / closed.path
    assert path.suffix == ".pcapng"
    assert (closed.packets, closed.first_ns, closed.last_ns) == (5, T0, T0 + 4)
    assert closed.linktype == ETHERNET
    content = path.read_bytes()
    assert closed.sha256 == hashlib.sha256(content).hexdigest()
    assert closed.bytes == len(content)
    with path.open("rb") as stream:
        read = [(time_ns, linktype, data) for _, time_ns, linktype, data in iter_frames(stream)]
    assert read == [(T0 + index, ETHERNET, frames[index]) for index in range(5)]


def test_wireshark_reads_the_stored_frames_and_their_direction(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    store = PcapStore(tmp_path)
    for index in range(2):
        store.write_block(SESSION, T0 + index, block(index, ingress=index == 0)[1], ETHERNET)
    [closed] = store.close_all()
    fields = ["frame.packet_flags_direction", "ip.id", "frame.comment", "frame.interface_name"]
    command = [tshark, "-r", str(tmp_path / closed.path), "-T", "fields", "-E", "separator=|"]
    for name in fields:
        command += ["-e", name]
    rows = [
        line.split("|")
        for line in subprocess.run(
            command, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    ]
    assert [row[:2] for row in rows] == [["0x00000001", "0x0000"], ["0x00000002", "0x0001"]]
    assert rows[0][2].startswith("Juniper header: capture host 10.255.0.7; ingress")
    assert rows[0][3] == "CN2-LIID-1_10.255.0.7_mid-00000000_sid-00000000"


def test_a_pcap_link_type_is_refused_by_write_block(tmp_path: Path) -> None:
    store = PcapStore(tmp_path)
    with pytest.raises(ValueError, match="stored as pcap"):
        store.write_block(SESSION, T0, block(0)[1], int(LinkType.RAW))


def _killed_store_file(tmp_path: Path, packets: int) -> Path:
    """A .pcapng.part file as a killed receiver leaves it: written, never closed."""
    store = PcapStore(tmp_path)
    for index in range(packets):
        store.write_block(SESSION, T0 + index, block(index)[1], ETHERNET)
    store.flush()
    [part] = tmp_path.glob(f"*/*.pcapng{PART_SUFFIX}")
    copy = part.with_name("copy.pcapng" + PART_SUFFIX)
    shutil.copy(part, copy)
    store.close_all()
    for closed in tmp_path.glob("*/*.pcapng"):
        closed.unlink()
    return copy


@pytest.mark.parametrize("cut", [1, 7, 31])
def test_recovery_cuts_a_pcapng_file_back_to_its_last_whole_block(tmp_path: Path, cut: int):
    part = _killed_store_file(tmp_path, 3)
    whole = part.read_bytes()
    last_block = len(block(2)[1])
    part.write_bytes(whole + block(3)[1][:cut])
    [recovered] = PcapStore.recover(tmp_path)
    final = tmp_path / recovered.path
    assert final.name == "copy.pcapng"
    assert final.read_bytes() == whole
    assert (recovered.packets, recovered.first_ns, recovered.last_ns) == (3, T0, T0 + 2)
    assert recovered.sha256 == hashlib.sha256(whole).hexdigest()
    assert last_block > cut


def test_a_block_whose_trailing_length_disagrees_ends_the_whole_part(tmp_path: Path) -> None:
    part = _killed_store_file(tmp_path, 2)
    whole = part.read_bytes()
    damaged = bytearray(block(2)[1])
    damaged[-1] ^= 0xFF
    part.write_bytes(whole + bytes(damaged))
    described = repair(part, truncate=False)
    assert (described.packets, described.truncated_bytes) == (2, len(damaged))
    assert part.read_bytes() == whole + bytes(damaged)  # only described


def test_a_file_cut_inside_its_interface_block_has_no_packet_and_is_removed(tmp_path: Path):
    part = _killed_store_file(tmp_path, 1)
    section = len(pcapng_section_header(STORE_APPLICATION))
    part.write_bytes(part.read_bytes()[: section + 8])
    assert PcapStore.recover(tmp_path) == []
    assert not part.exists()


def test_a_file_that_is_not_a_little_endian_pcapng_section_is_left_alone(tmp_path: Path):
    directory = tmp_path / "session"
    directory.mkdir()
    part = directory / ("foreign.pcapng" + PART_SUFFIX)
    part.write_bytes(bytes.fromhex("0a0d0d0a") + bytes.fromhex("1c000000") + bytes(20))
    assert PcapStore.recover(tmp_path) == []
    assert part.exists()
