"""Benchmark: ``manage.py decode`` against tshark, and the decoders per packet.

    .venv/bin/python benchmarks/decode_benchmark.py [--packets 1000000] [--workdir /tmp/x]
    .venv/bin/python benchmarks/decode_benchmark.py --acceptance [--repeat 5]
        [--baseline /path/to/an/older/tree]

Without ``--acceptance`` it writes a capture of mirrored traffic (a realistic mix: mostly
IPv4 TCP/UDP, some IPv6, PPP sessions with LCP, and UDP noise that is not jmirror), then
times, in one run:

- ``manage.py decode FILE`` (all packets, jmirror detected on any port) to /dev/null;
- ``tshark -r FILE -d udp.port==30030,jmirror -T fields`` (mid, sid, inner addresses);
- ``decode_datagram`` on each kind of payload in the capture, and on the whole mix.

With ``--acceptance`` it measures issue 17's acceptance shape instead: an all-IPv4-UDP
jmirror capture (400,000 packets unless ``--packets`` says otherwise) to port 30030,
which tshark decodes as jmirror by default, and times side by side, the runs
alternating so that a load from elsewhere on the machine hits them alike:

- ``manage.py decode FILE > /dev/null`` (no port: detection on);
- ``manage.py decode --port 30030 FILE > /dev/null``;
- ``tshark -r FILE -Y jmirror -T fields -e jmirror.mid -e jmirror.sid -e ip.src -e ip.dst``;
- with ``--baseline DIR``, the first two from another source tree too (an older commit
  exported with ``git archive``), for before/after figures on the same machine state.

It prints each one's best, median and worst of ``--repeat`` runs in packets per
second, and decode's ratio to tshark (best against best, and the lowest and highest
over the runs paired in order).

Both modes end with ``decode_contrail`` per packet for a flow-mirrored IPv4 UDP frame
(TLVs 1-4), the receiver's per-packet cost for CN2.

Timings are wall-clock. It prints the figures; no test asserts them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scapy.layers.dns import DNS, DNSQR  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.layers.ppp import PPP_LCP_Echo  # noqa: E402
from scapy.packet import Packet  # noqa: E402

from receiver.contrail import contrail_header, decode_contrail  # noqa: E402
from receiver.jmirror import decode_datagram  # noqa: E402
from receiver.pcap_reader import iter_frames, iter_udp_datagrams  # noqa: E402

PORT = 30030
ROUTER = "192.0.2.1"
MEDIATION = "198.51.100.10"


def _mirrored(inner: Packet | bytes, mid: int, sid: int) -> bytes:
    """An Ethernet frame carrying one jmirror datagram, as a router sends it."""
    payload = struct.pack("!II", mid, sid) + bytes(inner)
    outer = Ether() / IP(src=ROUTER, dst=MEDIATION, ttl=255) / UDP(sport=PORT, dport=PORT, chksum=0)
    return bytes(outer / payload)


def traffic_mix() -> list[tuple[str, bytes]]:
    """One frame of each template, labelled with its kind; repeated to fill the capture."""
    frames: list[tuple[str, bytes]] = []
    for index in range(70):
        body = b"x" * (20 + 13 * index)
        frames.append(
            (
                "ipv4-tcp",
                _mirrored(
                    IP(src=f"10.0.{index}.1", dst="203.0.113.5")
                    / TCP(sport=40000 + index, dport=443)
                    / body,
                    0x300,
                    0x90,
                ),
            )
        )
    for index in range(10):
        frames.append(
            (
                "ipv4-udp",
                _mirrored(
                    IP(src="10.0.0.1", dst="8.8.8.8") / UDP(sport=5000 + index) / DNS(), 0x300, 0x90
                ),
            )
        )
        frames.append(
            (
                "ipv4-icmp",
                _mirrored(IP(src="10.0.0.1", dst="8.8.8.8") / ICMP() / b"ping", 0x300, 0x90),
            )
        )
    for index in range(15):
        frames.append(
            (
                "ipv6-tcp",
                _mirrored(
                    IPv6(src="2001:db8::1", dst=f"2001:db8:1::{index}", fl=index)
                    / TCP(sport=1000 + index, dport=443)
                    / (b"y" * 200),
                    0x8000,
                    1,
                ),
            )
        )
    for _ in range(5):
        frames.append(
            (
                "ppp-ipv4",
                _mirrored(
                    b"\xff\x03\x00\x21" + bytes(IP(src="100.64.0.2", dst="1.1.1.1") / UDP()),
                    0x3039,
                    0x1E240,
                ),
            )
        )
        frames.append(
            ("ppp-lcp", _mirrored(b"\xff\x03\xc0\x21" + bytes(PPP_LCP_Echo()), 0x3039, 0x1E240))
        )
    for index in range(5):
        noise = Ether() / IP(src="192.0.2.53", dst=MEDIATION) / UDP(sport=53, dport=33000 + index)
        frames.append(("noise-dns", bytes(noise / DNS(id=index, qd=DNSQR(qname="example.net")))))
    return frames


def acceptance_frames() -> list[tuple[str, bytes]]:
    """Issue 17's acceptance shape: every frame a jmirror datagram to port 30030 whose
    mirrored packet is IPv4 UDP. Subscribers, servers, ports and sizes vary (DNS-like
    to full-size), two routers and two sessions each, as a mediation host sees them."""
    frames: list[tuple[str, bytes]] = []
    for index in range(64):
        inner = (
            IP(src=f"10.{index % 4}.{index}.1", dst=f"203.0.113.{index % 16}")
            / UDP(sport=20000 + index * 7, dport=(53, 443, 4500, 5060)[index % 4])
            / (b"u" * (12 + 22 * index))
        )
        payload = struct.pack("!II", 0x300 + index % 2, 0x90 + index % 2) + bytes(inner)
        router = ROUTER if index % 3 else "192.0.2.2"
        outer = (
            Ether() / IP(src=router, dst=MEDIATION, ttl=255) / UDP(sport=PORT, dport=PORT, chksum=0)
        )
        frames.append(("ipv4-udp", bytes(outer / payload)))
    return frames


def write_capture(path: Path, frames: list[tuple[str, bytes]], packets: int) -> None:
    """A microsecond pcap of ``packets`` records cycling through ``frames``."""
    records = [frame for _, frame in frames]
    start = 1_790_000_000
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        chunk: list[bytes] = []
        for number in range(packets):
            frame = records[number % len(records)]
            chunk.append(
                struct.pack(
                    "<IIII",
                    start + number // 100_000,
                    number % 100_000 * 10,
                    len(frame),
                    len(frame),
                )
            )
            chunk.append(frame)
            if len(chunk) >= 20_000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))


def best_wall_time(command: list[str], repeat: int) -> tuple[float, int]:
    """Best wall time of ``repeat`` runs, and the largest resident set of any child so
    far in KiB (Linux reports ru_maxrss in KiB)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
        )
        best = min(best, time.perf_counter() - started)
    return best, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def wall_time(command: list[str], cpu: list[float] | None = None) -> float:
    """Wall time of one run; its CPU time (user and system) is appended to ``cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return seconds


def describe(name: str, packets: int, seconds: list[float], cpu: list[float]) -> str:
    """Packets per second at the best, median and worst run, and the best CPU time."""
    rates = sorted((packets / second for second in seconds), reverse=True)
    return (
        f"{name}: best {rates[0]:,.0f}, median {statistics.median(rates):,.0f}, "
        f"worst {rates[-1]:,.0f} packets/s ({len(rates)} runs; best {min(seconds):.2f} s "
        f"wall, {min(cpu):.2f} s CPU)"
    )


def acceptance(args: argparse.Namespace, workdir: Path) -> None:
    """Time issue 17's acceptance shape side by side (see the module's docstring)."""
    tshark = shutil.which("tshark") or "/usr/bin/tshark"
    if not Path(tshark).exists():
        sys.exit("tshark is not installed: the acceptance is measured against it")
    packets = args.packets or 400_000
    capture = workdir / "acceptance.pcap"
    write_capture(capture, acceptance_frames(), packets)
    print(
        f"capture: {capture} ({packets} frames of IPv4 UDP in jmirror to port {PORT}, "
        f"{capture.stat().st_size / 1e6:.0f} MB)"
    )
    trees = {"decode": REPO}
    if args.baseline:
        trees["baseline decode"] = args.baseline.resolve()
    commands: dict[str, list[str]] = {}
    for label, tree in trees.items():
        manage = [sys.executable, str(tree / "manage.py"), "decode"]
        commands[f"{label} (detection)"] = [*manage, str(capture)]
        commands[f"{label} --port {PORT}"] = [*manage, "--port", str(PORT), str(capture)]
    commands["tshark -Y jmirror -T fields"] = [
        tshark,
        "-r",
        str(capture),
        "-Y",
        "jmirror",
        "-T",
        "fields",
        *("-e", "jmirror.mid", "-e", "jmirror.sid", "-e", "ip.src", "-e", "ip.dst"),
    ]
    for command in commands.values():
        wall_time(command)  # a warm-up: the page cache, Python's bytecode cache
    seconds: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(args.repeat):
        for label, command in commands.items():
            seconds[label].append(wall_time(command, cpu[label]))
    for label in commands:
        print(describe(label, packets, seconds[label], cpu[label]))
    theirs = seconds["tshark -Y jmirror -T fields"]
    their_cpu = cpu["tshark -Y jmirror -T fields"]
    for label in commands:
        if not label.startswith("tshark"):
            ours = seconds[label]
            paired = sorted(t / o for t, o in zip(theirs, ours, strict=True))
            print(
                f"{label} is {min(theirs) / min(ours):.2f}x tshark's packets per second "
                f"(best against best; runs paired in order: {paired[0]:.2f}x to "
                f"{paired[-1]:.2f}x; by CPU time {min(their_cpu) / min(cpu[label]):.2f}x)"
            )
    if args.workdir is None:
        os.unlink(capture)


def contrail_microseconds(repeat: int) -> float:
    """``decode_contrail`` per packet: a flow-mirrored IPv4 UDP frame with TLVs 1-4."""
    frame = bytes(
        Ether() / IP(src="10.0.0.5", dst="10.0.1.9") / UDP(sport=40000, dport=53) / (b"q" * 64)
    )
    payload = (
        contrail_header(
            capture_host="10.1.1.1",
            flags=0x400000A0,
            source_vn="default-domain:k8s-default:k8s-default-pod-network",
            dest_vn="default-domain:k8s-default:k8s-default-service-network",
        )
        + frame
    )
    number = 100_000
    best = min(timeit.repeat(lambda: decode_contrail(payload), number=number, repeat=repeat))
    return best / number * 1e6


def reader_seconds(capture: Path) -> float:
    """The capture reader alone: records down to UDP datagrams, in this process."""
    started = time.perf_counter()
    with capture.open("rb") as stream:
        for _ in iter_udp_datagrams(iter_frames(stream), Counter()):
            pass
    return time.perf_counter() - started


def per_packet_microseconds(payloads: list[bytes], repeat: int) -> float:
    def decode_all() -> None:
        for payload in payloads:
            decode_datagram(payload)

    number = max(1, 200_000 // len(payloads))
    best = min(timeit.repeat(decode_all, number=number, repeat=repeat))
    return best / (number * len(payloads)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--packets", type=int, default=None, help="1,000,000; 400,000 with --acceptance"
    )
    parser.add_argument(
        "--acceptance",
        action="store_true",
        help="issue 17's acceptance shape (all IPv4 UDP jmirror) against tshark -Y jmirror",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="with --acceptance: another source tree whose manage.py decode is timed too",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of manage.py decode, best reported (the first read of a freshly "
        "written capture is slowed by its write-back)",
    )
    parser.add_argument("--tshark-repeat", type=int, default=1, help="runs of tshark")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="jmirror-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.acceptance:
        acceptance(args, workdir)
        print(f"decode_contrail, flow mirroring, IPv4 UDP: {contrail_microseconds(5):.2f} us")
        if args.workdir is None:
            workdir.rmdir()
        return
    args.packets = args.packets or 1_000_000
    capture = workdir / "mix.pcap"
    frames = traffic_mix()
    write_capture(capture, frames, args.packets)
    kinds = Counter(kind for kind, _ in frames)
    print(f"capture: {capture} ({args.packets} frames, {capture.stat().st_size / 1e6:.0f} MB)")
    print("mix per cycle of", len(frames), "frames:", dict(kinds))

    decode = [sys.executable, str(REPO / "manage.py"), "decode", str(capture)]
    ours, peak_kib = best_wall_time(decode, args.repeat)
    print(
        f"manage.py decode: {ours:.2f} s, {args.packets / ours:,.0f} packets/s, "
        f"peak resident memory {peak_kib / 1024:.0f} MiB"
    )
    reader = reader_seconds(capture)
    print(f"capture reader alone: {reader:.2f} s, {args.packets / reader:,.0f} frames/s")

    tshark = shutil.which("tshark")
    if tshark:
        fields = ["jmirror.mid", "jmirror.sid", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst"]
        command = [
            tshark,
            "-n",
            "-r",
            str(capture),
            "-d",
            f"udp.port=={PORT},jmirror",
            "-T",
            "fields",
        ]
        for field in fields:
            command += ["-e", field]
        theirs, _ = best_wall_time(command, args.tshark_repeat)
        print(f"tshark -T fields: {theirs:.2f} s, {args.packets / theirs:,.0f} packets/s")
        print(f"decode is {theirs / ours:.1f}x tshark's packets per second")
    else:
        print("tshark is not installed: no comparison")

    payloads_by_kind: dict[str, list[bytes]] = {}
    for kind, frame in frames:
        if not kind.startswith("noise"):
            # Ethernet 14 + IPv4 20 + UDP 8 in front of every template above.
            payloads_by_kind.setdefault(kind, []).append(frame[42:])
    for kind, payloads in payloads_by_kind.items():
        print(f"decode_datagram {kind}: {per_packet_microseconds(payloads, 5):.2f} us")
    mix = [frame[42:] for kind, frame in frames if not kind.startswith("noise")]
    print(
        f"decode_datagram, the capture's mix ({len(mix)} payloads): "
        f"{per_packet_microseconds(mix, 5):.2f} us"
    )
    print(f"decode_contrail, flow mirroring, IPv4 UDP: {contrail_microseconds(5):.2f} us")
    if args.workdir is None:
        os.unlink(capture)
        workdir.rmdir()


if __name__ == "__main__":
    main()
