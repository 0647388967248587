"""Benchmark: how long ``receive`` takes to stop with many sessions' counters pending.

    .venv/bin/python benchmarks/shutdown_benchmark.py [--sessions 10000] [--database sqlite]
    .venv/bin/python benchmarks/shutdown_benchmark.py --database postgres://postgres@127.0.0.1:5432

The receiver (``serve()``, loopback, a fresh database as in bookkeeping_benchmark.py) gets
one datagram for each of ``--sessions`` sessions, with the periodic write held off (the
write interval made an hour) so that every counter is pending at the stop: the worst
case for the final write. Prints the time from the stop to ``serve()`` returning (files
closed and hashed, last counters and file rows written), and checks that the database
has every counter and that no "not written" was logged. No test asserts these figures.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.throwaway_database import throwaway_database  # noqa: E402

MID = 0x300


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument(
        "--database", default="sqlite", help="sqlite, or a PostgreSQL server URL (no database)"
    )
    arguments = parser.parse_args()
    if not 1 <= arguments.sessions <= 100_000:
        parser.error("--sessions 1..100000")
    with throwaway_database(arguments.database, "shutdown-benchmark") as directory:
        run(arguments.sessions, directory)


def run(sessions: int, directory: Path) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from jmirror_web.intercepts.models import Case, Intercept, Router, Session
    from receiver import service
    from receiver.receive_loop import Receiver
    from receiver.traffic import ipv4_udp, jmirror_datagram

    now = timezone.now()
    Router.objects.create(name="r1", address="127.0.0.1")
    case = Case.objects.create(
        reference="BENCH-1",
        title="Benchmark",
        agency="Benchmark",
        status=Case.Status.ACTIVE,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=1),
    )
    Intercept.objects.create(
        case=case,
        liid="BENCH",
        intercept_id=MID,
        valid_from=case.valid_from,
        valid_until=case.valid_until,
    )
    connection.close()
    recorder = Recorder()
    logging.getLogger("receiver").addHandler(recorder)
    logging.getLogger("receiver").setLevel(logging.INFO)
    service.WRITE_INTERVAL = 3600.0  # type: ignore[misc]  # every counter pending at stop
    stop = threading.Event()
    ready = threading.Event()
    served: list[Receiver] = []

    def on_ready(receiver: Receiver) -> None:
        served.append(receiver)
        ready.set()

    def serve() -> None:
        try:
            service.serve(
                [("127.0.0.1", 0)], root=directory / "sessions", stop=stop, ready=on_ready
            )
        finally:
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise SystemExit("the receiver did not start")
    receiver = served[0]
    port = receiver.addresses[0][1]
    payload = ipv4_udp()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for sid in range(sessions):
            sender.sendto(jmirror_datagram(payload, mid=MID, sid=sid), ("127.0.0.1", port))
            if (sid + 1) % 200 == 0:  # paced: the socket buffer must not overflow
                deadline = time.monotonic() + 5
                while receiver.counters.datagrams <= sid and time.monotonic() < deadline:
                    time.sleep(0.002)
    deadline = time.monotonic() + 10
    while receiver.counters.datagrams < sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    received = receiver.counters.datagrams
    began = time.perf_counter()
    stop.set()
    thread.join(timeout=120)
    took = time.perf_counter() - began
    counted = sum(Session.objects.values_list("packets", flat=True))
    rows = Session.objects.count()
    print(
        f"{connection.vendor}: {sessions} sessions, {received} datagrams received; stop took "
        f"{took:.2f} s; database: {rows} sessions, {counted} packets"
    )
    for line in recorder.lines:
        if "not written" in line or "could not be written" in line or "still writing" in line:
            print(f"  log: {line}")
    if thread.is_alive() or counted != received:
        raise SystemExit("the last counters were not all written")


if __name__ == "__main__":
    main()
