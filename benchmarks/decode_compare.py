"""Byte-for-byte comparison of ``manage.py decode`` between two source trees.

    .venv/bin/python benchmarks/decode_compare.py --baseline /tmp/old-tree [CAPTURE ...]
        [--workdir /tmp/x] [--frames 30000]

For speed work on the decode path: the output (stdout and the summary on stderr, and
the exit status) must not change. ``--baseline`` is a tree of an older commit (``git
archive COMMIT | tar -x -C /tmp/old-tree``). Every capture given, and a generated one
that exercises flow detection (below), is decoded by both trees without ports, with
``--port 30030 --contrail-port 8099`` and with ``--port 30030 --port 40000``; every
difference is printed and the exit status is 1 if there is one.

The generated capture mixes, in a seeded random order: jmirror flows whose inner IPv4
checksums hold (certain on their own), flows whose inner addresses were rewritten
without fixing the checksum (judged by the flow), IPv6 and PPP inner packets, Contrail
flows (VLAN-tagged inner frames, bad checksums), datagrams that fail to decode
mid-flow, a flow with too many misses, flows still undecided at the end, and random UDP
noise; so certain datagrams are held behind candidates and released in order.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

from receiver.contrail import contrail_header  # noqa: E402


def _outer(router: str, port: int, payload: bytes) -> Ether:
    return (
        Ether()
        / IP(src=router, dst="198.51.100.10", ttl=255)
        / UDP(sport=port, dport=port, chksum=0)
        / Raw(payload)
    )


def _inner_ipv4(rng: random.Random, *, good_checksum: bool) -> bytes:
    packet = (
        IP(src=f"10.0.{rng.randrange(4)}.{rng.randrange(1, 9)}", dst="203.0.113.5")
        / (
            UDP(sport=rng.randrange(1024, 65536), dport=53)
            if rng.random() < 0.6
            else TCP(sport=rng.randrange(1024, 65536), dport=443)
        )
        / (b"p" * rng.randrange(0, 300))
    )
    data = bytearray(bytes(packet))
    if not good_checksum:
        # Addresses rewritten after the checksum was computed, as anonymizers do.
        data[15] ^= 1 + rng.randrange(200)
    return bytes(data)


def _jmirror(rng: random.Random, mid: int, sid: int, *, good_checksum: bool) -> bytes:
    roll = rng.random()
    if roll < 0.1:
        inner = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / b"v6")
    elif roll < 0.15:
        inner = b"\xff\x03\x00\x21" + _inner_ipv4(rng, good_checksum=good_checksum)
    elif roll < 0.17:
        inner = _inner_ipv4(rng, good_checksum=good_checksum)[:-3]  # inconsistent length
    else:
        inner = _inner_ipv4(rng, good_checksum=good_checksum)
    return mid.to_bytes(4, "big") + sid.to_bytes(4, "big") + inner


def _contrail(rng: random.Random, *, good_checksum: bool, flow_mirroring: bool) -> bytes:
    header = (
        contrail_header(
            capture_host="10.1.1.1",
            flags=0x400000A0,
            source_vn="default-domain:project:vn-left",
            dest_vn="default-domain:project:vn-right",
        )
        if flow_mirroring
        else contrail_header(source_vn="default-domain:project:vn-left")
    )
    ip = bytearray(bytes(IP(src="10.2.0.5", dst="10.2.0.6") / ICMP() / (b"c" * rng.randrange(40))))
    if not good_checksum:
        ip[15] ^= 7
    macs = bytes.fromhex("020000000002020000000001")
    tag = b"\x81\x00\x00\x64" if rng.random() < 0.3 else b""
    raw = macs + tag + b"\x08\x00" + bytes(ip)
    return header + raw


def detection_capture(path: Path, frames: int, seed: int = 17) -> None:
    rng = random.Random(seed)
    sources = [
        # weight, outer source, port, what it sends
        (30, "192.0.2.1", 30030, "jmirror-good"),
        (10, "192.0.2.2", 30030, "jmirror-good"),
        (12, "192.0.2.3", 40000, "jmirror-rewritten"),
        (4, "192.0.2.4", 40001, "jmirror-mixed"),
        (5, "192.0.2.5", 8099, "contrail-good"),
        (4, "192.0.2.6", 9000, "contrail-rewritten"),
        (3, "192.0.2.7", 33333, "jmirror-noisy"),
        (10, "198.51.100.200", 0, "noise"),
    ]
    weights = [weight for weight, *_ in sources]
    packets = []
    for _ in range(frames):
        _, router, port, kind = rng.choices(sources, weights)[0]
        if kind == "jmirror-good":
            payload = _jmirror(rng, 0x300 + (router[-1] == "2"), 0x90, good_checksum=True)
        elif kind == "jmirror-rewritten":
            payload = _jmirror(rng, 0x301, 0x91, good_checksum=False)
        elif kind == "jmirror-mixed":
            payload = _jmirror(rng, 0x302, 0x92, good_checksum=rng.random() < 0.5)
        elif kind == "contrail-good":
            payload = _contrail(rng, good_checksum=True, flow_mirroring=rng.random() < 0.7)
        elif kind == "contrail-rewritten":
            payload = _contrail(rng, good_checksum=False, flow_mirroring=True)
        elif kind == "jmirror-noisy":
            payload = (
                _jmirror(rng, rng.randrange(2**30), 5, good_checksum=False)
                if rng.random() < 0.4
                else rng.randbytes(rng.randrange(1, 120))
            )
        else:
            port = rng.randrange(1024, 65536)
            payload = rng.randbytes(rng.randrange(1, 200))
        packets.append(_outer(router, port, payload))
    # Flows that end undecided: two and three candidates at the very end.
    for index in range(3):
        packets.append(_outer("192.0.2.9", 41000, _jmirror(rng, 0x309, 9, good_checksum=False)))
        if index < 2:
            packets.append(
                _outer("192.0.2.10", 41001, _jmirror(rng, 0x30A, 9, good_checksum=False))
            )
    wrpcap(str(path), packets)


OPTION_SETS = (
    [],
    ["--port", "30030", "--contrail-port", "8099"],
    ["--port", "30030", "--port", "40000"],
)


def run(tree: Path, capture: Path, options: list[str]) -> tuple[int, bytes, bytes]:
    done = subprocess.run(
        [sys.executable, str(tree / "manage.py"), "decode", *options, str(capture)],
        capture_output=True,
        cwd=tree,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=30_000)
    parser.add_argument("captures", type=Path, nargs="*")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="decode-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    generated = workdir / "detection.pcap"
    detection_capture(generated, args.frames)
    differences = 0
    for capture in [generated, *args.captures]:
        for options in OPTION_SETS:
            ours = run(REPO, capture, options)
            theirs = run(args.baseline.resolve(), capture, options)
            lines = ours[1].count(b"\n")
            if ours == theirs:
                print(f"same   {capture} {' '.join(options)} ({lines} lines)")
            else:
                differences += 1
                print(f"DIFFER {capture} {' '.join(options)}: status {ours[0]}/{theirs[0]}")
                print(f"  stderr now: {ours[2][-300:]!r}\n  stderr was: {theirs[2][-300:]!r}")
                for number, (new, old) in enumerate(
                    zip(ours[1].splitlines(), theirs[1].splitlines(), strict=False)
                ):
                    if new != old:
                        print(f"  line {number + 1} now: {new[:300]!r}\n  was: {old[:300]!r}")
                        break
    print(f"{differences} differences")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
