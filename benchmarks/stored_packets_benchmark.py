"""Benchmark: the stored packet list of a large session (issue 19's acceptance).

    .venv/bin/python benchmarks/stored_packets_benchmark.py [--packets 2000000] [--files 8]
        [--repeat 5] [--database sqlite|postgres://postgres@127.0.0.1:5432]

Writes one session of ``--packets`` packets in ``--files`` rotated files with the
receiver's own store (PcapStore: pcap and packet index, as capture writes them; times 1 ms
apart), records its rows in a throwaway database, and times, through Django's test
Client as an assigned analyst (the whole middleware stack, no network):

- the session page's first page of stored packets and ``GET /api/sessions/<id>/packets``;
- a filtered page (an address seen in a sixteenth of the packets; port 53; protocol udp),
  and the last page of the session;
- each cold (this process has not read the indexes yet: they come from the page cache)
  and warm (indexes in memory);

and reports the index's size per packet and the store's write rate with its index on and
off (the same packets, the same process, alternated). Server time = wall time of the
request in this process; the best and the spread of ``--repeat`` runs are printed. The
capture rate of the real receiver with and without the index is measured by
``benchmarks/lossless_search.py --tools receive,receive-noindex``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from throwaway_database import throwaway_database  # noqa: E402

MS = 1_000_000


def packets(count: int) -> list[bytes]:
    """A subscriber's traffic: requests to 64 servers and their 1400-byte answers, DNS to
    one resolver, some ICMP."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    from receiver import traffic

    templates = []
    for k in range(64):
        server = f"198.51.{k // 16}.{k % 16 + 1}"
        templates.append(bytes(traffic.ipv4_tcp(src="203.0.113.7", dst=server, dport=443).packet))
        answer = IP(src=server, dst="203.0.113.7") / TCP(sport=443, dport=49152, flags="A")
        templates.append(bytes(answer / Raw(bytes(1360))))
    templates.append(bytes(traffic.ipv4_udp(src="203.0.113.7", dport=53).packet))
    templates.append(bytes(traffic.ipv4_icmp(src="203.0.113.7").packet))
    return [templates[k % len(templates)] for k in range(count)]


def write_session(root: Path, count: int, files: int, start_ns: int, *, index: bool) -> Any:
    from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey

    span_seconds = count * MS / 1e9
    store = PcapStore(root, rotate_seconds=span_seconds / files + 1e-3, packet_index=index)
    key = SessionKey("BENCH-LIID", "192.0.2.1", 0x42, 0x99)
    data = packets(count)
    started = time.perf_counter()
    for k in range(count):
        store.write(key, start_ns + k * MS, data[k], LINKTYPE_RAW)
    closed = store.close_all()
    return closed, time.perf_counter() - started


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float, float]:
    """(best, median, worst) ms of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return min(times), statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database", default="sqlite")
    args = parser.parse_args()
    with throwaway_database(args.database, "stored-packets") as directory:
        import django

        django.setup()
        run(args, directory)


def run(args: argparse.Namespace, directory: Path) -> None:
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    from jmirror_web.console import stored_packets
    from jmirror_web.intercepts.access import Role
    from jmirror_web.intercepts.models import CaptureFile
    from receiver.packet_index import INDEX_SUFFIX
    from tests.factories import (
        assign,
        make_case,
        make_intercept,
        make_router,
        make_session,
        make_user,
    )

    setup_test_environment()
    settings.ALLOWED_HOSTS = ["testserver"]
    call_command("migrate", verbosity=0)
    root = Path(settings.SESSIONS_DIR)
    start_ns = int((datetime.now(UTC) - timedelta(hours=2)).timestamp()) * 10**9

    # The store's write rate with the index on and off, alternated (a tenth of the packets).
    sample = max(args.packets // 10, 1000)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for trial in range(3):
        for index in (True, False):
            scratch = directory / f"scratch-{trial}-{index}"
            _closed, seconds = write_session(scratch, sample, 2, start_ns, index=index)
            rates[index].append(sample / seconds)
    on, off = max(rates[True]), max(rates[False])
    print(
        f"store write rate ({sample:,} packets, best of 3): index on {on:,.0f}/s, "
        f"off {off:,.0f}/s, on/off {on / off:.2f} (Python write path; the receiver's C path: "
        "lossless_search.py --tools receive,receive-noindex)"
    )

    closed, seconds = write_session(root, args.packets, args.files, start_ns, index=True)
    print(f"wrote {args.packets:,} packets in {len(closed)} files in {seconds:.1f} s")
    case = make_case(
        reference="BENCH",
        valid_from=datetime.now(UTC) - timedelta(days=1),
        valid_until=datetime.now(UTC) + timedelta(days=1),
    )
    router = make_router(name="bench", address="192.0.2.1")
    intercept = make_intercept(case, liid="BENCH-LIID", intercept_id=0x42, routers=[router])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def moment(ns: int) -> datetime:
        return epoch + timedelta(microseconds=ns // 1000)

    session = make_session(
        intercept,
        router=router,
        mid=0x42,
        sid=0x99,
        first_seen=moment(start_ns),
        last_seen=moment(start_ns + (args.packets - 1) * MS),
        packets=args.packets,
        stored_packets=args.packets,
    )
    for each in closed:
        CaptureFile.objects.create(
            session=session,
            path=str(Path(root.name) / each.path),
            first_packet=moment(each.first_ns),
            last_packet=moment(each.last_ns),
            packets=each.packets,
            bytes=each.bytes,
            sha256=each.sha256,
            closed=True,
        )
    pcap_bytes = sum(each.bytes for each in closed)
    index_bytes = sum(path.stat().st_size for path in root.glob(f"*/*{INDEX_SUFFIX}"))
    print(
        f"index: {index_bytes / args.packets:.1f} bytes per packet "
        f"({index_bytes / 2**20:,.0f} MiB beside {pcap_bytes / 2**20:,.0f} MiB of pcap, "
        f"{100 * index_bytes / pcap_bytes:.1f}%)"
    )

    analyst = make_user(Role.ANALYST)
    assign(analyst, case)
    client = Client()
    client.force_login(analyst)
    page_url = reverse("console:session", args=[session.pk])
    api_url = reverse("api:session_packets", args=[session.pk])
    last_page = -(-args.packets // 100)
    shapes = {
        "first page": {},
        "address filter": {"address": "198.51.0.1"},
        "port 53": {"port": "53"},
        "protocol udp": {"protocol": "udp"},
        "last page": {"page": str(last_page)},
        "port 53, page 50": {"port": "53", "page": "50"},
    }

    def get(url: str, query: dict[str, str]) -> Callable[[], Any]:
        def call() -> Any:
            response = client.get(url, query)
            assert response.status_code == 200, response.status_code
            return response

        return call

    print(f"{'request':<32} {'cold ms':>8}   {'warm ms: best  median  worst':>30}")
    for name, query in shapes.items():
        for label, url in (("page", page_url), ("API", api_url)):
            stored_packets.forget_indexes()
            cold = timed(get(url, query), 1)[0]
            best, median, worst = timed(get(url, query), args.repeat)
            print(f"{label + ' ' + name:<32} {cold:8.1f}   {best:10.1f} {median:7.1f} {worst:7.1f}")
    answer = client.get(api_url, {"port": "53"}).json()
    print(f"(port 53 matches {answer['count']:,} packets of {answer['stored']:,})")

    # Conversations and names: summarised in the background (as the receiver's child
    # process does), then read by the pages and the API.
    from jmirror_web.conversations.models import Conversation, ObservedName
    from jmirror_web.conversations.summaries import summarise

    started = time.perf_counter()
    done, finished = summarise(3600)
    seconds = time.perf_counter() - started
    print(
        f"summarised {done:,} packets in {seconds:.1f} s ({seconds / max(done, 1) * 1e6:.2f} us "
        f"a packet; finished: {finished}): {Conversation.objects.count():,} conversations, "
        f"{ObservedName.objects.count():,} names"
    )
    conversations = {
        "page conversations": reverse("conversations:session", args=[session.pk]),
        "API conversations": reverse("api:session_conversations", args=[session.pk]),
        "API names": reverse("api:session_names", args=[session.pk]),
        "page case conversations": reverse("conversations:case", args=[case.pk]),
        "API case search 198.51.0.1": reverse("api:case_search", args=[case.pk]),
    }
    for name, url in conversations.items():
        query = {"q": "198.51.0.1"} if "search" in name else {}
        cold = timed(get(url, query), 1)[0]
        best, median, worst = timed(get(url, query), args.repeat)
        print(f"{name:<32} {cold:8.1f}   {best:10.1f} {median:7.1f} {worst:7.1f}")


if __name__ == "__main__":
    main()
