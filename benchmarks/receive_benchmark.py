"""Benchmark: the receive loop against a paced sender in another process (loopback).

    .venv/bin/python benchmarks/receive_benchmark.py [--size 128] [--count 300000] [--rate 150000]

One receiver (gate claiming the sender's stream, pcap store in a temporary directory)
runs in this process; a plain sendto loop in a child process offers ``--count``
datagrams of ``--size`` bytes at ``--rate`` per second (0: as fast as it can). Prints
how many arrived, the loss, and the receiver's CPU microseconds per packet. The
lossless-rate search and the comparison with ``tcpdump -w`` are
``benchmarks/lossless_search.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from receiver.gate import Gate, InterceptRule, RouterRule  # noqa: E402
from receiver.receive_loop import Receiver  # noqa: E402
from receiver.store import PcapStore  # noqa: E402
from receiver.traffic import jmirror_datagram  # noqa: E402

SENDER = """
import socket, sys, time
payload = bytes.fromhex(sys.argv[1]); port = int(sys.argv[2])
count = int(sys.argv[3]); rate = float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.perf_counter()
for index in range(count):
    if rate:
        due = start + index / rate
        while time.perf_counter() < due:
            pass
    sock.sendto(payload, ("127.0.0.1", port))
print(f"sent {count} in {time.perf_counter() - start:.2f} s")
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128, help="jmirror datagram bytes (>= 44)")
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=150_000, help="datagrams/s; 0: flat out")
    args = parser.parse_args()

    now = time.time_ns()
    day = 86_400 * 10**9
    rule = InterceptRule(
        1, "BENCH", 1, "BENCH", 0x300, None, frozenset(), (now - day, now + day), True, True
    )
    root = Path(tempfile.mkdtemp(prefix="jmirror-receive-bench-"))
    receiver = Receiver(
        [("127.0.0.1", 0)],
        Gate([RouterRule(1, "127.0.0.1")], [rule]),
        PcapStore(root),
        rcvbuf=32 << 20,
    )
    for warning in receiver.warnings:
        print("warning:", warning)
    port = receiver.addresses[0][1]
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    inner = inner / Raw(b"x" * max(0, args.size - 8 - 28))
    payload = jmirror_datagram(inner, mid=0x300, sid=1)

    thread = threading.Thread(target=receiver.run)
    thread.start()
    cpu_before = time.process_time()
    subprocess.run(
        [sys.executable, "-c", SENDER, payload.hex(), str(port), str(args.count), str(args.rate)],
        check=True,
    )
    time.sleep(1.0)  # let the receiver drain its socket buffer
    receiver.stop()
    thread.join()
    cpu = time.process_time() - cpu_before
    received = receiver.counters.datagrams
    print(
        f"{len(payload)}-byte datagrams at {args.rate:,.0f}/s: received {received:,} of "
        f"{args.count:,} ({1 - received / args.count:.2%} lost), "
        f"{cpu / max(1, received) * 1e6:.2f} us CPU per packet (receiver and store)"
    )


if __name__ == "__main__":
    main()
