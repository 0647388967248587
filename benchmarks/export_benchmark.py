"""Benchmark: :func:`jmirror_web.exports.engine.stream_export` on a large stored session.

    .venv/bin/python benchmarks/export_benchmark.py [--size-mib 2048] [--workdir /tmp] [--json]

Writes one session of ``--size-mib`` MiB (2 GiB by default) with the receiver's own
:class:`receiver.store.PcapStore`, rotating every ``--rotate-mib`` MiB (256 by default),
in a temporary directory under ``--workdir`` that is removed afterwards. The packet mix:
three quarters full-size packets (IPv4 TCP of 1400 to 1500 bytes), one quarter small ones
(IPv4 TCP/UDP and IPv6 UDP of 60 to 600 bytes), over 16 subscriber-side addresses and
a handful of ports, one packet every 10 us.

Then times, one after the other, each export consumed to the end with the chunks thrown
away (what the web view does, minus the socket):

- the whole session as pcap (the bulk-copy path);
- the whole session as pcapng (an Enhanced Packet Block built per packet);
- a window over the middle half of the session, as pcap;
- the whole session filtered on one address and port 443, as pcap (every packet looked into);
- the whole session as a zip of one pcapng member (the zip's CRC and member digest on top).

For each: wall-clock seconds, CPU seconds (the whole process, and the consuming thread
alone: the SHA-256 runs on a worker thread, so on two idle cores the wall time tends
to the larger of the two), MB/s of output bytes and of source bytes (the stored files'
bytes in the export's scope), and memory growth: VmRSS after minus before, and the
peak (VmHWM, reset through /proc/self/clear_refs before each run where the kernel
allows it) minus the RSS before. The files are read from the page cache, as they are
right after writing them. The goal: at least 300 MB/s for a 2 GB session, less
than 100 MB of growth. It prints the figures; no test asserts them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jmirror_web.exports.engine import stream_export  # noqa: E402
from jmirror_web.exports.request import (  # noqa: E402
    ExportFormat,
    ExportRequest,
    PacketFilter,
    SessionSource,
    SourceFile,
    Window,
)
from jmirror_web.exports.writers import ExportDigest  # noqa: E402
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey  # noqa: E402

T0 = 1_795_000_000 * 10**9
STEP_NS = 10_000
KEY = SessionKey(liid="LIID-BENCH", router="192.0.2.1", mid=0x300, sid=0x90)
SUBSCRIBERS = [f"10.20.0.{number}" for number in range(1, 17)]
FILTER_ADDRESS = SUBSCRIBERS[3]


def ipv4(src: str, dst: str, protocol: int, sport: int, dport: int, size: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, size, 1, 0, 64, protocol, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    )  # fmt: skip
    transport = struct.pack("!HH", sport, dport)
    return (header + transport + bytes(size))[:size]


def ipv6_udp(size: int, sport: int) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 0x60000000, size - 40, 17, 64,
        ipaddress.ip_address("2001:db8::10").packed, ipaddress.ip_address("2001:db8::53").packed,
    )  # fmt: skip
    return (header + struct.pack("!HH", sport, 53) + bytes(size))[:size]


def packet_mix(seed: int = 6) -> list[bytes]:
    """4096 packets to cycle through: 3/4 of 1400-1500 bytes, 1/4 of 60-600 bytes."""
    chooser = random.Random(seed)
    packets = []
    for _ in range(4096):
        subscriber = chooser.choice(SUBSCRIBERS)
        server = f"203.0.113.{chooser.randrange(1, 255)}"
        port = chooser.choice([443, 443, 443, 80, 8080])
        upstream = chooser.random() < 0.5
        src, dst = (subscriber, server) if upstream else (server, subscriber)
        sport, dport = (40000, port) if upstream else (port, 40000)
        if chooser.random() < 0.75:
            packets.append(ipv4(src, dst, 6, sport, dport, chooser.randrange(1400, 1501)))
        elif chooser.random() < 0.8:
            protocol = chooser.choice([6, 17])
            packets.append(ipv4(src, dst, protocol, sport, dport, chooser.randrange(60, 601)))
        else:
            packets.append(ipv6_udp(chooser.randrange(60, 601), 40000 + chooser.randrange(100)))
    return packets


def build_session(root: Path, size: int, rotate: int) -> tuple[list[SourceFile], int, int]:
    """Store about ``size`` bytes of packets; the files, the last packet's time and the
    number of packets."""
    store = PcapStore(root, rotate_bytes=rotate, rotate_seconds=10**6)
    packets = packet_mix()
    written = 0
    time_ns = T0
    index = 0
    count = len(packets)
    write = store.write
    while written < size:
        data = packets[index % count]
        write(KEY, time_ns, data, LINKTYPE_RAW)
        written += 16 + len(data)
        time_ns += STEP_NS
        index += 1
    files = [
        SourceFile(root / closed.path, closed.linktype, closed.first_ns, closed.last_ns)
        for closed in store.close_all()
    ]
    return files, time_ns - STEP_NS, index


def memory_kib() -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run(request: ExportRequest, source_bytes: int) -> dict[str, float]:
    reset = reset_peak()
    before = memory_kib()
    digest = ExportDigest()
    largest = 0
    started = time.perf_counter()
    cpu = time.process_time()
    thread_cpu = time.thread_time()
    for chunk in stream_export(request, digest):
        largest = max(largest, len(chunk))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    thread_cpu = time.thread_time() - thread_cpu
    after = memory_kib()
    assert digest.complete
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "main_thread_cpu_seconds": thread_cpu,
        "output_bytes": digest.size,
        "packets": digest.packets,
        "output_mb_s": digest.size / elapsed / 1e6,
        "source_mb_s": source_bytes / elapsed / 1e6,
        "rss_growth_mib": (after["VmRSS"] - before["VmRSS"]) / 1024,
        "peak_growth_mib": (after["VmHWM"] - before["VmRSS"]) / 1024 if reset else float("nan"),
        "largest_chunk": largest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="session size (2048)")
    parser.add_argument("--rotate-mib", type=int, default=256, help="file rotation size (256)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    options = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="export-benchmark-", dir=options.workdir))
    try:
        started = time.perf_counter()
        files, last_ns, written = build_session(
            directory, options.size_mib * 2**20, options.rotate_mib * 2**20
        )
        total = sum(file.path.stat().st_size for file in files)
        print(
            f"session: {total / 1e6:.0f} MB in {len(files)} files, written in "
            f"{time.perf_counter() - started:.1f} s under {directory}"
        )
        span = last_ns - T0
        session = SessionSource("LIID-BENCH sid 0x90", "benchmark session", files)
        middle = Window(T0 + span // 4, T0 + 3 * span // 4)
        only = PacketFilter(
            addresses=frozenset({ipaddress.ip_address(FILTER_ADDRESS)}), ports=frozenset({443})
        )
        cases = [
            ("pcap, whole session", ExportRequest([session], ExportFormat.PCAP), total),
            ("pcapng, whole session", ExportRequest([session], ExportFormat.PCAPNG), total),
            (
                "pcap, window over half",
                ExportRequest([session], ExportFormat.PCAP, middle),
                total // 2,
            ),
            (
                "pcap, filtered (1 address, port 443)",
                ExportRequest([session], ExportFormat.PCAP, packet_filter=only),
                total,
            ),
            ("zip of one pcapng member", ExportRequest([session], ExportFormat.ZIP), total),
        ]
        results = {}
        print(
            f"{'export':38} {'seconds':>8} {'CPU s':>6} {'main s':>6} {'output MB':>10} "
            f"{'packets':>10} {'out MB/s':>9} {'src MB/s':>9} {'RSS +MiB':>9} {'peak +MiB':>9}"
        )
        for name, request, source_bytes in cases:
            figures = run(request, source_bytes)
            results[name] = figures
            if "whole" in name or "zip" in name:
                assert figures["packets"] == written, (name, figures["packets"], written)
            print(
                f"{name:38} {figures['seconds']:8.2f} {figures['cpu_seconds']:6.2f} "
                f"{figures['main_thread_cpu_seconds']:6.2f} {figures['output_bytes'] / 1e6:10.0f} "
                f"{figures['packets']:10.0f} {figures['output_mb_s']:9.0f} "
                f"{figures['source_mb_s']:9.0f} {figures['rss_growth_mib']:9.1f} "
                f"{figures['peak_growth_mib']:9.1f}"
            )
        if options.json:
            print(json.dumps({"source_bytes": total, "files": len(files), "results": results}))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
