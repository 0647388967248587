"""Benchmark: a case export, :func:`jmirror_web.exports.service.prepare_case_export` then
:func:`jmirror_web.exports.engine.stream_export`, over a case of many sessions.

    .venv/bin/python benchmarks/case_export_benchmark.py [--size-mib 2048] [--sessions 200]
        [--intercepts 4] [--workdir /tmp] [--json]

Builds, in a temporary directory under ``--workdir`` that is removed afterwards, a
SQLite database (migrated) and a data directory: one case of ``--intercepts`` intercepts
(4 by default) holding ``--sessions`` sessions (200) and ``--size-mib`` MiB of packets
in total (2 GiB), written with the receiver's own :class:`receiver.store.PcapStore`
(rotating every ``--rotate-mib`` MiB, 64 by default) and recorded as Session and
CaptureFile rows as the receiver records them. The sessions of one intercept follow one
another (a subscriber logs in again); the intercepts are on the air at once, their
packets interleaved in time, so the pcapng export merges ``--intercepts`` files packet by
packet all along: the case export's dearest layout. The packet mix is that of
``benchmarks/export_benchmark.py`` (three quarters full-size).

Then times, one after the other, each export prepared from the database and consumed to
the end with the chunks thrown away (what the web view does, minus the socket):

- the whole case as one pcapng (an interface per session);
- the whole case as a zip of per-session pcapng files.

For each: wall-clock and CPU seconds, MB/s of output and of source bytes, and memory
growth (VmRSS after minus before, and the peak VmHWM, reset through
/proc/self/clear_refs where the kernel allows it, minus the RSS before). The
goal: at least 300 MB/s for a case of 200 sessions and 2 GB, under 100 MB of growth.
It prints the figures; no test asserts them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from export_benchmark import memory_kib, packet_mix, reset_peak  # noqa: E402

STEP_NS = 10_000  # between two packets of one intercept


def moment(time_ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)


def build_case(directory: Path, size: int, sessions: int, intercepts: int, rotate: int) -> Any:
    """The case, its intercepts, sessions and files; returns (case, source bytes, packets)."""
    from jmirror_web.intercepts.models import CaptureFile, Case, Intercept, Router, Session
    from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey

    now = datetime.now(UTC)
    case = Case.objects.create(
        reference="BENCH-CASE",
        title="benchmark",
        agency="benchmark",
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=1),
    )
    start_ns = int((now - timedelta(hours=2)).timestamp()) * 10**9
    packets = packet_mix()
    per_session = size // sessions
    store = PcapStore(directory / "sessions", rotate_bytes=rotate, rotate_seconds=10**6)
    written_packets = 0
    per_intercept = -(-sessions // intercepts)
    for number in range(intercepts):
        router = Router.objects.create(
            name=f"mx-{number}", address=f"192.0.2.{number + 1}", kind=Router.Kind.MX, port=30030
        )
        intercept = Intercept.objects.create(
            case=case,
            liid=f"BENCH-{number}",
            intercept_id=0x300 + number,
            valid_from=case.valid_from,
            valid_until=case.valid_until,
        )
        # The intercepts interleave: each one's clock is a quarter step off the others'.
        time_ns = start_ns + number * STEP_NS // intercepts
        index = number * 1000
        for sequence in range(per_intercept):
            if number * per_intercept + sequence >= sessions:
                break
            sid = 0x1000 + sequence
            key = SessionKey(intercept.liid, router.address, intercept.intercept_id, sid)
            first_ns = time_ns
            written = count = 0
            while written < per_session:
                data = packets[index % len(packets)]
                store.write(key, time_ns, data, LINKTYPE_RAW)
                written += 16 + len(data)
                count += 1
                index += 1
                time_ns += STEP_NS
            session = Session.objects.create(
                router=router,
                intercept=intercept,
                mid=intercept.intercept_id,
                sid=sid,
                first_seen=moment(first_ns),
                last_seen=moment(time_ns - STEP_NS),
                packets=count,
                stored_packets=count,
            )
            written_packets += count
            CaptureFile.objects.bulk_create(
                CaptureFile(
                    session=session,
                    path=str(Path("sessions") / closed.path),
                    first_packet=moment(closed.first_ns),
                    last_packet=moment(closed.last_ns),
                    packets=closed.packets,
                    bytes=closed.bytes,
                    sha256=closed.sha256,
                    closed=True,
                )
                for closed in store.close_all()
            )
    total = sum(path.stat().st_size for path in (directory / "sessions").rglob("*.pcap"))
    return case, total, written_packets


def run(case: Any, export_format: str, source_bytes: int) -> dict[str, float]:
    from jmirror_web.exports.engine import stream_export
    from jmirror_web.exports.request import ExportFormat
    from jmirror_web.exports.service import ExportParameters, prepare_case_export
    from jmirror_web.exports.writers import ExportDigest

    reset = reset_peak()
    before = memory_kib()
    digest = ExportDigest()
    largest = 0
    started = time.perf_counter()
    cpu = time.process_time()
    prepared = prepare_case_export(case, ExportParameters(format=ExportFormat(export_format)))
    prepare_seconds = time.perf_counter() - started
    for chunk in stream_export(prepared.engine_request, digest):
        largest = max(largest, len(chunk))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    after = memory_kib()
    assert digest.complete
    return {
        "seconds": elapsed,
        "prepare_seconds": prepare_seconds,
        "cpu_seconds": cpu,
        "sessions": len(prepared.sessions),
        "output_bytes": digest.size,
        "packets": digest.packets,
        "output_mb_s": digest.size / elapsed / 1e6,
        "source_mb_s": source_bytes / elapsed / 1e6,
        "rss_growth_mib": (after["VmRSS"] - before["VmRSS"]) / 1024,
        "peak_growth_mib": (after["VmHWM"] - before["VmRSS"]) / 1024 if reset else float("nan"),
        "largest_chunk": largest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="case size (2048)")
    parser.add_argument("--sessions", type=int, default=200, help="sessions in the case (200)")
    parser.add_argument("--intercepts", type=int, default=4, help="intercepts (4), all at once")
    parser.add_argument("--rotate-mib", type=int, default=64, help="file rotation size (64)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    options = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="case-export-benchmark-", dir=options.workdir))
    try:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="jmirror_web.settings",
            DATABASE_URL=f"sqlite:///{directory / 'benchmark.sqlite3'}",
            JMIRROR_DATA_DIR=str(directory),
            DJANGO_SECRET_KEY="benchmark-" + "x" * 40,
            JMIRROR_LOG_LEVEL="WARNING",
        )
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        case, total, written = build_case(
            directory,
            options.size_mib * 2**20,
            options.sessions,
            options.intercepts,
            options.rotate_mib * 2**20,
        )
        print(
            f"case: {options.sessions} sessions over {options.intercepts} intercepts, "
            f"{total / 1e6:.0f} MB, {written} packets, written in "
            f"{time.perf_counter() - started:.1f} s under {directory}"
        )
        results = {}
        print(
            f"{'export':32} {'seconds':>8} {'prep s':>6} {'CPU s':>6} {'output MB':>10} "
            f"{'packets':>10} {'out MB/s':>9} {'src MB/s':>9} {'RSS +MiB':>9} {'peak +MiB':>9}"
        )
        for name, export_format in (
            ("pcapng, whole case", "pcapng"),
            ("zip of per-session pcapng", "zip"),
        ):
            figures = run(case, export_format, total)
            results[name] = figures
            assert figures["packets"] == written, (name, figures["packets"], written)
            assert figures["sessions"] == options.sessions, figures["sessions"]
            print(
                f"{name:32} {figures['seconds']:8.2f} {figures['prepare_seconds']:6.2f} "
                f"{figures['cpu_seconds']:6.2f} {figures['output_bytes'] / 1e6:10.0f} "
                f"{figures['packets']:10.0f} {figures['output_mb_s']:9.0f} "
                f"{figures['source_mb_s']:9.0f} {figures['rss_growth_mib']:9.1f} "
                f"{figures['peak_growth_mib']:9.1f}"
            )
        goal = all(
            figures["source_mb_s"] >= 300 and figures["peak_growth_mib"] < 100
            for figures in results.values()
        )
        print(f"goal (>= 300 MB/s, < 100 MB growth): {'met' if goal else 'NOT met'}")
        if options.json:
            print(json.dumps({"source_bytes": total, "results": results}))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
