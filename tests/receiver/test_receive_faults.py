"""With real processes: what a running receiver must survive.

Every test runs ``manage.py receive --listen 127.0.0.1:0`` as a process of its own, with
its own data directory and its own SQLite database file (migrated once for the module,
then copied, and filled with a router at 127.0.0.1, an active case and an intercept for
mirror id 0x300), and sends jmirror datagrams to it from the test over loopback. Then it
does to that process what production will: ``kill -9`` mid-stream and a restart, SIGTERM,
a Redis server killed under the live summaries and started again, a database locked
while packets flow, an intercept added while running, a burst of junk.

These tests use neither the test database nor the ``django_db`` marker, so ``./test``
runs them in its SQLite pass only. Processes are stopped by pid (SIGTERM, then SIGKILL
after a timeout) whatever happens, and every wait is bounded.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import hashlib
import itertools
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from receiver.gate import DROP_REASONS, Gate, InterceptRule, RouterRule
from receiver.jmirror import INTERCEPT_ID_MASK, DecodeError, JMirrorPacket, decode_datagram
from receiver.live_contract import HEALTH_GROUP, case_group
from receiver.pcap_reader import CaptureError, iter_frames
from receiver.store import (
    LINKTYPE_FOR_KIND,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    SessionKey,
    session_directory_name,
)
from receiver.traffic import SERVER, SUBSCRIBER

REPO: Final = Path(__file__).resolve().parents[2]
TSHARK: Final = shutil.which("tshark")
REDIS_SERVER: Final = shutil.which("redis-server")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

ROUTER: Final = "127.0.0.1"  # the registered router
STRANGER: Final = "127.0.0.2"  # also loopback, but no router of ours
MID: Final = 0x300
LIID: Final = "LIID-FAULTS-300"
RAW_SID: Final = 0x11  # the session whose packets are raw IPv4
PPP_SID: Final = 0x12  # the session whose packets come in PPP (HDLC framing)
START_TIMEOUT: Final = 30.0
SIGTERM_BUDGET: Final = 5.0  # flush, close, hash and exit 0 within 5 s
# Store.flush_interval is 1 s and the loop ticks every 250 ms: anything received this long
# ago is in the kernel's hands, and the bookkeeping has written its counters.
SETTLE: Final = 1.6

RECORDS: Final = textwrap.dedent(
    f"""
    from datetime import timedelta
    from django.utils import timezone
    from jmirror_web.intercepts.models import Case, Intercept, Router
    now = timezone.now()
    Router.objects.create(name="loopback", address={ROUTER!r}, kind=Router.Kind.MX, port=30030)
    case = Case.objects.create(
        reference="CASE-FAULTS", title="Fault tests", agency="Test agency",
        valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=30),
        status=Case.Status.ACTIVE,
    )
    Intercept.objects.create(
        case=case, liid={LIID!r}, intercept_id={MID}, valid_from=case.valid_from,
        valid_until=case.valid_until,
    )
    """
)


# -- the receiver's world: database, data directory, processes ---------------------------


class Site:
    """One receiver's database file and data directory, and ways to look at them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.database = directory / "db.sqlite3"
        self.data_dir = directory / "data"
        self.sessions = self.data_dir / "sessions"

    def environment(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(
            DATABASE_URL=f"sqlite:///{self.database}",
            JMIRROR_DATA_DIR=str(self.data_dir),
            JMIRROR_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def manage(self, *arguments: str, timeout: float = 60) -> str:
        """Run a management command against this site; its stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=REPO,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"manage.py {arguments[0]} failed:\n{result.stderr}"
        return result.stdout

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as db:
            return db.execute(sql, params).fetchall()

    def value(self, sql: str, *params: Any) -> Any:
        rows = self.rows(sql, *params)
        return rows[0][0] if rows else None

    def watch_case(self) -> None:
        """As a live page on the case would: the receiver summarises only what is watched
        (jmirror_web.live.watching); this row lapses in the year 2999."""
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as db, db:
            db.execute(
                "INSERT INTO live_livewatchrow (channel, kind, object_id, expires_at) "
                "VALUES ('specific.page!1', 'case', ?, '2999-01-01 00:00:00')",
                (self.case_pk(),),
            )

    def case_pk(self) -> int:
        pk: int = self.value("SELECT id FROM intercepts_case WHERE reference = 'CASE-FAULTS'")
        return pk

    def session_counts(self, mid: int = MID) -> dict[int, tuple[int, int]]:
        """sid -> (packets, stored packets) of the sessions of ``mid`` from our router."""
        return {
            sid: (packets, stored)
            for sid, packets, stored in self.rows(
                "SELECT sid, packets, stored_packets FROM intercepts_session WHERE mid = ?", mid
            )
        }

    def directory_of(self, sid: int, *, mid: int = MID, liid: str = LIID) -> Path:
        return self.sessions / session_directory_name(SessionKey(liid, ROUTER, mid, sid))

    def pcaps(self) -> list[Path]:
        return sorted(self.sessions.rglob("*.pcap"))

    def parts(self) -> list[Path]:
        return sorted(self.sessions.rglob("*.pcap.part"))


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A database with the schema and the records, made once (migrations take seconds)."""
    directory = Path(tempfile.mkdtemp(prefix="jmirror-faults-", dir=_fast_scratch()))
    try:
        template = Site(directory)
        template.manage("migrate", "--verbosity", "0", timeout=120)
        template.manage("shell", "--command", RECORDS)
        yield template.database
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _fast_scratch() -> str | None:
    """tmpfs when there is one: SQLite fsyncs every commit, and on a disk that made the
    migrations (and every bookkeeping write) several times slower here."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@pytest.fixture
def site(migrated: Path) -> Iterator[Site]:
    directory = Path(tempfile.mkdtemp(prefix="jmirror-fault-", dir=_fast_scratch()))
    try:
        here = Site(directory)
        shutil.copyfile(migrated, here.database)
        yield here
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def stop_process(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``; by pid, never by name."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class ReceiverProcess:
    """One ``manage.py receive`` process listening on a loopback port of its choosing."""

    _numbers = itertools.count(1)

    def __init__(self, site: Site, **environment: str) -> None:
        number = next(self._numbers)
        self.stdout_path = site.directory / f"receive-{number}.out"
        self.stderr_path = site.directory / f"receive-{number}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "receive", "--listen", f"{ROUTER}:0"],
                cwd=REPO,
                env=site.environment(**environment),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.port = self._wait_until_receiving()

    def _wait_until_receiving(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"receiving jmirror on 127\.0\.0\.1:(\d+)", self.output())
            if found:
                return int(found[1])
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the receiver exited {self.process.returncode}:\n{self.log()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"the receiver did not start in {START_TIMEOUT} s:\n{self.log()}")

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self) -> tuple[int, float]:
        """SIGTERM: the exit status and the seconds it took (SIGKILL after 15 s)."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"SIGTERM did not stop the receiver:\n{self.log()}") from None
        return status, time.monotonic() - began

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)


@pytest.fixture
def start_receiver(site: Site) -> Iterator[Callable[..., ReceiverProcess]]:
    started: list[ReceiverProcess] = []

    def start(**environment: str) -> ReceiverProcess:
        receiver = ReceiverProcess(site, **environment)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        stop_process(receiver.process)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        with contextlib.suppress(sqlite3.OperationalError):  # the receiver is writing
            if condition():
                return time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


# -- traffic --------------------------------------------------------------------------------


class Outbound(NamedTuple):
    """One datagram to send and the loopback address to send it from."""

    source: str
    payload: bytes


@functools.cache
def _numbered_template() -> bytes:
    packet = IP(src=SUBSCRIBER, dst=SERVER, id=1) / UDP(sport=40000, dport=5001, chksum=0)
    return bytes(packet / Raw(bytes(8)))


def numbered_ipv4(number: int) -> bytes:
    """An IPv4/UDP packet carrying ``number`` (so each packet sent is distinct and its
    place in the stream can be checked). UDP checksum 0: none, valid for IPv4."""
    return _numbered_template()[:-8] + number.to_bytes(8, "big")


def in_ppp(ip_packet: bytes) -> bytes:
    """An IPv4 packet in PPP with HDLC-like framing, as an LNS mirrors it."""
    return b"\xff\x03\x00\x21" + ip_packet


def jmirror(inner: bytes, *, sid: int, mid: int = MID) -> bytes:
    return struct.pack("!II", mid, sid) + inner


def two_sessions(count: int, *, first: int = 0) -> list[bytes]:
    """Numbered datagrams alternating between a raw IPv4 session and a PPP session."""
    return [
        jmirror(numbered_ipv4(n), sid=RAW_SID)
        if n % 2 == 0
        else jmirror(in_ppp(numbered_ipv4(n)), sid=PPP_SID)
        for n in range(first, first + count)
    ]


def from_router(payloads: Sequence[bytes]) -> list[Outbound]:
    return [Outbound(ROUTER, payload) for payload in payloads]


def of_session(payloads: Sequence[bytes], sid: int) -> list[bytes]:
    """The mirrored packets (jmirror header off) of one session, in sending order."""
    return [payload[8:] for payload in payloads if struct.unpack_from("!I", payload, 4)[0] == sid]


class SteadyStream(threading.Thread):
    """Sends ``datagrams`` in order at ``rate`` per second, from their own loopback
    addresses, until it runs out or is stopped; it can pause. ``sent`` is how many went."""

    def __init__(self, port: int, datagrams: Sequence[Outbound], rate: float) -> None:
        super().__init__(name="steady-stream", daemon=True)
        self.port = port
        self.datagrams = datagrams
        self.rate = rate
        self.sent = 0
        self.errors = 0
        self._halt = threading.Event()
        self._pause = threading.Event()
        self._paused = threading.Event()

    def run(self) -> None:
        sockets: dict[str, socket.socket] = {}
        try:
            for source in {each.source for each in self.datagrams}:
                sockets[source] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets[source].bind((source, 0))
            target = (ROUTER, self.port)
            began, base = time.monotonic(), 0
            while not self._halt.is_set() and self.sent < len(self.datagrams):
                if self._pause.is_set():
                    self._paused.set()
                    time.sleep(0.005)
                    began, base = time.monotonic(), self.sent
                    continue
                due = min(base + int((time.monotonic() - began) * self.rate), len(self.datagrams))
                while self.sent < due:
                    source, payload = self.datagrams[self.sent]
                    try:
                        sockets[source].sendto(payload, target)
                    except OSError:  # ECONNREFUSED once the receiver is gone
                        self.errors += 1
                    self.sent += 1
                time.sleep(0.002)
        finally:
            for sock in sockets.values():
                sock.close()

    def pause(self) -> int:
        """Stop sending for now; how many were sent (stable until :meth:`resume`)."""
        self._paused.clear()
        self._pause.set()
        assert self._paused.wait(5), "the sender did not pause"
        return self.sent

    def resume(self) -> None:
        self._pause.clear()

    def finish(self) -> int:
        self._halt.set()
        self.join(10)
        assert not self.is_alive()
        return self.sent

    def wait_for(self, count: int, timeout: float = 30) -> None:
        wait_until(lambda: self.sent >= count, timeout, f"{count} datagrams sent")


def send_all(port: int, datagrams: Sequence[Outbound], rate: float) -> int:
    stream = SteadyStream(port, datagrams, rate)
    stream.start()
    stream.join(len(datagrams) / rate + 30)
    assert not stream.is_alive(), "the sender did not finish"
    assert stream.errors == 0
    return stream.sent


# -- what is on disk ----------------------------------------------------------------------


def records(path: Path, *, tolerant: bool = False) -> list[tuple[int, bytes]]:
    """(link type, packet) of every record of a pcap file, in order. ``tolerant``: stop at
    a damaged tail (a file being written when its writer was killed) instead of failing."""
    frames = []
    with path.open("rb") as stream:
        try:
            for _number, _time_ns, linktype, data in iter_frames(stream):
                frames.append((linktype, data))
        except CaptureError:
            if not tolerant:
                raise
    return frames


def packets_in(directory: Path, pattern: str = "*.pcap") -> dict[int, list[bytes]]:
    """A session directory's packets by link type, files in name (= time) order."""
    by_linktype: dict[int, list[bytes]] = {}
    for path in sorted(directory.glob(pattern)):
        for linktype, data in records(path, tolerant=pattern.endswith(".part")):
            by_linktype.setdefault(linktype, []).append(data)
    return by_linktype


def two_session_packets(site: Site, pattern: str = "*.pcap") -> tuple[list[bytes], list[bytes]]:
    """What the raw and the PPP session of :func:`two_sessions` have on disk."""
    raw = packets_in(site.directory_of(RAW_SID), pattern)
    ppp = packets_in(site.directory_of(PPP_SID), pattern)
    assert set(raw) <= {LINKTYPE_RAW}
    assert set(ppp) <= {LINKTYPE_PPP_HDLC}
    return raw.get(LINKTYPE_RAW, []), ppp.get(LINKTYPE_PPP_HDLC, [])


def assert_all_stored_and_counted(site: Site, sent: Sequence[bytes]) -> None:
    """Every packet of ``sent`` is on disk in its session's file, byte for byte and in
    order, and both session rows count exactly what was stored."""
    raw, ppp = two_session_packets(site)
    assert raw == of_session(sent, RAW_SID)
    assert ppp == of_session(sent, PPP_SID)
    assert site.session_counts() == {RAW_SID: (len(raw), len(raw)), PPP_SID: (len(ppp), len(ppp))}


def assert_in_order_prefix(stored: list[bytes], sent: list[bytes], *, at_least: int) -> None:
    """Stored is what was sent, byte for byte and in order, with nothing missing from
    the start; at least ``at_least`` of it."""
    assert len(stored) >= at_least, f"{at_least - len(stored)} packets lost"
    for index, (got, wanted) in enumerate(zip(stored, sent, strict=False)):
        assert got == wanted, f"packet {index} differs from what was sent"
    assert len(stored) <= len(sent)


def tshark_frame_count(path: Path) -> int:
    """The frames tshark reads in a file; fails unless tshark exits 0 with no complaint."""
    assert TSHARK is not None
    result = subprocess.run(
        [TSHARK, "-r", str(path), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"tshark -r {path.name}: {result.stderr}"
    assert "cut short" not in result.stderr
    return len(result.stdout.split())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_rows_close_every_file(site: Site) -> None:
    """Every pcap file has a closed CaptureFile row whose SHA-256, size and packet count
    are those of the file on disk, and no row is left open."""
    rows = {
        path: (closed, sha256, packets, size)
        for path, closed, sha256, packets, size in site.rows(
            "SELECT path, closed, sha256, packets, bytes FROM intercepts_capturefile"
        )
    }
    files = {str(path.relative_to(site.data_dir)): path for path in site.pcaps()}
    assert set(rows) == set(files)
    for name, path in files.items():
        closed, sha256, packets, size = rows[name]
        assert closed, f"{name}: row still open"
        assert sha256 == sha256_of(path), f"{name}: row's SHA-256 is not the file's"
        assert packets == len(records(path)), f"{name}: row's packet count is not the file's"
        assert size == path.stat().st_size


# -- the tests ---------------------------------------------------------------------------


@needs_tshark
@pytest.mark.tshark
def test_kill_9_mid_stream_leaves_readable_files_that_the_next_start_repairs_and_records(
    site: Site, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    receiver = start_receiver()
    sent = two_sessions(20_000)
    stream = SteadyStream(receiver.port, from_router(sent), rate=2000)
    stream.start()
    stream.wait_for(2000)
    # A pause long enough for the flush policy: what came before it is on disk for sure.
    flushed = stream.pause()
    time.sleep(SETTLE)
    stream.resume()
    stream.wait_for(flushed + 1200)
    receiver.kill()  # while datagrams are still coming
    total = stream.finish()
    assert total < len(sent)

    parts = site.parts()
    assert {part.parent for part in parts} == {
        site.directory_of(RAW_SID),
        site.directory_of(PPP_SID),
    }
    for part in parts:
        # tshark reads every whole record of a file still named .part, and nothing else.
        assert tshark_frame_count(part) == len(records(part, tolerant=True))
    raw, ppp = two_session_packets(site, "*.pcap.part")
    assert_in_order_prefix(raw, of_session(sent, RAW_SID), at_least=(flushed + 1) // 2)
    assert_in_order_prefix(ppp, of_session(sent, PPP_SID), at_least=flushed // 2)
    # The kill may land inside a write: leave half a record at the end of one file.
    whole_size = parts[0].stat().st_size
    with parts[0].open("ab") as stream_file:
        stream_file.write(struct.pack("<IIII", 1, 2, 100, 100) + bytes(40))

    restarted = start_receiver()

    assert site.parts() == []
    assert [path.with_name(path.name + ".part") for path in site.pcaps()] == parts
    assert parts[0].with_suffix("").stat().st_size == whole_size
    assert two_session_packets(site) == (raw, ppp)
    for path in site.pcaps():
        assert tshark_frame_count(path) == len(records(path))
    assert_rows_close_every_file(site)
    status, _seconds = restarted.terminate()
    assert status == 0, restarted.log()
    assert "recovered 2 files left open" in restarted.log()


@needs_tshark
@pytest.mark.tshark
def test_sigterm_mid_stream_exits_0_within_5_s_with_every_file_closed_and_hashed(
    site: Site, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    receiver = start_receiver()
    sent = two_sessions(30_000)
    stream = SteadyStream(receiver.port, from_router(sent), rate=4000)
    stream.start()
    stream.wait_for(4000)

    status, seconds = receiver.terminate()  # while datagrams are still coming
    stream.finish()

    assert status == 0, receiver.log()
    assert seconds < SIGTERM_BUDGET
    assert site.parts() == []
    assert site.pcaps()
    assert_rows_close_every_file(site)
    raw, ppp = two_session_packets(site)
    assert_in_order_prefix(raw, of_session(sent, RAW_SID), at_least=1)
    assert_in_order_prefix(ppp, of_session(sent, PPP_SID), at_least=1)
    # Whatever was received is counted, claimed and stored: the last counters were written.
    assert site.session_counts() == {
        RAW_SID: (len(raw), len(raw)),
        PPP_SID: (len(ppp), len(ppp)),
    }
    received, stopped = site.rows("SELECT datagrams, stopped_at FROM intercepts_receiverprocess")[0]
    assert received == len(raw) + len(ppp)
    assert stopped is not None
    for path in site.pcaps():
        assert tshark_frame_count(path) == len(records(path))


def tshark_view(packet: JMirrorPacket) -> list[str]:
    """What tshark's ip.src, ipv6.src, udp.dstport, tcp.dstport and ppp.protocol fields
    must show for a mirrored packet."""
    src = packet.src or ""
    port = str(packet.dport) if packet.dport is not None else ""
    return [
        "" if ":" in src else src,
        src if ":" in src else "",
        port if packet.proto == socket.IPPROTO_UDP else "",
        port if packet.proto == socket.IPPROTO_TCP else "",
        f"0x{packet.ppp_protocol:04x}" if packet.ppp_protocol is not None else "",
    ]


@needs_tshark
@pytest.mark.tshark
def test_tshark_shows_the_inner_layers_of_what_a_running_receiver_stored(
    site: Site, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    from receiver.management.commands.simulate import build_payloads

    # simulate's subscriber (PPP control, DNS, web and ping over IPv4 and IPv6), its raw IP
    # packets in one session and its PPP ones in another: a session that alternates link
    # types gets a new file at every change.
    inner = [decode_datagram(payload) for payload in build_payloads([MID], None, "mixed")]
    sent = [jmirror(p.data, sid=PPP_SID if p.inner == "ppp" else RAW_SID) for p in inner]
    receiver = start_receiver()
    send_all(receiver.port, from_router(sent), rate=5000)
    wait_until(
        lambda: sum(packets for packets, _ in site.session_counts().values()) == len(sent),
        10,
        "every packet counted",
    )
    status, _ = receiver.terminate()
    assert status == 0

    fields = ("ip.src", "ipv6.src", "udp.dstport", "tcp.dstport", "ppp.protocol")
    for sid in (RAW_SID, PPP_SID):
        [path] = site.directory_of(sid).glob("*.pcap")
        assert TSHARK is not None
        result = subprocess.run(
            [TSHARK, "-r", str(path), "-T", "fields", *(f"-e{field}" for field in fields)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        shown = [line.split("\t") for line in result.stdout.splitlines()]
        expected = [tshark_view(p) for p in inner if (p.inner == "ppp") == (sid == PPP_SID)]
        assert shown == expected


class RedisServer:
    """A throw-away redis-server on a loopback port, started and killed by pid."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind((ROUTER, 0))
            self.port = probe.getsockname()[1]
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{ROUTER}:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", ROUTER, "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self._answers, 10, "redis-server answering PING")

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, (self.directory / "redis.log").read_text()
        try:
            with socket.create_connection((ROUTER, self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
def redis_server(site: Site) -> Iterator[RedisServer]:
    server = RedisServer(site.directory)
    try:
        yield server
    finally:
        server.stop()


class LiveSubscriber(threading.Thread):
    """Listens to channel-layer groups as a websocket consumer does, on its own event
    loop, and keeps every message with the monotonic time it arrived.

    ``layer.receive`` is never given a timeout of its own: the pub/sub layer unsubscribes
    a channel whose receive is cancelled. One receive stays pending and is polled.
    """

    def __init__(self, redis_url: str, groups: Sequence[str]) -> None:
        super().__init__(name="live-subscriber", daemon=True)
        self.redis_url = redis_url
        self.groups = groups
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.subscribed = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        layer = RedisPubSubChannelLayer(hosts=[self.redis_url])
        channel = await layer.new_channel()
        for group in self.groups:
            await layer.group_add(group, channel)
        self.subscribed.set()
        pending: asyncio.Future[Any] | None = None
        try:
            while not self._halt.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(layer.receive(channel))
                done, _ = await asyncio.wait({pending}, timeout=0.2)
                if pending in done:
                    self.messages.append((time.monotonic(), pending.result()))
                    pending = None
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):
                await layer.flush()

    def since(self, moment: float, kind: str) -> list[dict[str, Any]]:
        return [
            message
            for at, message in list(self.messages)
            if at > moment and message["type"] == kind
        ]

    def finish(self) -> None:
        self._halt.set()
        self.join(10)


@needs_redis
def test_redis_killed_mid_stream_loses_no_packet_and_live_summaries_resume(
    site: Site, start_receiver: Callable[..., ReceiverProcess], redis_server: RedisServer
) -> None:
    site.watch_case()
    receiver = start_receiver(REDIS_URL=redis_server.url)
    subscriber = LiveSubscriber(redis_server.url, [HEALTH_GROUP, case_group(site.case_pk())])
    subscriber.start()
    try:
        assert subscriber.subscribed.wait(10)
        sent = two_sessions(30_000)
        stream = SteadyStream(receiver.port, from_router(sent), rate=1000)
        stream.start()
        began = time.monotonic()
        # Health summaries come once a second, session summaries every 250 ms: wait for both.
        wait_until(
            lambda: (
                subscriber.since(began, "live.session") and subscriber.since(began, "live.health")
            ),
            10,
            "live summaries",
        )

        redis_server.kill()
        killed = time.monotonic()
        time.sleep(2)  # packets keep coming, the publisher fails and backs off
        redis_server.start()
        back = time.monotonic()
        took = wait_until(
            lambda: (
                subscriber.since(back, "live.session") and subscriber.since(back, "live.health")
            ),
            20,
            "live summaries again after Redis came back",
        )
        total = stream.finish()
    finally:
        subscriber.finish()
    assert stream.errors == 0
    assert total > 1000 * (back - killed)
    resumed = subscriber.since(back, "live.session")
    assert {message["liid"] for message in resumed} == {LIID}

    time.sleep(SETTLE)
    status, _ = receiver.terminate()
    assert status == 0, receiver.log()
    assert_all_stored_and_counted(site, sent[:total])
    assert site.value("SELECT datagrams FROM intercepts_receiverprocess") == total
    assert site.value("SELECT kernel_drops FROM intercepts_listener") == 0
    assert "live summaries not delivered" in receiver.log()
    print(f"live summaries resumed {took:.1f} s after Redis came back")


def test_a_locked_database_loses_no_packet_and_the_counters_catch_up(
    site: Site, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    receiver = start_receiver()
    sent = two_sessions(30_000)
    stream = SteadyStream(receiver.port, from_router(sent), rate=1000)
    stream.start()
    wait_until(lambda: len(site.session_counts()) == 2, 10, "session rows")

    # The receiver's writes wait for the lock (SQLite's busy timeout) while packets flow;
    # in WAL mode the test can still read, and sees the counters frozen.
    lock = sqlite3.connect(site.database, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        locked_at, locked_for = stream.sent, time.monotonic()
        frozen = site.session_counts()
        time.sleep(6)
        assert site.session_counts() == frozen, "a write went through the lock"
        locked_for = time.monotonic() - locked_for
        during = stream.sent - locked_at
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    stream.wait_for(stream.sent + 500)
    total = stream.finish()
    assert during > 900 * locked_for

    def all_counted() -> bool:
        counts = site.session_counts()
        return sum(packets for packets, _ in counts.values()) == total

    # Written while the receiver runs, not only at its exit.
    wait_until(all_counted, 10, "the counters kept through the lock written")
    status, _ = receiver.terminate()
    assert status == 0, receiver.log()
    assert_all_stored_and_counted(site, sent[:total])
    assert_rows_close_every_file(site)


LATE_MID: Final = 0x301
LATE_LIID: Final = "LIID-FAULTS-301"
LATE_SID: Final = 0x21
ADD_INTERCEPT: Final = textwrap.dedent(
    f"""
    from jmirror_web.intercepts.models import Case, Intercept
    case = Case.objects.get(reference="CASE-FAULTS")
    Intercept.objects.create(
        case=case, liid={LATE_LIID!r}, intercept_id={LATE_MID}, valid_from=case.valid_from,
        valid_until=case.valid_until,
    )
    """
)


def test_an_intercept_added_while_running_claims_packets_2_s_later(
    site: Site, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    receiver = start_receiver()
    early = [jmirror(numbered_ipv4(n), mid=LATE_MID, sid=LATE_SID) for n in range(200)]
    send_all(receiver.port, from_router(early), rate=5000)

    def unclaimed() -> int:
        return site.value(
            "SELECT packets FROM intercepts_unclaimedstream WHERE mid = ? AND sid = ?",
            LATE_MID,
            LATE_SID,
        )

    wait_until(lambda: unclaimed() == 200, 5, "the unclaimed stream counted")
    assert (
        site.value("SELECT reason FROM intercepts_unclaimedstream WHERE mid = ?", LATE_MID)
        == "no_intercept"
    )
    assert not site.sessions.exists() or not list(site.sessions.rglob("*"))

    site.manage("shell", "--command", ADD_INTERCEPT)
    added = time.monotonic()
    time.sleep(max(0.0, added + 2.0 - time.monotonic()))
    late = [jmirror(numbered_ipv4(n), mid=LATE_MID, sid=LATE_SID) for n in range(200, 300)]
    send_all(receiver.port, from_router(late), rate=5000)
    wait_until(
        lambda: site.session_counts(LATE_MID) == {LATE_SID: (100, 100)}, 5, "the session counted"
    )
    status, _ = receiver.terminate()
    assert status == 0

    directory = site.directory_of(LATE_SID, mid=LATE_MID, liid=LATE_LIID)
    assert packets_in(directory) == {LINKTYPE_RAW: [each[8:] for each in late]}
    assert [path.parent for path in site.pcaps()] == [directory]
    assert unclaimed() == 200


# The burst: junk of every kind around a claimed stream, all of it accounted for.
BURST_JUNK: Final = 100_000
BURST_CLAIMED: Final = 2_000
# Per second, from the test's one Python thread to a receiver sharing two cores with it
# (and whatever else runs): kept well below what the receiver sustains alone.
BURST_RATE: Final = 12_000
BURST_SEED: Final = 4


def burst(rng: random.Random) -> tuple[list[Outbound], list[bytes]]:
    """Random datagrams (0-1500 bytes), truncated and mutated valid ones, valid ones
    from an unknown source and for an unclaimed mid, with the claimed stream (two
    sessions, in order) interleaved at random places; and the claimed stream."""
    claimed = two_sessions(BURST_CLAIMED, first=1_000_000)
    junk: list[Outbound] = []
    for _ in range(BURST_JUNK):
        junk.append(Outbound(ROUTER, rng.randbytes(rng.randint(0, 1500))))
    for payload in rng.sample(claimed, 1000):
        truncated = payload[: rng.randrange(len(payload))]
        mutated = bytearray(payload)
        mutated[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
        junk += [Outbound(ROUTER, truncated), Outbound(ROUTER, bytes(mutated))]
    junk += [Outbound(STRANGER, payload) for payload in claimed[:500]]
    junk += [Outbound(ROUTER, jmirror(numbered_ipv4(n), sid=7, mid=0x999)) for n in range(500)]
    rng.shuffle(junk)
    places = set(rng.sample(range(len(junk) + len(claimed)), len(claimed)))
    pending_junk, pending_claimed = iter(junk), iter(claimed)
    mixed = [
        Outbound(ROUTER, next(pending_claimed)) if index in places else next(pending_junk)
        for index in range(len(junk) + len(claimed))
    ]
    return mixed, claimed


def fate(gate: Gate, datagram: Outbound) -> tuple[str, tuple[int, int] | None]:
    """What the receiver must do with a datagram: its reason, and for a stored one the
    session (raw mid, sid) it goes to."""
    try:
        packet = decode_datagram(datagram.payload)
    except DecodeError:
        return "malformed", None
    claim = gate.claim(datagram.source, packet.mid, packet.sid, time.time_ns())
    if isinstance(claim, str):
        return claim, None
    if packet.inner not in LINKTYPE_FOR_KIND:
        return "unstorable", (packet.mid, packet.sid)
    return "stored", (packet.mid, packet.sid)


def stopped_line(receiver: ReceiverProcess) -> tuple[int, int, Counter[str]]:
    """Datagrams, malformed and drops by reason from the receiver's last line."""
    found = re.search(
        r"stopped: (\d+) datagrams, (\d+) malformed, drops (\{[^}]*\})", receiver.output()
    )
    assert found, receiver.output()
    return int(found[1]), int(found[2]), Counter(ast.literal_eval(found[3]))


def expected_fates(
    mixed: Sequence[Outbound],
) -> tuple[Counter[str], dict[Path, dict[int, list[bytes]]]]:
    """How many datagrams go to each fate, and the packets each session directory must
    hold by link type (a session has a file of each side by side), by the receiver's
    own decoder and a gate with the records of the module's database."""
    gate = Gate(
        [RouterRule(1, ROUTER)],
        [InterceptRule(1, LIID, 1, "CASE-FAULTS", MID, None, frozenset(), (0, 2**63), True, True)],
    )
    fates: Counter[str] = Counter()
    stored: dict[Path, dict[int, list[bytes]]] = {}
    for datagram in mixed:
        reason, session = fate(gate, datagram)
        fates[reason] += 1
        if reason == "stored" and session is not None:
            directory = Path(session_directory_name(SessionKey(LIID, ROUTER, *session)))
            linktype = LINKTYPE_FOR_KIND[decode_datagram(datagram.payload).inner]
            by_linktype = stored.setdefault(directory, {})
            by_linktype.setdefault(linktype, []).append(datagram.payload[8:])
    return fates, stored


def test_a_burst_of_100000_junk_datagrams_leaves_every_valid_packet_stored_and_all_counted(
    site: Site, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    mixed, claimed = burst(random.Random(BURST_SEED))
    expected, stored = expected_fates(mixed)
    # The seed is fixed, so this is exact: no random datagram happens to be claimed. Only
    # the claimed stream and those mutations of it that still decode are stored.
    assert expected["stored"] >= BURST_CLAIMED
    mids = {int(re.findall(r"_mid-([0-9a-f]{8})_", each.name)[0], 16) for each in stored}
    assert {mid & INTERCEPT_ID_MASK for mid in mids} == {MID}
    assert expected["malformed"] > 1000
    assert expected["no_intercept"] > 50_000
    assert expected["unknown_router"] == 500

    receiver = start_receiver()
    began = time.monotonic()
    sent = send_all(receiver.port, mixed, rate=BURST_RATE)
    seconds = time.monotonic() - began
    time.sleep(SETTLE)
    status, _ = receiver.terminate()
    assert status == 0, receiver.log()

    datagrams, malformed, drops = stopped_line(receiver)
    assert datagrams == sent, (
        f"the receiver got {datagrams} of {sent} datagrams sent at {sent / seconds:.0f}/s: the "
        "kernel dropped the rest (this machine, as loaded now, does not keep up with that pace)"
    )
    assert malformed == expected["malformed"]
    assert drops == Counter(
        {reason: expected[reason] for reason in DROP_REASONS if expected[reason]}
    )
    on_disk = {
        path.relative_to(site.sessions): packets_in(path) for path in site.sessions.iterdir()
    }
    assert on_disk == stored
    # Whatever was neither malformed nor dropped was claimed: stored, or unstorable.
    stored_count = sum(len(packets) for kinds in on_disk.values() for packets in kinds.values())
    assert sent - malformed - sum(drops.values()) - stored_count == expected["unstorable"]
    # The claimed stream itself is all there, in order and byte-identical.
    for sid in (RAW_SID, PPP_SID):
        session = [
            packet
            for packets in on_disk[site.directory_of(sid).relative_to(site.sessions)].values()
            for packet in packets
        ]
        wanted = of_session(claimed, sid)
        # In order as a subsequence: a mutation that changed nothing is a duplicate,
        # sent and stored like any other.
        remaining = iter(session)
        assert all(any(packet == each for each in remaining) for packet in wanted)


MANY_STREAMS: Final = 20_000


def test_junk_from_many_unclaimed_streams_does_not_hold_up_the_database_counters(
    site: Site, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    rng = random.Random(BURST_SEED)
    junk = [
        jmirror(numbered_ipv4(n), mid=rng.getrandbits(32) | 0x1000, sid=rng.getrandbits(32))
        for n in range(MANY_STREAMS)
    ]
    receiver = start_receiver()
    sent = send_all(receiver.port, from_router(junk), rate=8000)

    # Counters reach the database at least once a second: allow a few.
    wait_until(
        lambda: site.value("SELECT datagrams FROM intercepts_receiverprocess") == sent,
        5,
        "the datagram counter written",
    )
    status, seconds = receiver.terminate()
    assert status == 0
    assert seconds < SIGTERM_BUDGET
    assert site.value("SELECT datagrams FROM intercepts_receiverprocess") == sent
