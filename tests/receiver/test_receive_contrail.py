"""The receiver end to end on loopback for CN2 / Contrail: frames claimed by analyzer
port, by virtual network and by target stored byte-identical with their Juniper header,
everything else counted by reason with nothing on disk."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from django.db import connection

from jmirror_web.intercepts.models import (
    CaptureFile,
    Intercept,
    ReceiverProcess,
    Router,
    Session,
    UnclaimedStream,
)
from receiver import traffic
from receiver.contrail import CONTRAIL_MID, INGRESS_FLAG
from receiver.pcap import LinkType
from receiver.pcap_reader import iter_frames
from receiver.receive_loop import Receiver
from receiver.service import analyzer_listen, serve
from tests.factories import make_case, make_intercept, make_router
from tests.receiver.test_receive_command import on_disk, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PASS_MIRROR = 0xA0


class ServedContrail:
    """A receiver whose only Contrail socket is on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.stop = threading.Event()
        self.bound = threading.Event()
        self.receiver: Receiver | None = None
        self.thread = threading.Thread(target=self._serve, args=(root,), daemon=True)
        self.thread.start()
        assert self.bound.wait(10), "the receiver did not start"

    def _serve(self, root: Path) -> None:
        try:
            serve(
                [("127.0.0.1", 0)],
                root=root,
                stop=self.stop,
                rcvbuf=1 << 20,
                ready=self._ready,
                live=lambda batch: None,
                contrail_listen=[("127.0.0.1", 0)],
            )
        finally:
            connection.close()

    def _ready(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.bound.set()

    @property
    def port(self) -> int:
        assert self.receiver is not None
        [sock] = self.receiver.contrail_sockets
        port: int = sock.getsockname()[1]
        return port

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


def send(payloads: list[bytes], source: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((source, 0))
        for payload in payloads:
            sender.sendto(payload, ("127.0.0.1", port))


def frame(index: int, src: str = traffic.SUBSCRIBER, dst: str = traffic.SERVER) -> bytes:
    mirrored = traffic.ipv4_udp(src=src, dst=dst, sport=40000 + index)
    return bytes(traffic.inner_frame(mirrored, vlans=(100,) if index % 2 else ()))


def datagram(frame_bytes: bytes, vrouter: str, *, source_vn: str = "vn-a", **kwargs: object):
    options = {
        "capture_host": vrouter,
        "flags": PASS_MIRROR | INGRESS_FLAG,
        "source_vn": source_vn,
        "dest_vn": "vn-z",
        **kwargs,
    }
    return traffic.contrail_datagram(frame_bytes, **options)  # type: ignore[arg-type]


def stored_frames(session: Session, root: Path) -> list[bytes]:
    rows = list(CaptureFile.objects.filter(session=session).order_by("first_packet", "path"))
    frames: list[bytes] = []
    for row in rows:
        path = on_disk(row, root)
        assert row.closed
        assert path.suffix == ".pcapng"
        assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        with path.open("rb") as stream:
            for _, _, linktype, data in iter_frames(stream):
                assert linktype == LinkType.ETHERNET
                frames.append(data)
    return frames


def test_frames_claimed_by_port_vn_and_target_are_stored_and_the_rest_counted(tmp_path):
    by_port = make_router(name="vrouter-1", address="127.0.0.1", kind=Router.Kind.CN2, port=8099)
    by_vn = make_router(name="vrouter-2", address="127.0.0.2", kind=Router.Kind.CN2, port=8099)
    by_target = make_router(name="vrouter-3", address="127.0.0.3", kind=Router.Kind.CN2, port=8099)
    root = tmp_path / "sessions"
    served = ServedContrail(root)
    port = served.port
    case = make_case()
    common = {"kind": Intercept.Kind.CN2, "intercept_id": None}
    port_claim = make_intercept(case, analyzer_port=port, routers=[by_port], **common)
    vn_claim = make_intercept(case, virtual_networks=["vn-b"], routers=[by_vn], **common)
    target_claim = make_intercept(case, targets=["192.0.2.0/28"], routers=[by_target], **common)
    assert served.receiver is not None
    receiver = served.receiver
    wait_for(lambda: port in receiver.gate.analyzer_ports, timeout=10)

    claimed_by_port = [frame(i) for i in range(6)]
    claimed_by_vn = [frame(100 + i) for i in range(4)]
    claimed_by_target = [frame(200 + i, dst="192.0.2.9") for i in range(3)]
    try:
        send([datagram(f, "127.0.0.1") for f in claimed_by_port], "127.0.0.1", port)
        # The other vRouters: only the VN "vn-b" and the target's frames are claimed.
        send(
            [datagram(f, "127.0.0.2", source_vn="vn-b") for f in claimed_by_vn]
            + [datagram(frame(300), "127.0.0.2")],  # no_intercept: another VN
            "127.0.0.2",
            port,
        )
        send(
            [datagram(f, "127.0.0.3") for f in claimed_by_target]
            + [datagram(frame(301), "127.0.0.3")],  # no_intercept: no target address
            "127.0.0.3",
            port,
        )
        send([datagram(frame(302), "127.0.0.4")], "127.0.0.4", port)  # unknown_router
        # A claimed stream whose capture host is not the vRouter, and a broken datagram.
        send([datagram(frame(303), "192.0.2.99"), b"\x03\x40cut"], "127.0.0.1", port)
        wait_for(lambda: ReceiverProcess.objects.filter(datagrams=18).exists(), timeout=10)
    finally:
        served.finish()

    sessions = {session.intercept: session for session in Session.objects.all()}
    assert set(sessions) == {port_claim, vn_claim, target_claim}
    for intercept, frames in (
        (port_claim, claimed_by_port),
        (vn_claim, claimed_by_vn),
        (target_claim, claimed_by_target),
    ):
        session = sessions[intercept]
        assert (session.mid, session.sid) == (CONTRAIL_MID, port)
        assert (session.packets, session.stored_packets) == (len(frames), len(frames))
        assert stored_frames(session, root) == frames

    process = ReceiverProcess.objects.get()
    assert process.drops == {"no_intercept": 2, "unknown_router": 1, "wrong_capture_host": 1}
    assert process.malformed == 1
    unclaimed = {
        (row.source, row.mid, row.sid): row.reason for row in UnclaimedStream.objects.all()
    }
    assert unclaimed == {
        ("127.0.0.2", CONTRAIL_MID, port): "no_intercept",
        ("127.0.0.3", CONTRAIL_MID, port): "no_intercept",
        ("127.0.0.4", CONTRAIL_MID, port): "unknown_router",
    }
    stored = sorted(path.name for path in root.rglob("*.pcapng"))
    assert len(stored) == 3

    tshark = shutil.which("tshark")
    if tshark is not None:
        path = on_disk(CaptureFile.objects.get(session=sessions[port_claim]), root)
        shown = subprocess.run(
            [tshark, "-r", str(path), "-T", "fields", "-e", "udp.srcport", "-e", "frame.comment"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert [line.split("\t")[0] for line in shown] == [str(40000 + i) for i in range(6)]
        assert all("source VN vn-a; destination VN vn-z" in line for line in shown)


def test_the_analyzer_ports_of_cn2_routers_are_listened_on_beside_jmirror():
    assert analyzer_listen([("127.0.0.1", 30030), ("::1", 30030)], [8099, 8100, 8099]) == [
        ("127.0.0.1", 8099),
        ("::1", 8099),
        ("127.0.0.1", 8100),
        ("::1", 8100),
    ]
    # A port jmirror listens on stays jmirror's there.
    assert analyzer_listen([("127.0.0.1", 8099)], [8099]) == []
