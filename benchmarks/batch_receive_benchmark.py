"""Benchmark: draining a full UDP socket with recvfrom_into, recvfrom and recvmmsg.

    .venv/bin/python benchmarks/batch_receive_benchmark.py [--datagrams 20000] [--rounds 30]

One process, loopback. For each payload size (128 and 1400 bytes by default) a receiving
socket (SO_RCVBUF 8 MiB asked; the kernel caps it at net.core.rmem_max) is filled by a
sender socket in the same process, then drained with the socket empty at the end; only
the draining is timed. A receive buffer holds fewer datagrams than ``--datagrams`` (each
one costs its payload plus kernel overhead), so a round fills and drains it several
times until ``--datagrams`` have been drained, and the times add up. Ways of draining:

- ``recvfrom_into``: what receiver/receive_loop.py does per datagram: ``recvfrom_into(buffer)``,
  ``bytes(view[:size])``, ``source[0]``;
- ``recvfrom``: ``payload, source = recvfrom(65535)`` and ``source[0]``;
- ``batch N``: :class:`receiver.batch_receive.BatchReceiver` with ``batch=N``, iterating
  the (payload, source) pairs of each :meth:`receive` call;
- ``lists N``: the same with :meth:`receive_lists` and ``zip`` in the caller.

Prints microseconds per datagram, wall clock and this thread's CPU time (user + system),
each the best of ``--rounds`` rounds (the ways interleaved within a round): the reference
machine is shared and loaded, the best round is the one least disturbed by other
processes, and CPU time does not count the time slices other processes took. No test
asserts these figures.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from receiver.batch_receive import BatchReceiver  # noqa: E402

RCVBUF = 8 * 2**20
Drain = Callable[[socket.socket], int]


def drain_recvfrom_into(sock: socket.socket) -> int:
    buffer = bytearray(65535)
    view = memoryview(buffer)
    recv = sock.recvfrom_into
    count = 0
    while True:
        try:
            size, source = recv(buffer)
        except BlockingIOError:
            return count
        _payload = bytes(view[:size])
        _address = source[0]
        count += 1


def drain_recvfrom(sock: socket.socket) -> int:
    recv = sock.recvfrom
    count = 0
    while True:
        try:
            _payload, source = recv(65535)
        except BlockingIOError:
            return count
        _address = source[0]
        count += 1


def batch_drain(receiver: BatchReceiver) -> Drain:
    def drain(sock: socket.socket) -> int:
        receive = receiver.receive
        count = 0
        while batch := receive():
            for _payload, _address in batch:  # unpacked as a caller would
                count += 1
        return count

    return drain


def lists_drain(receiver: BatchReceiver) -> Drain:
    def drain(sock: socket.socket) -> int:
        receive = receiver.receive_lists
        count = 0
        while True:
            payloads, sources = receive()
            if not payloads:
                return count
            for _payload, _address in zip(payloads, sources, strict=True):
                count += 1

    return drain


def fill(sender: socket.socket, target: tuple[str, int], payload: bytes, count: int) -> None:
    send = sender.sendto
    for _ in range(count):
        send(payload, target)


def capacity(receiver: socket.socket, sender: socket.socket, payload: bytes) -> int:
    """How many datagrams of this size the receive buffer holds."""
    fill(sender, receiver.getsockname(), payload, 100_000 // max(1, len(payload) // 128))
    return drain_recvfrom(receiver)


def timed_round(
    receiver: socket.socket,
    sender: socket.socket,
    payload: bytes,
    per_fill: int,
    total: int,
    drain: Drain,
) -> tuple[float, float]:
    """Wall and CPU seconds per datagram to drain ``total`` datagrams, ``per_fill`` at a
    time (CPU: this thread's user + system time, which time slices lost to other
    processes on a loaded machine do not inflate)."""
    target = receiver.getsockname()
    drained = 0
    wall = cpu = 0
    while drained < total:
        fill(sender, target, payload, per_fill)
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        got = drain(receiver)
        cpu += time.thread_time_ns() - start_cpu
        wall += time.perf_counter_ns() - start
        if got != per_fill:
            raise RuntimeError(f"drained {got} of {per_fill}: the buffer overflowed")
        drained += got
    return wall / drained / 1e9, cpu / drained / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 1400])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    rcvbuf = receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    print(f"SO_RCVBUF {rcvbuf} bytes; best of {args.rounds} rounds of {args.datagrams} datagrams")

    ways: dict[str, Drain] = {
        "recvfrom_into": drain_recvfrom_into,
        "recvfrom": drain_recvfrom,
    }
    for batch in args.batches:
        ways[f"batch {batch}"] = batch_drain(BatchReceiver(receiver, batch=batch))
    for batch in args.batches:
        ways[f"lists {batch}"] = lists_drain(BatchReceiver(receiver, batch=batch))

    for size in args.sizes:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        # Stay well under the capacity so that no datagram is lost while filling.
        per_fill = min(args.datagrams, capacity(receiver, sender, payload) * 8 // 10)
        best = dict.fromkeys(ways, float("inf"))
        best_cpu = dict.fromkeys(ways, float("inf"))
        for _ in range(args.rounds):
            for name, drain in ways.items():
                wall, cpu = timed_round(receiver, sender, payload, per_fill, args.datagrams, drain)
                best[name] = min(best[name], wall)
                best_cpu[name] = min(best_cpu[name], cpu)
        print(f"\n{size}-byte datagrams ({per_fill} queued per fill), us/datagram:")
        print(f"  {'':14} {'wall':>6} {'':5}  {'cpu':>6}")
        reference, reference_cpu = best["recvfrom_into"], best_cpu["recvfrom_into"]
        for name, wall in best.items():
            cpu = best_cpu[name]
            print(
                f"  {name:14} {wall * 1e6:6.3f} x{reference / wall:4.2f}"
                f"  {cpu * 1e6:6.3f} x{reference_cpu / cpu:4.2f}"
            )


if __name__ == "__main__":
    main()
