"""Benchmark: does junk traffic make ``manage.py receive`` lose a claimed stream?

    .venv/bin/python benchmarks/junk_benchmark.py [--rates 50000,100000,150000,200000]
        [--seconds 5] [--repeats 3] [--code /tmp/junk-before] [--json]

What it measures. A claimed stream (``--claimed-rate``, 10k/s, 128-byte jmirror
datagrams from the registered router 127.0.0.1, mirror id claimed by an active
intercept) runs for ``--seconds`` alongside one of these loads, at each rate of
``--rates``:

- ``unregistered``: random bytes (same length) from 127.0.0.2, which no router has;
- ``router``: the claimed datagram with a random mid and sid, from the registered
  router 127.0.0.1: jmirror that no intercept claims;
- ``stored``: a second claimed stream (sid 2) at that rate: what a stored datagram
  costs, to compare with.

Each trial starts a fresh ``manage.py receive`` (from ``--code``, default a snapshot of
the working tree, so a ``git worktree`` of an older commit measures "before"), with its
own SQLite database and data directory. Claimed loss = claimed datagrams sent - the
claimed session's ``packets`` in the database after the receiver stopped. CPU is the
receiver process's utime + stime (``/proc/PID/stat``, every thread) from just before
the senders start until the socket is drained; the CPU of a baseline trial (the claimed
stream alone, same duration) is subtracted, and the rest divided by the extra datagrams
received: microseconds of receiver CPU per junk (or per stored) datagram.

Per load it reports the highest rate at which every repeat lost nothing of the claimed
stream, and per rate the CPU per datagram as median (min-max) over the repeats. The
senders (``jmirror_sender.c --bind --random``) run pinned to the first CPU, the
receiver to the second (``--cpus 0,1``; ``none`` to not pin); on loopback the kernel's
receive work runs on the senders' CPU. The achieved junk rate is printed: when it falls
short of the asked one the sender core, not the receiver, is the limit. The socket
buffer is whatever ``net.core.rmem_max`` grants the receiver's 32 MiB ask, the same for
every trial (printed). Needs gcc and Redis at ``--redis-url``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lossless_search import (
    SESSION_ID,
    Cleanup,
    Settings,
    build_datagram,
    compile_sender,
    effective_rcvbuf,
    free_udp_port,
    parse_cpus,
    pinned,
    prepare_database,
    process_cpu_seconds,
    snapshot_tree,
    start_receiver,
    stop_process,
    udp_socket_state,
    wait_drained,
)

CLAIMED_SOURCE: Final = "127.0.0.1"  # the registered router of lossless_search's records
UNREGISTERED_SOURCE: Final = "127.0.0.2"
SIZE: Final = 128
LOADS: Final = ("unregistered", "router", "stored")
_STOPPED_PREFIX: Final = "stopped: "


@dataclass
class JunkTrial:
    load: str
    rate: float
    repeat: int
    claimed_sent: int
    claimed_lost: int
    junk_sent: int
    junk_achieved_rate: float
    received: int
    kernel_drops: int | None
    cpu_seconds: float
    seconds: float


def send(
    binary: Path,
    port: int,
    count: int,
    rate: float,
    payload: Path,
    source: str,
    random: str,
    cpu: int | None,
    cleanup: Cleanup,
) -> subprocess.Popen[str]:
    command = [str(binary), "--port", str(port), "--count", str(count), "--rate", f"{rate:.0f}"]
    command += ["--file", str(payload), "--bind", source, "--random", random]
    if rate <= 20_000:
        command += ["--batch", "10"]  # a slow stream: one system call per millisecond
    return cleanup.track(
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(cpu),
        )
    )


def sender_result(process: subprocess.Popen[str], timeout: float) -> dict[str, str]:
    out, err = process.communicate(timeout=timeout)
    values = dict(item.split("=", 1) for item in out.split())
    if "sent" not in values:
        raise RuntimeError(f"a sender failed ({process.returncode}): {err.strip()}")
    return values


def claimed_packets(database: Path) -> int:
    """Session.packets of the claimed stream (sid 1), 0 before its row exists."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT coalesce(sum(packets), 0) FROM intercepts_session WHERE sid = ?",
            (SESSION_ID,),
        ).fetchone()
    return int(row[0])


def stopped_datagrams(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        if _STOPPED_PREFIX in line:
            return int(line.split(_STOPPED_PREFIX, 1)[1].split()[0])
    return -1


def trial(
    settings: Settings,
    binary: Path,
    claimed: Path,
    second: Path,
    cleanup: Cleanup,
    load: str,
    rate: float,
    repeat: int,
    claimed_rate: float,
    seconds: float,
    sender_cpu: int | None,
) -> JunkTrial:
    out = settings.work / "receive.out"
    err = settings.work / "receive.err"
    packets_before = claimed_packets(settings.database)
    process = start_receiver(settings, cleanup, out, err)
    try:
        time.sleep(0.5)  # the start-up work (gate, first tick) is not the load's
        cpu_before = process_cpu_seconds(process.pid)
        started = time.monotonic()
        claimed_count = int(claimed_rate * seconds)
        senders = [
            send(
                binary,
                settings.port,
                claimed_count,
                claimed_rate,
                claimed,
                CLAIMED_SOURCE,
                "none",
                sender_cpu,
                cleanup,
            )
        ]
        junk_count = int(rate * seconds)
        if load != "none" and junk_count:
            payload, source, random = {
                "unregistered": (claimed, UNREGISTERED_SOURCE, "all"),
                "router": (claimed, CLAIMED_SOURCE, "mid"),
                "stored": (second, CLAIMED_SOURCE, "none"),
            }[load]
            senders.append(
                send(
                    binary,
                    settings.port,
                    junk_count,
                    rate,
                    payload,
                    source,
                    random,
                    sender_cpu,
                    cleanup,
                )
            )
        results = [sender_result(each, timeout=seconds * 3 + 30) for each in senders]
        wait_drained(settings.port, timeout=60)
        cpu = process_cpu_seconds(process.pid) - cpu_before
        wall = time.monotonic() - started
        state = udp_socket_state(settings.port)
        stop_process(process, signal.SIGTERM, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    packets_after = claimed_packets(settings.database)
    claimed_sent = int(results[0]["sent"])
    junk = results[1] if len(results) > 1 else {"sent": "0", "rate": "0"}
    received_claimed = packets_after - packets_before
    return JunkTrial(
        load=load,
        rate=rate,
        repeat=repeat,
        claimed_sent=claimed_sent,
        claimed_lost=claimed_sent - received_claimed,
        junk_sent=int(junk["sent"]),
        junk_achieved_rate=float(junk["rate"]),
        received=stopped_datagrams(out),
        kernel_drops=state.drops if state else None,
        cpu_seconds=cpu,
        seconds=wall,
    )


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50000,100000,150000,200000", help="junk rates /s")
    parser.add_argument("--loads", default=",".join(LOADS), help="comma-separated")
    parser.add_argument("--claimed-rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per trial")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=parse_cpus, default="0,1", help="SENDERS,RECEIVER or none")
    parser.add_argument("--code", type=Path, default=None, help="tree to run manage.py from")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args()
    rates = [float(each) for each in arguments.rates.split(",")]
    loads = [each for each in arguments.loads.split(",") if each]
    if not set(loads) <= set(LOADS) or not rates or arguments.repeats < 1:
        parser.error(f"--loads must be among {LOADS}, --rates and --repeats non-empty")
    cleanup = Cleanup()
    work = Path(tempfile.mkdtemp(prefix="junk-benchmark-"))
    cleanup.paths.append(work)
    try:
        code = arguments.code
        if code is None:
            code = work / "tree"
            print(f"running {snapshot_tree(code)}", file=sys.stderr)
        settings = Settings(
            count=0,
            port=free_udp_port(),
            cpus=arguments.cpus,
            work=work,
            data_dir=work / "data",
            database=work / "db.sqlite3",
            redis_url=arguments.redis_url,
            tcpdump_buffer_kib=0,
            settle=0.0,
            code=code.resolve(),
        )
        settings.data_dir.mkdir()
        prepare_database(settings)
        binary = compile_sender(work)
        claimed = work / "claimed.bin"
        claimed.write_bytes(build_datagram(SIZE))
        second = work / "second.bin"
        datagram = bytearray(build_datagram(SIZE))
        datagram[4:8] = (SESSION_ID + 1).to_bytes(4, "big")
        second.write_bytes(bytes(datagram))
        sender_cpu = arguments.cpus[0] if arguments.cpus else None
        rcvbuf = effective_rcvbuf(32 * 2**20)
        print(f"receiver socket buffer {rcvbuf} bytes; code {code}", file=sys.stderr)
        trials: list[JunkTrial] = []

        def run(load: str, rate: float, repeat: int) -> JunkTrial:
            done = trial(
                settings,
                binary,
                claimed,
                second,
                cleanup,
                load,
                rate,
                repeat,
                arguments.claimed_rate,
                arguments.seconds,
                sender_cpu,
            )
            print(
                f"  {load:>12} {rate:>8.0f}/s #{repeat}: claimed lost {done.claimed_lost}, "
                f"junk achieved {done.junk_achieved_rate:.0f}/s, kernel drops "
                f"{done.kernel_drops}, cpu {done.cpu_seconds:.2f} s",
                file=sys.stderr,
            )
            trials.append(done)
            return done

        for repeat in range(arguments.repeats):
            run("none", 0, repeat)
            for load in loads:
                for rate in rates:
                    run(load, rate, repeat)
        baseline = statistics.median(t.cpu_seconds for t in trials if t.load == "none")
        summary: dict[str, Any] = {"rcvbuf": rcvbuf, "baseline_cpu_seconds": baseline}
        lines = [
            f"receiver socket buffer {rcvbuf} bytes; baseline (claimed "
            f"{arguments.claimed_rate:.0f}/s alone, {arguments.seconds:.0f} s): "
            f"{baseline:.2f} s CPU",
            f"{'load':>12} {'rate/s':>8} {'achieved/s':>10} {'claimed lost':>14} "
            f"{'kernel drops':>14} {'us CPU per datagram: median (min-max)':>40}",
        ]
        per_load: dict[str, Any] = {}
        for load in loads:
            best = 0.0
            rows = []
            for rate in rates:
                group = [t for t in trials if t.load == load and t.rate == rate]
                # Per datagram the receiver took in (what the kernel dropped cost it little).
                extra = [(t, t.received - (t.claimed_sent - t.claimed_lost)) for t in group]
                costs = [(t.cpu_seconds - baseline) / n * 1e6 for t, n in extra if n > 0]
                lost = [t.claimed_lost for t in group]
                if all(each == 0 for each in lost):
                    best = max(best, rate)
                achieved = statistics.median(t.junk_achieved_rate for t in group)
                drops = [t.kernel_drops or 0 for t in group]
                lines.append(
                    f"{load:>12} {rate:>8.0f} {achieved:>10.0f} {','.join(map(str, lost)):>14} "
                    f"{','.join(map(str, drops)):>14} {spread(costs):>40}"
                )
                rows.append({"rate": rate, "achieved": achieved, "lost": lost, "us": costs})
            per_load[load] = {"highest_lossless_rate": best, "rates": rows}
            lines.append(f"{load:>12}: highest junk rate with zero claimed loss {best:.0f}/s")
        summary["loads"] = per_load
        summary["trials"] = [asdict(t) for t in trials]
        if arguments.json:
            print(json.dumps(summary, indent=2))
        else:
            print("\n".join(lines))
    finally:
        cleanup.run()


if __name__ == "__main__":
    main()
