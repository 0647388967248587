"""Exports of CN2 (Contrail) sessions: their stored pcapng files (Ethernet frames, each
with the vRouter's Juniper header as packet options) downloaded as pcapng (options kept
byte for byte), pcap (frames alone, the loss stated in the manifest) and zip, alone and
with jmirror sessions; the filter through Ethernet and VLAN tags; damaged files."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from jmirror_web.exports.engine import check, stream_export
from jmirror_web.exports.filtering import matcher
from jmirror_web.exports.models import Export
from jmirror_web.exports.reading import read_linktype
from jmirror_web.exports.request import (
    ExportFormat,
    ExportRequest,
    PacketFilter,
    SessionSource,
    SourceError,
    SourceFile,
)
from jmirror_web.exports.verification import verify_capture_file
from jmirror_web.exports.writers import ExportDigest
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile, Case, Intercept, Router, Session
from receiver.contrail import CONTRAIL_MID, contrail_header, decode_contrail, evidence_options
from receiver.pcap import LinkType, enhanced_packet_block, pcapng_option
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user
from tests.jmirror_web.exports.evidence import (
    SECOND,
    Stored,
    body,
    frames_of,
    iso,
    moment,
    next_number,
    sha256,
    stored_session,
    t0,
    tshark_count,
)

pytestmark = pytest.mark.django_db

ETHERNET = int(LinkType.ETHERNET)
PORT = 8099
JUNIPER_OPTION = 2989
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def frame_mix(index: int) -> bytes:
    """Frames the filters can tell apart: plain IPv4 TCP/443, 802.1Q-tagged UDP/53,
    802.1ad + 802.1Q (QinQ) IPv6 UDP, a 0x9100 tag over IPv4 TCP/22, and ARP."""
    kinds = [
        lambda: Ether(**MAC) / IP(src="10.1.0.5", dst="10.2.0.9") / TCP(sport=40001, dport=443),
        lambda: (
            Ether(**MAC)
            / Dot1Q(vlan=10)
            / IP(src="10.1.0.6", dst="10.2.0.9")
            / UDP(sport=40002, dport=53)
        ),
        lambda: (
            Ether(**MAC, type=0x88A8)
            / Dot1Q(vlan=100)
            / Dot1Q(vlan=200)
            / IPv6(src="2001:db8::6", dst="2001:db8::9")
            / UDP(sport=40003, dport=5353)
        ),
        lambda: (
            Ether(**MAC, type=0x9100)
            / Dot1Q(vlan=30)
            / IP(src="10.1.0.7", dst="10.2.0.9")
            / TCP(sport=40004, dport=22)
        ),
        lambda: Ether(**MAC) / ARP(psrc="10.1.0.5", pdst="10.2.0.9"),
    ]
    return bytes(kinds[index % len(kinds)]())


@dataclass
class StoredCN2:
    stored: Stored
    blocks: list[bytes]  # the Enhanced Packet Blocks as the receiver stored them
    headers: list[bytes]  # each frame's Juniper header, as received

    @property
    def session(self) -> Session:
        return self.stored.session

    def packets(self) -> list[tuple[int, int, bytes]]:
        return [(time_ns, ETHERNET, frame) for time_ns, frame in self.stored.frames]


def stored_cn2(
    data_dir: Path,
    *,
    count: int = 10,
    case: Case | None = None,
    start_ns: int | None = None,
    rotate_seconds: float = 4,
) -> StoredCN2:
    """A vRouter's Contrail session to analyzer port 8099, stored by the receiver's own
    store as pcapng (a block per frame with its Juniper header), rotated."""
    case = case or make_case(reference=f"CN2-{next_number()}")
    number = next_number()
    router = make_router(
        name=f"vrouter-{number}",
        # The capture host TLV is a vRouter's IPv4 address (the factory's run out at 250).
        address=f"10.255.{number // 250 % 256}.{number % 250 + 1}",
        kind=Router.Kind.CN2,
        format=Router.Format.CONTRAIL,
        port=PORT,
    )
    intercept = make_intercept(
        case,
        liid=f"CN2-{next_number():04d}",
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=PORT,
        routers=[router],
    )
    start_ns = t0() if start_ns is None else start_ns
    frames, blocks, headers = [], [], []
    for index in range(count):
        time_ns = start_ns + index * SECOND
        flags = 0xA0 | (0x40000000 if index % 2 == 0 else 0)
        header = contrail_header(
            capture_host=router.address, flags=flags, source_vn="vn-red", dest_vn="vn-blue"
        )
        payload = header + frame_mix(index)
        packet = decode_contrail(payload)
        frames.append((time_ns, packet.frame))
        blocks.append(
            enhanced_packet_block(0, time_ns, packet.frame, evidence_options(packet, payload))
        )
        headers.append(header)
    session = make_session(
        intercept,
        router=router,
        mid=CONTRAIL_MID,
        sid=PORT,
        first_seen=moment(frames[0][0]),
        last_seen=moment(frames[-1][0]),
        packets=count,
        stored_packets=count,
    )
    store = PcapStore(data_dir / "sessions", rotate_seconds=rotate_seconds)
    key = SessionKey(intercept.liid, router.address, CONTRAIL_MID, PORT)
    for (time_ns, _frame), block in zip(frames, blocks, strict=True):
        assert store.write_block(key, time_ns, block, ETHERNET)
    files = []
    for closed in reversed(store.close_all()):
        assert closed.path.suffix == ".pcapng"
        files.append(
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
    return StoredCN2(Stored(case, intercept, router, session, frames, files), blocks, headers)


@pytest.fixture
def cn2(data_dir: Path) -> StoredCN2:
    return stored_cn2(data_dir)


@pytest.fixture
def analyst(cn2: StoredCN2) -> User:
    user = make_user(Role.ANALYST)
    assign(user, cn2.stored.case)
    return user


def download(client: Client, cn2: StoredCN2, **params: str) -> Any:
    return client.get(reverse("exports:session", args=[cn2.session.pk]), params)


def blocks_of(data: bytes) -> list[tuple[int, bytes]]:
    """The (interface, whole block) of every Enhanced Packet Block of a pcapng."""
    found = []
    pos = 0
    while pos < len(data):
        block_type, length = struct.unpack_from("<II", data, pos)
        if block_type == 6:
            found.append((struct.unpack_from("<I", data, pos + 8)[0], data[pos : pos + length]))
        pos += length
    return found


def juniper_option(block: bytes) -> bytes:
    """The value of a block's custom option 2989 (Juniper's PEN, then the header)."""
    captured = struct.unpack_from("<I", block, 20)[0]
    option = 28 + captured + (-captured & 3)
    while option < len(block) - 4:
        code, size = struct.unpack_from("<HH", block, option)
        if code == JUNIPER_OPTION:
            return block[option + 4 : option + 4 + size]
        option += 4 + size + (-size & 3)
    raise AssertionError("no Juniper option")


def without_interface(block: bytes) -> bytes:
    return block[:8] + block[12:]


# One session ----------------------------------------------------------------------------


def test_as_pcapng_every_block_comes_out_as_stored_with_its_juniper_header(
    client: Client, cn2: StoredCN2, analyst: User
) -> None:
    assert len(cn2.stored.files) == 3  # rotated: the export merges them
    client.force_login(analyst)
    response = download(client, cn2, format="pcapng")
    assert response.status_code == 200
    assert "_contrail-port-8099_" in response["Content-Disposition"]
    assert "sid-" not in response["Content-Disposition"]
    data = body(response)
    assert frames_of(data) == cn2.packets()  # the ARP frame too: no filter
    # One interface (the session's), so every block is byte-identical to the stored one.
    assert [block for _interface, block in blocks_of(data)] == cn2.blocks
    assert [juniper_option(block)[4:] for _, block in blocks_of(data)] == cn2.headers
    assert {juniper_option(block)[:4] for _, block in blocks_of(data)} == {struct.pack("<I", 2636)}
    export = Export.objects.get()
    assert export.state == Export.State.COMPLETE
    assert (export.sha256, export.packets) == (sha256(data), 10)
    manifest = export.manifest()
    assert manifest["juniper_headers_dropped"] == 0
    assert manifest["notes"] == []
    assert manifest["sessions"][0]["analyzer_port"] == PORT
    assert "Contrail analyzer port 8099" in export.comment


def test_as_pcap_the_frames_come_out_and_the_manifest_says_what_pcap_dropped(
    client: Client, cn2: StoredCN2, analyst: User
) -> None:
    client.force_login(analyst)
    response = download(client, cn2, format="pcap")
    assert response.status_code == 200
    assert response["Content-Disposition"].endswith('.pcap"')
    data = body(response)
    assert struct.unpack_from("<I", data, 20)[0] == ETHERNET  # the pcap header's link type
    assert frames_of(data) == cn2.packets()
    export = Export.objects.get()
    assert (export.sha256, export.packets, export.juniper_headers_dropped) == (sha256(data), 10, 10)
    manifest = client.get(reverse("exports:manifest_json", args=[export.pk])).json()
    assert manifest["juniper_headers_dropped"] == 10
    [note] = manifest["notes"]
    assert note.startswith("The Juniper header of 10 packets (direction, capture host, actions, ")
    assert "pcapng" in note
    page = client.get(reverse("exports:manifest", args=[export.pk]))
    assert note in page.content.decode()
    assert "Contrail analyzer port 8099" in page.content.decode()


def test_the_api_serves_a_cn2_session_and_its_manifest_as_the_pages_do(
    cn2: StoredCN2, analyst: User
) -> None:
    cache.clear()  # the API's throttle counts live in the cache, which outlives a test
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=analyst).key}")
    response = api.get(f"/api/sessions/{cn2.session.pk}/pcap", {"format": "pcap"})
    assert response.status_code == 200
    assert frames_of(body(response)) == cn2.packets()
    export = Export.objects.get()
    manifest = api.get(f"/api/exports/{export.pk}").json()
    assert manifest["juniper_headers_dropped"] == 10
    assert manifest["notes"] == export.notes() != []
    assert manifest["sessions"][0]["analyzer_port"] == PORT
    listing = Client()
    listing.force_login(analyst)
    page = listing.get(reverse("exports:case_exports", args=[cn2.stored.case.pk]))
    assert "Juniper header of 10 packets not in pcap" in page.content.decode()


def test_the_download_page_of_a_cn2_session_names_its_port_and_what_pcap_drops(
    client: Client, cn2: StoredCN2, analyst: User
) -> None:
    client.force_login(analyst)
    page = download(client, cn2).content.decode()
    assert "Download session Contrail analyzer port 8099" in page
    assert "pcap cannot hold it" in page


def tshark_fields(path: Path, fields: list[str]) -> list[list[str]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    command = [tshark, "-n", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for name in fields:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


def test_tshark_shows_each_packets_direction_and_comment_in_the_pcapng_export(
    client: Client, cn2: StoredCN2, analyst: User, tmp_path: Path
) -> None:
    client.force_login(analyst)
    path = tmp_path / "export.pcapng"
    path.write_bytes(body(download(client, cn2, format="pcapng")))
    rows = tshark_fields(path, ["frame.packet_flags_direction", "frame.comment", "vlan.id"])
    assert len(rows) == 10
    # Ingress (1) and egress (2) alternate, as the vRouter sent them.
    assert [int(row[0], 0) for row in rows] == [1, 2] * 5
    assert all(
        row[1].startswith(f"Juniper header: capture host {cn2.stored.router.address}; ")
        and "source VN vn-red; destination VN vn-blue" in row[1]
        for row in rows
    )
    assert rows[1][2] == "10"  # the tagged frame decoded through its tag
    pcap_path = tmp_path / "export.pcap"
    pcap_path.write_bytes(body(download(client, cn2, format="pcap")))
    assert tshark_count(pcap_path) == 10


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        ({"addresses": "10.1.0.6"}, [1, 6]),  # inside an 802.1Q tag
        ({"addresses": "2001:db8::6"}, [2, 7]),  # inside 802.1ad + 802.1Q
        ({"ports": "443"}, [0, 5]),  # untagged
        ({"ports": "22"}, [3, 8]),  # inside a 0x9100 tag
        ({"protocols": "udp"}, [1, 2, 6, 7]),
        ({"addresses": "10.2.0.9", "ports": "53"}, [1, 6]),
    ],
)
def test_filters_look_into_the_ethernet_frames_through_vlan_tags_and_leave_out_arp(
    client: Client, cn2: StoredCN2, analyst: User, params: dict[str, str], kept: list[int]
) -> None:
    client.force_login(analyst)
    for export_format in ("pcapng", "pcap"):
        data = body(download(client, cn2, format=export_format, **params))
        assert frames_of(data) == [cn2.packets()[index] for index in kept]
    # ARP (4, 9) has no address the filter reads: left out as jmirror's PPP control is.
    assert Export.objects.filter(juniper_headers_dropped=len(kept)).count() == 1


def test_a_window_keeps_only_the_frames_inside_it(
    client: Client, cn2: StoredCN2, analyst: User
) -> None:
    client.force_login(analyst)
    times = [time_ns for time_ns, _ in cn2.stored.frames]
    data = body(download(client, cn2, format="pcapng", start=iso(times[3]), end=iso(times[7])))
    # The times are cut to the microsecond on the way in: the window starts just before
    # frame 3 and ends just before frame 7.
    assert [block for _, block in blocks_of(data)] == cn2.blocks[3:7]


# With jmirror sessions -------------------------------------------------------------------


@pytest.fixture
def mixed(data_dir: Path, cn2: StoredCN2, analyst: User) -> Stored:
    """A jmirror session of the same case, its packets between the CN2 ones."""
    return stored_session(
        data_dir, count=4, case=cn2.stored.case, start_ns=cn2.stored.frames[0][0] + SECOND // 2
    )


def test_a_case_as_one_pcapng_holds_both_kinds_each_on_its_interface(
    client: Client, cn2: StoredCN2, mixed: Stored, analyst: User
) -> None:
    client.force_login(analyst)
    response = client.get(reverse("exports:case", args=[cn2.stored.case.pk]), {"format": "pcapng"})
    assert response.status_code == 200
    data = body(response)
    packets = frames_of(data)
    assert packets == sorted(cn2.packets() + [(t, LINKTYPE_RAW, d) for t, d in mixed.frames])
    blocks = blocks_of(data)
    # The CN2 session's first traffic is first: interface 0; the jmirror one is 1.
    assert {interface for interface, _ in blocks} == {0, 1}
    cn2_blocks = [block for interface, block in blocks if interface == 0]
    assert [without_interface(b) for b in cn2_blocks] == [without_interface(b) for b in cn2.blocks]
    assert [juniper_option(block)[4:] for block in cn2_blocks] == cn2.headers
    export = Export.objects.get()
    assert (export.packets, export.juniper_headers_dropped) == (14, 0)


def test_the_packets_of_both_kinds_keep_their_time_order_over_interleaved_files(
    data_dir: Path, cn2: StoredCN2, mixed: Stored
) -> None:
    # The engine alone, the sessions given the other way round: interfaces follow.
    sessions = [
        SessionSource(
            name,
            "",
            [SourceFile(data_dir / each.path, 0) for each in stored.files],
        )
        for name, stored in (("jmirror", mixed), ("cn2", cn2.stored))
    ]
    data = b"".join(stream_export(ExportRequest(sessions, ExportFormat.PCAPNG), ExportDigest()))
    blocks = blocks_of(data)
    assert [without_interface(b) for i, b in blocks if i == 1] == [
        without_interface(b) for b in cn2.blocks
    ]
    times = [struct.unpack_from("<II", block, 12) for _, block in blocks]
    assert times == sorted(times)


@pytest.mark.parametrize("member_format", ["pcap", "pcapng"])
def test_a_case_as_a_zip_holds_a_file_per_session_each_in_its_link_type(
    client: Client, cn2: StoredCN2, mixed: Stored, analyst: User, member_format: str
) -> None:
    client.force_login(analyst)
    response = client.get(
        reverse("exports:case", args=[cn2.stored.case.pk]),
        {"format": "zip", "member_format": member_format},
    )
    assert response.status_code == 200
    data = body(response)
    export = Export.objects.get()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        [cn2_name] = [name for name in archive.namelist() if "_contrail-port-8099" in name]
        [jmirror_name] = [name for name in archive.namelist() if "_mid-" in name]
        assert cn2_name.startswith(cn2.stored.intercept.liid)
        assert cn2_name.endswith(f".{member_format}")
        cn2_member = archive.read(cn2_name)
        jmirror_member = archive.read(jmirror_name)
    assert frames_of(cn2_member) == cn2.packets()
    assert frames_of(jmirror_member) == [(t, LINKTYPE_RAW, d) for t, d in mixed.frames]
    assert export.members[cn2_name]["sha256"] == sha256(cn2_member)
    if member_format == "pcap":
        assert export.juniper_headers_dropped == 10
        assert export.manifest()["notes"][0].startswith("The Juniper header of 10 packets")
    else:
        assert [block for _, block in blocks_of(cn2_member)] == cn2.blocks
        assert export.juniper_headers_dropped == 0
        assert export.manifest()["notes"] == []


def test_an_intercept_of_cn2_exports_as_a_zip_of_pcap(
    client: Client, cn2: StoredCN2, analyst: User
) -> None:
    client.force_login(analyst)
    response = client.get(
        reverse("exports:intercept", args=[cn2.stored.intercept.pk]),
        {"format": "zip", "member_format": "pcap"},
    )
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(body(response))) as archive:
        [name] = archive.namelist()
        assert name == f"{cn2.stored.router.name}_contrail-port-8099.pcap"
        assert frames_of(archive.read(name)) == cn2.packets()
    assert Export.objects.get().juniper_headers_dropped == 10


# Damaged files ------------------------------------------------------------------------------


def cn2_request(cn2: StoredCN2, data_dir: Path, form: ExportFormat) -> ExportRequest:
    files = [SourceFile(data_dir / each.path, 0) for each in cn2.stored.files]
    return ExportRequest([SessionSource("cn2", "", files)], form)


def test_a_stored_pcapng_cut_inside_a_block_fails_the_download_mid_stream(
    client: Client, cn2: StoredCN2, analyst: User, data_dir: Path
) -> None:
    newest = data_dir / cn2.stored.files[0].path
    newest.write_bytes(newest.read_bytes()[:-7])  # ends inside its last block
    client.force_login(analyst)
    response = download(client, cn2, format="pcapng")
    assert response.status_code == 200  # the damage is found only when reading that far
    with pytest.raises(SourceError):
        body(response)
    export = Export.objects.get()
    assert export.state == Export.State.FAILED
    assert newest.name in export.error
    assert export.sha256 == ""


def test_a_cut_or_garbage_block_is_the_same_source_error_as_in_a_pcap_file(
    cn2: StoredCN2, data_dir: Path
) -> None:
    oldest = cn2.stored.files[-1]  # its blocks are the first ones
    path = data_dir / oldest.path
    content = path.read_bytes()
    header = len(content) - sum(len(block) for block in cn2.blocks[: oldest.packets])
    last = header + sum(len(block) for block in cn2.blocks[: oldest.packets - 1])
    path.write_bytes(content[:-5])
    for form in (ExportFormat.PCAP, ExportFormat.PCAPNG):
        with pytest.raises(SourceError) as raised:
            b"".join(stream_export(cn2_request(cn2, data_dir, form), ExportDigest()))
        assert str(raised.value) == (
            f"The stored file {path.name} is truncated: it ends inside the record at byte {last}."
        )
    garbage = bytearray(content)
    second = header + len(cn2.blocks[0])
    garbage[second + 4 : second + 8] = struct.pack("<I", 1 << 30)  # the block's length
    path.write_bytes(garbage)
    # Every format but the IP-only pcap, which refuses Ethernet frames before reading.
    for form in [each for each in ExportFormat if each != ExportFormat.PCAP_IP]:
        with pytest.raises(
            SourceError,
            match=rf"^The stored file {path.name} is corrupt at byte {second}: its record "
            r"header is not valid\.$",
        ):
            b"".join(stream_export(cn2_request(cn2, data_dir, form), ExportDigest()))
    garbage = bytearray(content)
    garbage[second + 20 : second + 24] = struct.pack("<I", 100_000)  # captured length
    path.write_bytes(garbage)
    with pytest.raises(SourceError, match=rf"corrupt at byte {second}: "):
        b"".join(stream_export(cn2_request(cn2, data_dir, ExportFormat.PCAP), ExportDigest()))


def section(*, big_endian: bool = False, resolution: int | None = 9) -> bytes:
    order = ">" if big_endian else "<"
    body = struct.pack(f"{order}IHHq", 0x1A2B3C4D, 1, 0, -1) + struct.pack(f"{order}HH", 0, 0)
    shb = struct.pack(f"{order}II", 0x0A0D0D0A, 12 + len(body)) + body
    shb += struct.pack(f"{order}I", 12 + len(body))
    options = b"" if resolution is None else pcapng_option(9, bytes([resolution]))
    options += struct.pack("<HH", 0, 0)
    idb_body = struct.pack("<HHI", 1, 0, 65535) + options
    idb = (
        struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body))
    )
    return shb + idb


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (section(big_endian=True), "is not a pcapng file as stored: its section is big-endian"),
        (section(resolution=None), "its packet times are not in nanoseconds"),
        (section(resolution=6), "its packet times are not in nanoseconds"),
        (section()[:40], "is shorter than a pcapng file header"),
        (section()[:32] * 2, "does not start with an interface description"),
        (
            section()[:4] + struct.pack("<I", 1 << 20) + section()[8:],
            "the block at byte 0 has a length of 1048576",
        ),
    ],
)
def test_a_pcapng_file_not_as_the_store_writes_it_is_refused_before_anything_is_sent(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "foreign.pcapng"
    path.write_bytes(content)
    request = ExportRequest([SessionSource("x", "", [SourceFile(path, 0)])], ExportFormat.PCAPNG)
    with pytest.raises(SourceError, match=message):
        check(request)
    with pytest.raises(SourceError, match=message):
        read_linktype(path)


def test_a_stored_pcapng_file_is_verified_as_a_pcap_file_is(cn2: StoredCN2, data_dir: Path) -> None:
    capture = cn2.stored.files[0]
    assert verify_capture_file(capture, actor="os:test").ok is True
    path = data_dir / capture.path
    content = bytearray(path.read_bytes())
    content[-40] ^= 1  # inside the last frame's options: still a readable file
    path.write_bytes(content)
    assert verify_capture_file(capture, actor="os:test").ok is False


# The filter alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "wanted"),
    [
        (frame_mix(0), True),
        (frame_mix(4), False),  # ARP
        (frame_mix(0)[:20], False),  # cut inside the IP header
        (frame_mix(0)[:13], False),  # cut inside the Ethernet header
        (bytes(Ether(**MAC) / Dot1Q(vlan=1))[:16], False),  # cut inside a tag
        # More tags than the decoder follows (8): not looked into.
        (
            bytes(Ether(**MAC, type=0x8100))[:12]
            + b"\x81\x00\x00\x01" * 9
            + b"\x08\x00"
            + bytes(IP(src="10.1.0.5") / TCP(dport=443)),
            False,
        ),
        (
            bytes(Ether(**MAC, type=0x8100))[:12]
            + b"\x81\x00\x00\x01" * 8
            + b"\x08\x00"
            + bytes(IP(src="10.1.0.5") / TCP(dport=443)),
            True,
        ),
    ],
)
def test_the_filter_on_ethernet_frames_is_bounded_and_reads_only_ip(
    frame: bytes, wanted: bool
) -> None:
    match = matcher(PacketFilter(ports=frozenset({443})))
    assert match is not None
    buffer = bytearray(b"pad" + frame)
    assert match(buffer, 3, len(buffer), ETHERNET) is wanted


def test_a_live_cn2_session_exports_what_its_open_pcapng_file_holds_so_far(
    client: Client, cn2: StoredCN2, analyst: User, data_dir: Path
) -> None:
    stored = cn2.stored
    live = PcapStore(data_dir / "sessions")
    key = SessionKey(stored.intercept.liid, stored.router.address, CONTRAIL_MID, PORT)
    later = stored.frames[-1][0] + SECOND
    payload = contrail_header(flags=0xA0) + frame_mix(0)  # egress, no host or VN
    packet = decode_contrail(payload)
    block = enhanced_packet_block(0, later, packet.frame, evidence_options(packet, payload))
    assert live.write_block(key, later, block, ETHERNET)
    live.flush()
    [being_written] = live.open_files()
    CaptureFile.objects.create(
        session=stored.session,
        path=str(Path("sessions") / being_written.path),
        first_packet=moment(later),
        last_packet=moment(later),
        packets=1,
        closed=False,
    )
    stored.session.last_seen = moment(later)
    stored.session.save()
    client.force_login(analyst)
    exported = body(download(client, cn2, format="pcapng"))
    assert [block for _, block in blocks_of(exported)] == [*cn2.blocks, block]
    live.close_all()
