"""Benchmark: one Bookkeeper write of many session counters and open files.

    .venv/bin/python benchmarks/bookkeeping_benchmark.py [--sessions 10000] [--database sqlite]
    .venv/bin/python benchmarks/bookkeeping_benchmark.py --database postgres://postgres@127.0.0.1:5432

A fresh database (a SQLite file in a temporary directory, or a database of its own made on
the given PostgreSQL server and dropped at the end) is migrated and given one router,
case and intercept. A :class:`Bookkeeper` then absorbs snapshots of ``--sessions``
session deltas with as many open files (one per session), and each write is timed:

- ``first``: every session and file row new;
- ``all changed``: every session and file has more packets;
- ``tenth changed``: a tenth of them has (the others had no traffic since the last write);
- ``absorb``: absorbing one snapshot of all sessions (the bookkeeping thread's share of
  the interpreter while the receive loop runs);
- ``final``: the shutdown write: every session has counts and every file is closed
  (hashed), as in the final snapshot.

Times are wall clock, the best of ``--rounds``. Run it in a checkout of an earlier commit
(same command) for the figures before. No test asserts these figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.throwaway_database import throwaway_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--database", default="sqlite", help="sqlite, or a PostgreSQL server URL (no database)"
    )
    arguments = parser.parse_args()
    if not 1 <= arguments.sessions <= 1_000_000 or not 1 <= arguments.rounds <= 100:
        parser.error("--sessions 1..1000000, --rounds 1..100")
    with throwaway_database(arguments.database, "bookkeeping-benchmark") as directory:
        run(arguments.sessions, arguments.rounds, directory)


def run(sessions: int, rounds: int, directory: Path) -> None:
    import django

    django.setup()
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from jmirror_web.intercepts.models import Case, Intercept, Router, Session
    from receiver.bookkeeping import Bookkeeper
    from receiver.pipeline import ListenerCounters, SessionDelta, Snapshot
    from receiver.store import FileFacts, SessionKey

    now = timezone.now()
    router = Router.objects.create(name="r1", address="192.0.2.1")
    case = Case.objects.create(
        reference="BENCH-1",
        title="Benchmark",
        agency="Benchmark",
        status=Case.Status.ACTIVE,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=1),
    )
    intercept = Intercept.objects.create(
        case=case,
        liid="BENCH",
        intercept_id=1,
        valid_from=case.valid_from,
        valid_until=case.valid_until,
    )
    root = directory / "sessions"
    root.mkdir()
    keeper = Bookkeeper(root)
    keeper.register()
    start_ns = time.time_ns()

    def snapshot(step: int, share: int) -> Snapshot:
        time_ns = start_ns + step * 1_000_000_000
        deltas = {}
        files = []
        for number in range(sessions):
            mid, sid = 1, number
            store_key = SessionKey("BENCH", router.address, mid, sid)
            delta = SessionDelta(router.pk, intercept.pk, case.pk, "BENCH", time_ns, store_key)
            if number % share == 0:
                delta.packets, delta.bytes, delta.stored = 10, 2000, 10
                deltas[(router.address, mid, sid)] = delta
            files.append(
                FileFacts(
                    Path(f"BENCH_{number:08x}") / "a.pcap.part",
                    store_key,
                    1,
                    start_ns,
                    time_ns,
                    10 * (step // share + 1) if number % share else 10 * (step + 1),
                    2000 * (step + 1),
                    "",
                )
            )
        return Snapshot(
            time_ns=time_ns,
            previous_ns=time_ns - 1_000_000_000,
            sessions=deltas,
            closed_files=[],
            open_files=files,
            listener=ListenerCounters(),
            sockets=[],
            unclaimed={},
            store_errors=Counter(),
        )

    import sqlite3

    version = sqlite3.sqlite_version if connection.vendor == "sqlite" else connection.pg_version  # type: ignore[attr-defined]
    print(f"{connection.vendor} {version}, {sessions} sessions and open files; best of {rounds}")
    step = 0

    def timed_write(share: int) -> tuple[float, float]:
        nonlocal step
        made = snapshot(step, share)
        step += 1
        began = time.perf_counter()
        keeper.absorb(made)
        absorbed = time.perf_counter() - began
        began = time.perf_counter()
        if not keeper.write():
            raise SystemExit("the write failed")
        return absorbed, time.perf_counter() - began

    absorb, first = timed_write(1)
    print(f"  first (all rows new):   {first * 1000:8.1f} ms")
    changed = min(timed_write(1)[1] for _ in range(rounds))
    print(f"  all changed:            {changed * 1000:8.1f} ms")
    tenth = min(timed_write(10)[1] for _ in range(rounds))
    print(f"  tenth changed:          {tenth * 1000:8.1f} ms")
    absorb = min(timed_write(1)[0] for _ in range(rounds))
    print(f"  absorb (all sessions):  {absorb * 1000:8.1f} ms")
    last = snapshot(step, 1)
    closed = [
        FileFacts(
            each.path.with_suffix(""),
            each.session,
            1,
            each.first_ns,
            each.last_ns,
            each.packets,
            each.bytes,
            "ab" * 32,
        )
        for each in last.open_files
    ]
    keeper.absorb(replace(last, closed_files=closed, open_files=[], final=True))
    began = time.perf_counter()
    if not keeper.write():
        raise SystemExit("the final write failed")
    print(f"  final (all closed):     {(time.perf_counter() - began) * 1000:8.1f} ms")
    total = Session.objects.count()
    assert total == sessions, total


if __name__ == "__main__":
    main()
