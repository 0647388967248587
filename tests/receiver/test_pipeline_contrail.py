"""The pipeline's Contrail path, sans-I/O: gated frame by frame where a claim hangs on
the frame, the evidence options made once per header and bounded, the capture host
check."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from receiver import pipeline as pipeline_module
from receiver.contrail import CONTRAIL_MID, contrail_header, decode_contrail, evidence_options
from receiver.gate import Gate, InterceptRule, RouterRule
from receiver.pcap_reader import iter_frames
from receiver.pipeline import WRONG_CAPTURE_HOST, DatagramPipeline
from receiver.store import PcapStore

VROUTER = "10.255.0.7"
VROUTER6 = "2001:db8::7"
PORT = 8099
T0 = 1_790_000_000_000_000_000


def rule(pk: int, **claims: object) -> InterceptRule:
    return InterceptRule(
        pk, f"LIID-{pk}", 1, "CASE", None, None, frozenset(), (0, 2**62), True, True,
        kind="cn2", **claims,  # type: ignore[arg-type]
    )  # fmt: skip


def pipeline_with(tmp_path: Path, *rules: InterceptRule) -> DatagramPipeline:
    routers = [RouterRule(1, VROUTER, contrail=True), RouterRule(2, VROUTER6, contrail=True)]
    return DatagramPipeline(Gate(routers, rules), PcapStore(tmp_path))


def datagram(index: int, *, source_vn: str = "vn-a", capture_host: str = VROUTER) -> bytes:
    frame = bytes(Ether() / IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=40000 + index))
    header = contrail_header(
        capture_host=capture_host, flags=0x400000A0, source_vn=source_vn, dest_vn="vn-z"
    )
    return header + frame


def stored(tmp_path: Path, pipeline: DatagramPipeline) -> list[bytes]:
    closed = pipeline.finish(T0 + 10**9)
    frames = []
    for facts in closed:
        with (tmp_path / facts.path).open("rb") as stream:
            frames += [data for _, _, _, data in iter_frames(stream)]
    return frames


def test_a_claim_by_virtual_network_is_asked_frame_by_frame(tmp_path: Path) -> None:
    pipeline = pipeline_with(tmp_path, rule(1, virtual_networks=frozenset({"vn-b"})))
    sent = [datagram(i, source_vn="vn-b" if i % 2 else "vn-a") for i in range(8)]
    for index, payload in enumerate(sent):
        pipeline.handle_contrail(payload, VROUTER, PORT, T0 + index)
    # Every other frame is claimed: an answer for one frame must not stick to the stream.
    assert pipeline.counters.drops == {"no_intercept": 4}
    assert stored(tmp_path, pipeline) == [decode_contrail(p).frame for p in sent[1::2]]
    assert pipeline.unclaimed[(VROUTER, CONTRAIL_MID, PORT)].count == 4


def test_a_claim_by_port_alone_is_kept_for_the_stream(tmp_path: Path) -> None:
    pipeline = pipeline_with(tmp_path, rule(1, analyzer_port=PORT))
    for index in range(3):
        pipeline.handle_contrail(datagram(index), VROUTER, PORT, T0 + index)
    assert (VROUTER, CONTRAIL_MID, PORT) in pipeline._claims
    pipeline.handle_contrail(datagram(9), VROUTER, PORT + 1, T0 + 5)
    assert pipeline.counters.drops == {"no_intercept": 1}


def test_a_capture_host_other_than_the_ipv4_vrouter_is_counted_not_stored(tmp_path: Path):
    pipeline = pipeline_with(tmp_path, rule(1, analyzer_port=PORT))
    pipeline.handle_contrail(datagram(0, capture_host="192.0.2.1"), VROUTER, PORT, T0)
    pipeline.handle_contrail(datagram(1), VROUTER, PORT, T0 + 1)
    # Over IPv6 the capture host (an IPv4 router id) cannot be held to the source.
    pipeline.handle_contrail(datagram(2, capture_host="192.0.2.1"), VROUTER6, PORT, T0 + 2)
    assert pipeline.counters.drops == {WRONG_CAPTURE_HOST: 1}
    assert len(stored(tmp_path, pipeline)) == 2


def test_the_evidence_options_are_made_once_per_header_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "EVIDENCE_CACHE_LIMIT", 2)
    pipeline = pipeline_with(tmp_path, rule(1, analyzer_port=PORT))
    sent = [datagram(i, source_vn=f"vn-{i % 3}") for i in range(9)]
    for index, payload in enumerate(sent):
        pipeline.handle_contrail(payload, VROUTER, PORT, T0 + index)
        assert len(pipeline._evidence) <= 2
    capture = b"".join((tmp_path / facts.path).read_bytes() for facts in pipeline.finish(T0 + 99))
    for payload in sent:  # each frame's own header, whatever was evicted
        assert evidence_options(decode_contrail(payload), payload) in capture


def test_malformed_contrail_is_counted_and_nothing_raises(tmp_path: Path) -> None:
    pipeline = pipeline_with(tmp_path, rule(1, analyzer_port=PORT))
    for index, payload in enumerate([b"", b"\x03\x40short", b"\xff\x00" + bytes(10)]):
        pipeline.handle_contrail(payload, VROUTER, PORT, T0 + index)
    assert pipeline.counters.malformed == 3
    assert pipeline.counters.datagrams == 3
    assert stored(tmp_path, pipeline) == []
