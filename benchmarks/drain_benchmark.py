"""Benchmark: the receive loop's drain, C path against Python path, per datagram.

    .venv/bin/python benchmarks/drain_benchmark.py [--sizes 128,1400] [--fill 2000] [--rounds 15]

A socket of the real :class:`receiver.receive_loop.Receiver` (gate claiming the stream, pcap
store in a temporary directory) is filled by this process with ``--fill`` valid jmirror
datagrams of one stream, then drained by the receiver's own drain function until empty;
the thread CPU time of the drain divided by the datagrams is the receiver's cost per
datagram, kernel receive included (no sender on this CPU, no scheduling in between).
Best of ``--rounds``. Ticks run between rounds, so streams rebind as in the live loop.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from receiver.gate import Gate, InterceptRule, RouterRule  # noqa: E402
from receiver.receive_loop import Receiver, kernel_drops  # noqa: E402
from receiver.store import PcapStore  # noqa: E402
from receiver.traffic import jmirror_datagram  # noqa: E402

RULE = InterceptRule(1, "LIID1", 1, "CASE", 5, None, frozenset(), (0, 2**62), True, True)


def datagram(size: int) -> bytes:
    """A valid jmirror datagram of exactly ``size`` bytes: IPv4/UDP inside."""
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    inner = inner / Raw(b"x" * (size - 8 - len(inner)))
    payload = jmirror_datagram(bytes(inner), mid=5, sid=1)
    assert len(payload) == size
    return payload


def measure(size: int, fill: int, rounds: int, native: bool) -> tuple[float, int]:
    payload = datagram(size)
    with tempfile.TemporaryDirectory() as directory:
        receiver = Receiver(
            [("127.0.0.1", 0)],
            Gate([RouterRule(1, "127.0.0.1")], [RULE]),
            PcapStore(Path(directory)),
            rcvbuf=64 * 2**20,
            native=native,
        )
        sock = receiver.sockets[0]
        sock.setblocking(False)
        drain = receiver._drainer(sock)
        best = float("inf")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.connect(receiver.addresses[0])
            for _ in range(rounds):
                for _ in range(fill):
                    sender.send(payload)
                before = receiver.counters.datagrams
                start = time.thread_time_ns()
                while True:
                    done = receiver.counters.datagrams
                    drain()
                    if receiver.counters.datagrams == done:
                        break
                took = time.thread_time_ns() - start
                got = receiver.counters.datagrams - before
                assert got == fill, (got, fill, kernel_drops(sock))
                best = min(best, took / got / 1000)
                receiver.tick(time.time_ns())
        receiver.finish(time.time_ns())
        receiver.close_sockets()
        return best, fill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,1400")
    parser.add_argument("--fill", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    print(" size  path     us/datagram (best of rounds, thread CPU)")
    for size in (int(text) for text in options.sizes.split(",")):
        for native in (True, False):
            cost, _ = measure(size, options.fill, options.rounds, native)
            print(f"{size:5d}  {'C' if native else 'Python':7s}  {cost:.2f}")


if __name__ == "__main__":
    main()
