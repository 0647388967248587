"""Benchmark: many concurrent sessions on one host, ``manage.py receive`` as is.

    .venv/bin/python benchmarks/sessions_benchmark.py [--sessions 20,200,2000,10000]
        [--databases sqlite,postgres] [--open-files 20000,1024] [--count 1200000]
        [--rate 100000] [--size 200] [--repeat 1] [--tree working] [--tree /work/anchor]
        [--json results.json]

Method. A C sender (``jmirror_sender.c --sessions N``, compiled with gcc
into a temporary directory) offers ``--count`` valid jmirror datagrams of ``--size`` UDP
payload bytes at ``--rate`` per second on loopback, spread evenly over N mirror ids:
datagram i carries mirror id 0x300 + (i % N). Each mirror id is claimed by its own
intercept (keep content, in force from a day ago to two days ahead) of one active case,
and the sender's address is a registered router, so every datagram is one packet of one
of N claimed sessions: decoded, gated, counted and written to that session's pcap file.
For every combination of ``--sessions``, ``--databases`` and ``--open-files`` (times
``--repeat``, times each ``--tree``) one run:

1. a fresh database: a SQLite file in the run's temporary directory, or a new PostgreSQL
   database (``CREATE DATABASE`` on ``--postgres-url``, dropped afterwards), migrated
   with ``manage.py migrate`` of the tree under test; then one Router (127.0.0.1), a Case
   and the N Intercepts through ``manage.py shell -c``. A fresh ``JMIRROR_DATA_DIR``;
   ``REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) so live summaries run as in
   production.
2. ``manage.py receive --listen 127.0.0.1:PORT --rcvbuf 67108864`` in a process of its
   own, pinned to the second CPU (``--cpus``), with its open-file limit (RLIMIT_NOFILE,
   soft and hard) set to the run's ``--open-files`` value before it starts; the script
   waits for its "receiving jmirror on" line. Linux caps the buffer at
   ``net.core.rmem_max``: the script raises that to ``--rmem-max`` (default 64 MiB; root)
   for the whole run and restores it at exit, and prints the buffer granted.
3. The sender, pinned to the first CPU (on loopback the kernel's receive work runs on the
   sender's CPU, as a NIC's interrupt CPU would), sends the datagrams.
4. From the end of sending, every 0.25 s: the database's sum(Session.stored_packets) and
   sum(Session.packets), and the packets in the pcap files under the data directory
   (records counted by their headers in ``.pcap`` and ``.pcap.part`` files; a partial
   last record of a file being written is not counted yet). Polling ends when the
   database, the files and the socket's queue have all been still and equal for 2 s, or
   after ``--catch-up-limit`` (20) seconds.
5. SIGTERM to the receiver (by pid), at most 60 s to stop (then SIGKILL), and its output.

What each column of the table means:

- ``received``: datagrams the receiver counted (its ``stopped: N datagrams`` line, else
  ReceiverProcess.datagrams); ``lost`` = sent - received, the goal being 0.
- ``kernel drops``: datagrams the kernel dropped because the socket's buffer was full
  (``/proc/net/udp`` at the end of polling, just before SIGTERM; the receiver's
  Listener.kernel_drops row when the socket was not seen, and noted when the row, only
  as fresh as the receiver's last database write, says otherwise).
- ``longest round``: the longest receive round (``longest receive round X ms`` in the
  stopped line): what the socket buffer had to absorb. At 100,000/s of 200 bytes a
  64 MiB buffer (the kernel's accounting roughly doubles each datagram's size) holds
  around 1.5 s.
- ``caught up``: seconds from the end of sending until the database's stored count first
  equalled the packets in the files once the receiver had stopped (all it stored); the
  goal is within 5 s; "not within 20 s" when it never did while polling (then the
  receiver may not even have read its socket's queue: lost - kernel drops were left
  unread at SIGTERM, noted).
- ``final stored / files / claimed``: after the receiver stopped, sum(stored_packets),
  the records in the files, and the claimed datagrams the receiver counted
  (sum(Session.packets)); "=" when all three agree (the run's evidence and its counts
  match).
- ``sessions with file``: sessions (mirror ids) whose directory holds at least one
  record, of N; ``bad rows``: sessions whose row's stored_packets differs from the
  records in their files (a row counting packets that no file holds is evidence lost
  silently).
- ``closed early``: files closed early by the open-file bound (the stopped line).
- ``counters lost``: the receiver logged "last counters not written" (or that counters
  "could not be written") at shutdown.
- ``CPU s``: the receiver's CPU time (user + system, every thread) from the start of
  sending to SIGTERM.
- ``other load``: the time the receiver's CPU spent on other processes, as a share of
  the wall time from the start of sending to SIGTERM (before each run the script waits
  up to ``--quiet-wait`` seconds for idle CPUs). Some of it may be time the receiver did
  not want (it was idle); a lossy run with a high value measured the neighbours too, and
  is run again (``--noisy-retries``, 1). On a shared machine ``--nice -10`` (root) puts
  the sender and the receiver each in a session of its own at that niceness (with
  autogroup scheduling niceness only ranks processes within a session).

``--tree PATH`` (repeatable) runs ``manage.py`` of another checkout, e.g. an anchor
commit, so that one run measures it against the working tree under the same conditions
(runs alternate between trees for each combination). ``working`` (the default) is the
working tree, run from a snapshot of its files taken at start (``--live-tree`` to run it
in place), so others' half-saved edits cannot break a run; when the snapshot's
``receiver/_fastpath.c`` is newer than its built extension, the extension is built in the
snapshot. Another checkout needs its own C extension, built in place with the same
Python (nothing is installed into the virtualenv; the checkout's own modules win over
the editable install because manage.py's directory comes first on ``sys.path``)::

    git worktree add /work/anchor 44ee9ac
    (cd /work/anchor && /work/main/.venv/bin/python setup.py --quiet build_ext --inplace)
    .venv/bin/python benchmarks/sessions_benchmark.py --tree /work/anchor --tree working
    git worktree remove --force /work/anchor    # afterwards (the built files are ignored)

(``--tree`` alone replaces the default: name ``working`` too to measure both.)

The single-session lossless rate (which must not fall: compare in the same run) is
``benchmarks/lossless_search.py``, run for each tree back to back, each tree's own copy
running its own code in place::

    .venv/bin/python benchmarks/lossless_search.py --tools receive --sizes 200 \\
        --rmem-max 67108864 --nice -10
    .venv/bin/python /work/anchor/benchmarks/lossless_search.py --live-tree \\
        --tools receive --sizes 200 --rmem-max 67108864 --nice -10

(the anchor has no .venv of its own, so its copy runs with this one's Python, its own
tree first on the path). On two CPUs both may come out as "≥ sender max": the sender
shares its CPU with the kernel's loopback work; compare their CPU us/pkt then.

and a point check at one rate, both trees in one run, is this script with
``--sessions 1 --rate 400000 --open-files 20000 --databases sqlite``.

Progress goes to stderr, the markdown table to stdout, ``--json FILE`` writes every run's
figures. Needs gcc, root (to set the open-file limit above the current hard limit),
Redis, and PostgreSQL for ``postgres``. Every wait has a timeout; every process started
is stopped by its pid, every temporary directory removed and every database created
dropped on exit.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
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
from typing import Any, Final, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lossless_search import (
    NICE,
    NOISY,
    PYTHON,
    READY_TEXT,
    REPO,
    Cleanup,
    Interference,
    build_datagram,
    compile_sender,
    effective_rcvbuf,
    free_udp_port,
    log,
    pinned,
    process_cpu_seconds,
    set_rmem_max,
    snapshot_tree,
    tail,
    udp_socket_state,
    wait_for_quiet,
    wait_for_text,
)

FIRST_MID: Final = 0x300  # the mirror id build_datagram puts in the datagram
RCVBUF: Final = 64 * 2**20
POLL_INTERVAL: Final = 0.25
# Database, files and socket all still and equal this long: the receiver has caught up
# (longer than the store's one-second flush interval). --still-for changes it.
STILL_FOR: Final = 2.0
CATCH_UP_GOAL: Final = 5.0
STOP_TIMEOUT: Final = 60.0
START_TIMEOUT: Final = 180.0
SETUP_TIMEOUT: Final = 600.0
LIMIT_OPTIONS: Final = 100_000  # the most sessions or open files asked of one run
PCAP_FILE_HEADER: Final = 24
PCAP_RECORD_HEADER: Final = 16
_SESSION_DIRECTORY = re.compile(r"_mid-([0-9a-f]{8})_sid-[0-9a-f]{8}$")

# manage.py shell -c: the router, case and intercepts of one run. The number of
# sessions and the first mirror id come in the environment, checked here again.
SETUP_RECORDS: Final = textwrap.dedent(
    """
    import os
    from datetime import timedelta
    from django.db import transaction
    from django.utils import timezone
    from jmirror_web.intercepts.models import Case, Intercept, Router
    sessions = int(os.environ["BENCH_SESSIONS"])
    first_mid = int(os.environ["BENCH_FIRST_MID"])
    assert 1 <= sessions <= 100_000 and 0 <= first_mid < 2**30 - sessions
    now = timezone.now()
    start, end = now - timedelta(days=1), now + timedelta(days=2)
    with transaction.atomic():
        Router.objects.create(name="sessions-bench", address="127.0.0.1")
        case = Case.objects.create(
            reference="SESSIONS-BENCH", title="concurrent-sessions benchmark",
            agency="benchmarks", valid_from=start, valid_until=end,
            status=Case.Status.ACTIVE,
        )
        # No routers on the intercepts: each claims its mirror id from any registered
        # router, and the one router is registered.
        Intercept.objects.bulk_create(
            [
                Intercept(
                    case=case, liid=f"SESS-{index:06d}", intercept_id=first_mid + index,
                    valid_from=start, valid_until=end, keep_content=True,
                )
                for index in range(sessions)
            ],
            batch_size=1000,
        )
    print("records ready", Intercept.objects.filter(case=case).count())
    """
)


# --- the trees under test ------------------------------------------------------------


@dataclass
class Tree:
    """A checkout whose ``manage.py`` runs: the working tree (a snapshot of it unless
    --live-tree) or another one given with --tree."""

    name: str
    source: Path
    code: Path
    description: str = ""
    snapshot: bool = False


def tree_description(path: Path) -> str:
    head = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.splitlines()
    return f"{head[:70]} + {len(changed)} changed paths"


def extension_state(code: Path) -> str | None:
    """What is wrong with the tree's built C extension, if anything."""
    source = code / "receiver" / "_fastpath.c"
    built = sorted(code.glob("receiver/_fastpath*.so"))
    if not source.exists():
        return None
    if not built:
        return "receiver/_fastpath is not built"
    if source.stat().st_mtime > built[0].stat().st_mtime:
        return "receiver/_fastpath.c is newer than its built extension"
    return None


def build_extension(code: Path) -> None:
    done = subprocess.run(
        [PYTHON, "setup.py", "--quiet", "build_ext", "--inplace"],
        cwd=code,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"build_ext failed in {code}:\n{done.stderr[-2000:]}")


def prepare_tree(tree: Tree) -> None:
    """(Re)take the snapshot of the working tree; build its extension when stale."""
    if not tree.snapshot:
        tree.description = tree_description(tree.source)
        problem = extension_state(tree.code)
        if problem:
            log(f"warning: {tree.name}: {problem}")
            tree.description += f" ({problem})"
        return
    shutil.rmtree(tree.code, ignore_errors=True)
    tree.description = "snapshot of " + snapshot_tree(tree.code)
    problem = extension_state(tree.code)
    if problem:
        log(f"{tree.name}: {problem}: building it in the snapshot")
        build_extension(tree.code)
        tree.description += " (extension rebuilt from its source)"


# --- databases -------------------------------------------------------------------------


class Database(Protocol):
    kind: str
    url: str

    def query(self, sql: str) -> list[tuple[Any, ...]]: ...

    def drop(self) -> None: ...


class SqliteDatabase:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        # Read-only, a short busy timeout: the receiver writes in WAL mode meanwhile.
        with contextlib.closing(
            sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=2)
        ) as db:
            return list(db.execute(sql).fetchall())

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class PostgresDatabase:
    kind = "postgres"

    def __init__(self, server: str, name: str) -> None:
        import psycopg

        self.server = server
        self.name = name
        with psycopg.connect(server, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.url = server.rsplit("/", 1)[0] + f"/{name}"
        self.connection: Any = None

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        if self.connection is None:
            self.connection = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            self.connection.execute("SET statement_timeout = '5s'")
        return list(self.connection.execute(sql).fetchall())

    def drop(self) -> None:
        import psycopg

        if self.connection is not None:
            with contextlib.suppress(psycopg.Error):
                self.connection.close()
            self.connection = None
        with psycopg.connect(self.server, autocommit=True, connect_timeout=10) as admin:
            # WITH (FORCE): a receiver killed mid-write may still hold a connection.
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def database_totals(database: Database) -> tuple[int, int]:
    """sum(Session.packets), sum(Session.stored_packets)."""
    row = database.query(
        "SELECT coalesce(sum(packets), 0), coalesce(sum(stored_packets), 0) FROM intercepts_session"
    )[0]
    return int(row[0]), int(row[1])


def session_rows(database: Database) -> dict[int, tuple[int, int]]:
    """Mirror id -> (packets, stored_packets) of every session row."""
    rows = database.query("SELECT mid, packets, stored_packets FROM intercepts_session")
    totals: dict[int, tuple[int, int]] = {}
    for mid, packets, stored in rows:
        before = totals.get(int(mid), (0, 0))
        totals[int(mid)] = (before[0] + int(packets), before[1] + int(stored))
    return totals


def receiver_row(database: Database) -> tuple[int | None, int | None]:
    """The latest ReceiverProcess's datagrams and its listeners' kernel drops (None:
    no row, or the receiver did not know)."""
    latest = (
        "SELECT id, datagrams FROM intercepts_receiverprocess "
        "ORDER BY started_at DESC, id DESC LIMIT 1"
    )
    rows = database.query(latest)
    if not rows:
        return None, None
    drops = database.query(
        "SELECT kernel_drops FROM intercepts_listener WHERE receiver_id = "
        "(SELECT id FROM intercepts_receiverprocess ORDER BY started_at DESC, id DESC LIMIT 1)"
    )
    known = [int(value) for (value,) in drops if value is not None]
    return int(rows[0][1]), sum(known) if known else None


# --- the pcap files ----------------------------------------------------------------------


@dataclass
class _Counted:
    directory: str
    offset: int = 0  # where the next record header starts
    records: int = 0
    order: str = ""  # struct byte order of the file, once its header is read


class PcapCounter:
    """Records in the pcap files under a root, by session directory. Incremental: a file
    is read from where the previous count stopped, and files are known by inode, so a
    ``.part`` file renamed to ``.pcap`` on close is not read again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[tuple[int, int], _Counted] = {}

    def count(self) -> dict[str, int]:
        """Records per session directory name, as the files are now. While the receiver
        runs, a file renamed (``.part`` to ``.pcap`` on close) between the listing and its
        reading is left out of this count and found under its new name by the next one;
        once the receiver has stopped, the count is exact."""
        seen: set[tuple[int, int]] = set()
        if self.root.is_dir():
            for directory in os.scandir(self.root):
                if not directory.is_dir(follow_symlinks=False):
                    continue
                for entry in os.scandir(directory.path):
                    if not entry.name.endswith((".pcap", ".pcap.part")):
                        continue
                    try:
                        status = entry.stat(follow_symlinks=False)
                        key = (status.st_dev, status.st_ino)
                        counted = self.files.get(key)
                        if counted is None or status.st_size < counted.offset:
                            counted = self.files[key] = _Counted(directory.name)
                        if status.st_size > counted.offset:
                            self._read(entry.path, counted, status.st_size)
                    except FileNotFoundError:
                        continue  # renamed since the listing: counted next time
                    seen.add(key)
        for gone in set(self.files) - seen:
            del self.files[gone]
        totals: dict[str, int] = {}
        for counted in self.files.values():
            totals[counted.directory] = totals.get(counted.directory, 0) + counted.records
        return totals

    @staticmethod
    def _read(path: str, counted: _Counted, size: int) -> None:
        with open(path, "rb") as stream:
            if not counted.order:
                header = stream.read(PCAP_FILE_HEADER)
                if len(header) < PCAP_FILE_HEADER:
                    return  # the header is not written yet
                magic = header[:4]
                if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                    counted.order = "<"
                elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                    counted.order = ">"
                else:
                    raise ValueError(f"{path} is not a pcap file")
                counted.offset = PCAP_FILE_HEADER
            stream.seek(counted.offset)
            data = stream.read(size - counted.offset)
        included = struct.Struct(counted.order + "8xI4x").unpack_from
        position, end = 0, len(data)
        while position + PCAP_RECORD_HEADER <= end:
            following = position + PCAP_RECORD_HEADER + included(data, position)[0]
            if following > end:
                break  # a partial last record: counted once it is whole
            position = following
            counted.records += 1
        counted.offset += position


def mid_of(directory: str) -> int | None:
    match = _SESSION_DIRECTORY.search(directory)
    return int(match[1], 16) if match else None


# --- one run -------------------------------------------------------------------------------


@dataclass
class Run:
    tree: str
    database: str
    open_files: int
    sessions: int
    repeat: int
    sent: int = 0
    achieved_rate: float = 0.0
    sender_max_lag_ms: float = 0.0
    received: int | None = None
    lost: int | None = None
    kernel_drops: int | None = None
    longest_round_ms: float | None = None
    catch_up_seconds: float | None = None  # None: not within the limit
    final_stored: int | None = None
    final_packets: int | None = None
    file_packets: int | None = None
    claimed: int | None = None
    sessions_with_file: int | None = None
    sessions_mismatched: int | None = None  # rows whose stored count differs from files
    stored_without_file: int | None = None  # rows counting stored packets with no file
    closed_early: int | None = None
    counters_not_written: bool = False
    receiver_cpu_seconds: float | None = None
    # Share of the receiver CPU's wall time that other processes used (shared machine).
    other_load: float | None = None
    receiver_exit: int | None = None
    # The code that ran: a retry after a failure takes a new snapshot of the working tree.
    code: str = ""
    polls: list[tuple[float, int, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return (
            self.final_stored is not None
            and self.final_stored == self.file_packets == self.claimed
            and not self.sessions_mismatched
        )


@dataclass(frozen=True)
class Options:
    count: int
    rate: float
    size: int
    cpus: tuple[int, int] | None
    redis_url: str
    postgres_url: str
    catch_up_limit: float
    quiet_wait: float
    still_for: float
    work: Path
    # The hard open-file limit (0: the soft one, --open-files).
    hard_open_files: int = 0
    # Seconds over which the sessions start (0: all with the first datagrams).
    ramp: float = 0.0


def child_environment(tree: Tree, data_dir: Path, database: Database, redis: str) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        JMIRROR_DATA_DIR=str(data_dir),
        DATABASE_URL=database.url,
        REDIS_URL=redis,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(tree.code),
    )
    # The benchmark decides where the receiver listens and how many files it may open.
    for name in ("JMIRROR_LISTEN", "JMIRROR_METRICS_LISTEN", "JMIRROR_MAX_OPEN_FILES"):
        environment.pop(name, None)
    return environment


def manage(tree: Tree, environment: dict[str, str], *command: str) -> str:
    done = subprocess.run(
        [PYTHON, str(tree.code / "manage.py"), *command],
        env=environment,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        cwd=tree.code,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {command[0]} failed:\n{done.stdout}{done.stderr[-3000:]}")
    return done.stdout


def receiver_preexec(cpu: int | None, open_files: int, hard: int = 0) -> Callable[[], None]:
    """For preexec_fn (the script starts no threads, so this is fork-safe): the
    receiver's CPU and niceness (--nice) and its open-file limit, soft and hard (the soft
    one when ``hard`` is 0), as a service manager sets it."""
    place = pinned(cpu)

    def setup() -> None:
        place()
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, max(hard, open_files)))

    return setup


def send(binary: Path, options: Options, port: int, payload: Path, sessions: int) -> dict[str, str]:
    command = [
        str(binary),
        "--port",
        str(port),
        "--count",
        str(options.count),
        "--rate",
        f"{options.rate:.0f}",
        "--file",
        str(payload),
        "--sessions",
        str(sessions),
    ]
    if options.ramp > 0 and sessions > 1:
        command += ["--ramp", str(options.ramp)]
    cpu = options.cpus[0] if options.cpus else None
    expected = options.count / options.rate if options.rate else options.count / 100_000
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=expected * 2 + 30,
        preexec_fn=pinned(cpu),
    )
    values = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
    if "sent" not in values:
        raise RuntimeError(f"the sender failed ({done.returncode}): {done.stderr.strip()}")
    return values


_STOPPED = re.compile(r"stopped: (\d+) datagrams, (\d+) malformed, drops (\{[^}]*\})")
_LONGEST_ROUND = re.compile(r"longest receive round ([\d.]+) ms")
_CLOSED_EARLY = re.compile(r"(\d+) closed early by the open-file bound")
_COUNTERS_LOST = ("last counters not written", "could not be written")


def problem_lines(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if ((" ERROR " in line or " WARNING " in line) and "receive buffer on" not in line)
        or line.startswith("Traceback")
        or re.match(r"^\w+(\.\w+)*(Error|Exception): ", line)
    ]


@contextlib.contextmanager
def fresh_database(kind: str, directory: Path, options: Options, label: str) -> Iterator[Database]:
    database: Database
    if kind == "sqlite":
        database = SqliteDatabase(directory / "db.sqlite3")
    else:
        database = PostgresDatabase(options.postgres_url, f"jmirror_sessions_{os.getpid()}_{label}")
    try:
        yield database
    finally:
        try:
            database.drop()
        except Exception as error:  # reported; the run goes on
            log(f"    could not drop the {kind} database: {error}")


def one_run(
    run: Run, tree: Tree, options: Options, binary: Path, payload: Path, cleanup: Cleanup
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="run-", dir=options.work))
    label = directory.name.removeprefix("run-").lower()
    try:
        with fresh_database(run.database, directory, options, label) as database:
            data_dir = directory / "data"
            # The owner's alone, as the receiver wants it (else it fixes and warns).
            data_dir.mkdir(mode=0o700)
            environment = child_environment(tree, data_dir, database, options.redis_url)
            manage(tree, environment, "migrate", "--noinput")
            environment["BENCH_SESSIONS"] = str(run.sessions)
            environment["BENCH_FIRST_MID"] = str(FIRST_MID)
            manage(tree, environment, "shell", "-c", SETUP_RECORDS)
            del environment["BENCH_SESSIONS"], environment["BENCH_FIRST_MID"]
            measure(run, tree, options, binary, payload, cleanup, database, data_dir, environment)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(
    run: Run,
    tree: Tree,
    options: Options,
    binary: Path,
    payload: Path,
    cleanup: Cleanup,
    database: Database,
    data_dir: Path,
    environment: dict[str, str],
) -> None:
    port = free_udp_port()
    out, err = data_dir.parent / "receive.out", data_dir.parent / "receive.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = cleanup.track(
            subprocess.Popen(
                [
                    PYTHON,
                    str(tree.code / "manage.py"),
                    "receive",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--rcvbuf",
                    str(RCVBUF),
                ],
                stdout=stdout,
                stderr=stderr,
                env=environment,
                cwd=tree.code,
                preexec_fn=receiver_preexec(
                    options.cpus[1] if options.cpus else None,
                    run.open_files,
                    options.hard_open_files,
                ),
            )
        )
    try:
        try:
            wait_for_text(out, READY_TEXT, process, timeout=START_TIMEOUT)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{tail(err)}") from None
        if options.quiet_wait:
            wait_for_quiet(options.quiet_wait)
        window = Interference(options.cpus[1] if options.cpus else None, process.pid)
        cpu_before = process_cpu_seconds(process.pid)
        sent = send(binary, options, port, payload, run.sessions)
        run.sent = int(sent["sent"])
        run.achieved_rate = float(sent["rate"])
        run.sender_max_lag_ms = float(sent["max_lag_us"]) / 1000
        if int(sent.get("errors", "0")):
            run.notes.append(f"sender errors {sent['errors']}")
        polls, socket_drops = poll(run, options, database, data_dir, process, port)
        run.polls = polls
        if process.poll() is None:
            run.receiver_cpu_seconds = process_cpu_seconds(process.pid) - cpu_before
            run.other_load = window.measure()[2]
            process.send_signal(signal.SIGTERM)
            try:
                run.receiver_exit = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                run.notes.append(f"did not stop within {STOP_TIMEOUT:.0f} s: killed")
        else:
            run.receiver_exit = process.returncode
            run.notes.append(f"the receiver exited early ({process.returncode})")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    conclude(run, database, data_dir, out, err, socket_drops)


def poll(
    run: Run,
    options: Options,
    database: Database,
    data_dir: Path,
    process: subprocess.Popen[Any],
    port: int,
) -> tuple[list[tuple[float, int, int, int]], int | None]:
    """From the end of sending: (seconds, db packets, db stored, file records) every
    0.25 s, until all three and the socket's queue have been still and equal for
    ``--still-for`` seconds, or the limit. Also the socket's kernel drops, last seen."""
    counter = PcapCounter(data_dir / "sessions")
    start = time.monotonic()
    polls: list[tuple[float, int, int, int]] = []
    still_since: float | None = None
    drops: int | None = None
    previous: tuple[int, int, int] | None = None
    while True:
        now = time.monotonic() - start
        try:
            packets, stored = database_totals(database)
        except Exception as error:  # locked or busy: poll again
            log(f"    poll: database: {error}")
            packets, stored = polls[-1][1:3] if polls else (0, 0)
        files = sum(counter.count().values())
        polls.append((round(now, 3), packets, stored, files))
        state = udp_socket_state(port)
        if state is not None:
            drops = state.drops
        current = (packets, stored, files)
        settled = (
            stored == files
            and current == previous
            and (state is None or state.rx_queue == 0)
            and process.poll() is None
        )
        if not settled:
            still_since = None
        elif still_since is None:
            still_since = now
        previous = current
        if still_since is not None and now - still_since >= options.still_for:
            break
        if now >= options.catch_up_limit or process.poll() is not None:
            break
        time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - start - now)))
    return polls, drops


def conclude(
    run: Run,
    database: Database,
    data_dir: Path,
    out: Path,
    err: Path,
    socket_drops: int | None,
) -> None:
    output = out.read_text(errors="replace")
    errors = err.read_text(errors="replace")
    stopped = _STOPPED.search(output)
    datagrams_row, listener_drops = receiver_row(database)
    if stopped is not None:
        run.received = int(stopped[1])
        try:
            dropped = ast.literal_eval(stopped[3])
            run.claimed = run.received - int(stopped[2]) - sum(int(v) for v in dropped.values())
        except (ValueError, SyntaxError, AttributeError):
            run.notes.append(f"unreadable drops {stopped[3][:60]}")
    elif datagrams_row is not None:
        run.received = datagrams_row
        run.notes.append("no 'stopped:' line; received from ReceiverProcess.datagrams")
    if run.received is not None:
        run.lost = run.sent - run.received
    # The socket's own count, read just before SIGTERM, is exact; the receiver's Listener
    # row is only as fresh as its last database write, which lags in the very runs that
    # lose datagrams. The row stands in when the socket was not seen.
    run.kernel_drops = socket_drops if socket_drops is not None else listener_drops
    if run.lost and run.kernel_drops is not None and run.lost > run.kernel_drops:
        # Still queued when SIGTERM came (polling ended at its limit): never read.
        run.notes.append(f"{run.lost - run.kernel_drops:,} left unread in the socket at stop")
    if listener_drops is not None and listener_drops != run.kernel_drops:
        run.notes.append(f"Listener row says {listener_drops:,} kernel drops")
    longest = _LONGEST_ROUND.search(output)
    run.longest_round_ms = float(longest[1]) if longest else None
    closed = _CLOSED_EARLY.search(output)
    run.closed_early = int(closed[1]) if closed else None
    run.counters_not_written = any(text in errors + output for text in _COUNTERS_LOST)
    if "is not built" in errors:
        run.notes.append("pure-Python receive path (extension not built)")
    rows = session_rows(database)
    run.final_packets = sum(packets for packets, _ in rows.values())
    run.final_stored = sum(stored for _, stored in rows.values())
    # The database's claimed count when the stopped line did not say.
    if run.claimed is None:
        run.claimed = run.final_packets
    per_directory = PcapCounter(data_dir / "sessions").count()
    run.file_packets = sum(per_directory.values())
    in_files: dict[int, int] = {}
    for directory, records in per_directory.items():
        mid = mid_of(directory)
        if mid is None:
            run.notes.append(f"unexpected directory {directory[:60]}")
            continue
        in_files[mid] = in_files.get(mid, 0) + records
    run.sessions_with_file = sum(1 for records in in_files.values() if records)
    run.sessions_mismatched = sum(
        1 for mid in set(rows) | set(in_files) if rows.get(mid, (0, 0))[1] != in_files.get(mid, 0)
    )
    run.stored_without_file = sum(
        1 for mid, (_, stored) in rows.items() if stored and not in_files.get(mid)
    )
    # Caught up: the first poll whose stored count equals everything the files hold.
    run.catch_up_seconds = next(
        (seconds for seconds, _, stored, _ in run.polls if stored == run.file_packets), None
    )
    if run.polls and run.file_packets > run.polls[-1][3]:
        # Received, but in no file (nor counted) while polling went on: held in memory
        # until shutdown flushed it. A crash then would have lost it.
        run.notes.append(
            f"{run.file_packets - run.polls[-1][3]:,} reached the files only at shutdown "
            f"(polled {run.polls[-1][0]:.1f} s)"
        )
    problems = problem_lines(errors)
    if problems:
        log("    receiver stderr: " + "\n    ".join(problems[-8:]))
        run.notes.append(f"stderr: {problems[-1].strip()[:200]}")


# --- output --------------------------------------------------------------------------------


def number(value: int | float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def row_text(run: Run, catch_up_limit: float) -> list[str]:
    if run.catch_up_seconds is None:
        caught = f"not within {catch_up_limit:.0f} s"
    else:
        caught = f"{run.catch_up_seconds:.2f} s" + (
            "" if run.catch_up_seconds <= CATCH_UP_GOAL else " (> 5 s)"
        )
    lost = number(run.lost)
    if run.lost and run.sent:
        lost += f" ({run.lost / run.sent:.1%})"
    final = (
        f"= {run.final_stored:,}"
        if run.consistent and run.final_stored is not None
        else f"{number(run.final_stored)} / {number(run.file_packets)} / {number(run.claimed)}"
    )
    with_file = f"{number(run.sessions_with_file)} of {run.sessions:,}"
    bad = number(run.sessions_mismatched)
    if run.stored_without_file:
        bad += f" ({run.stored_without_file:,} with no file)"
    return [
        run.tree,
        run.database,
        f"{run.open_files:,}",
        f"{run.sessions:,}",
        number(run.sent),
        number(run.achieved_rate),
        number(run.received),
        lost,
        number(run.kernel_drops),
        number(run.longest_round_ms, 1),
        caught,
        final,
        with_file,
        bad,
        number(run.closed_early),
        "yes" if run.counters_not_written else "no",
        number(run.receiver_cpu_seconds, 1),
        f"{run.other_load:.0%}" if run.other_load is not None else "-",
        "; ".join(run.notes)[:300].replace("|", "/"),
    ]


HEADERS: Final = [
    "tree",
    "db",
    "open files",
    "sessions",
    "sent",
    "sent /s",
    "received",
    "lost",
    "kernel drops",
    "longest round ms",
    "caught up",
    "final stored / files / claimed",
    "sessions with file",
    "bad rows",
    "closed early",
    "counters lost",
    "CPU s",
    "other load",
    "notes",
]


def table(runs: list[Run], catch_up_limit: float) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row_text(run, catch_up_limit)) + " |" for run in runs]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def integers(text: str) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or any(not 1 <= value <= LIMIT_OPTIONS for value in values):
        raise argparse.ArgumentTypeError(f"each value from 1 to {LIMIT_OPTIONS:,}: {text!r}")
    return values


def database_kinds(text: str) -> list[str]:
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    if not kinds or set(kinds) - {"sqlite", "postgres"}:
        raise argparse.ArgumentTypeError("sqlite and/or postgres")
    return kinds


def parse_cpus(text: str) -> tuple[int, int] | None:
    if text == "none":
        return None
    try:
        sender, receiver = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("SENDER,RECEIVER or none") from None
    available = os.sched_getaffinity(0)
    if sender not in available or receiver not in available:
        raise argparse.ArgumentTypeError(f"CPUs {text} are not all available ({available})")
    return sender, receiver


def make_trees(names: list[str], live: bool, work: Path) -> list[Tree]:
    trees: list[Tree] = []
    for name in names or ["working"]:
        if name == "working":
            code = REPO if live else work / "working-tree"
            trees.append(Tree("working", REPO, code, snapshot=not live))
            continue
        path = Path(name).resolve()
        if not (path / "manage.py").is_file():
            raise SystemExit(f"--tree {name}: no manage.py there")
        label = path.name
        if any(tree.name == label for tree in trees):
            label = str(path)
        trees.append(Tree(label, path, path))
    return trees


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=integers, default="20,200,2000,10000")
    parser.add_argument("--databases", type=database_kinds, default="sqlite,postgres")
    parser.add_argument("--open-files", type=integers, default="20000,1024")
    parser.add_argument(
        "--hard-open-files",
        type=int,
        default=0,
        help="hard open-file limit (0: the same as --open-files); systemd's default for "
        "services is soft 1024, hard 524288, and the receiver raises the soft limit to it",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="start the sessions over this many seconds of the schedule rather than all "
        "with the first datagrams (subscribers logging in one after another)",
    )
    parser.add_argument("--count", type=int, default=1_200_000, help="datagrams per run")
    parser.add_argument("--rate", type=float, default=100_000, help="datagrams per second")
    parser.add_argument("--size", type=int, default=200, help="UDP payload bytes")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each combination")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="PATH",
        help="checkout whose manage.py runs (repeatable); 'working': the working tree",
    )
    parser.add_argument(
        "--live-tree", action="store_true", help="run the working tree in place, no snapshot"
    )
    parser.add_argument("--cpus", type=parse_cpus, default="0,1", help="SENDER,RECEIVER or none")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--catch-up-limit", type=float, default=20.0, help="seconds of polling after sending"
    )
    parser.add_argument(
        "--still-for",
        type=float,
        default=STILL_FOR,
        help="end polling once database, files and socket were still and equal this long",
    )
    parser.add_argument(
        "--start-retries",
        type=int,
        default=3,
        help="retries (20 s apart, with a new snapshot) of a run whose receiver cannot start",
    )
    parser.add_argument(
        "--rmem-max",
        type=int,
        default=RCVBUF,
        help="raise net.core.rmem_max to this for the run, so that --rcvbuf is granted "
        "(root; restored at exit; 0 leaves it)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60, help="max seconds to wait for idle CPUs"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the sender and the receiver (negative needs root), for shared machines",
    )
    parser.add_argument(
        "--noisy-retries",
        type=int,
        default=1,
        help="repeats of a lossy run during which others took over 10%% of the receiver's CPU",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures")
    args = parser.parse_args()
    if not 1 <= args.count <= 100_000_000 or not 0 <= args.rate <= 10_000_000:
        parser.error("--count from 1 to 100,000,000; --rate from 0 (flat out) to 10,000,000")
    if not 36 <= args.size <= 65507:
        parser.error("--size from 36 (the smallest jmirror datagram with IPv4/UDP) to 65507")
    if not 1 <= args.repeat <= 100 or not 1 <= args.catch_up_limit <= 600:
        parser.error("--repeat from 1 to 100; --catch-up-limit from 1 to 600 s")
    if args.count < 1_200_000:
        log(f"note: --count {args.count:,} is below the default 1,200,000 (a quick check)")

    NICE[0] = args.nice
    cleanup = Cleanup()
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    runs: list[Run] = []
    try:
        work = Path(tempfile.mkdtemp(prefix="jmirror-sessions-", dir=args.workdir))
        cleanup.paths.append(work)
        options = Options(
            count=args.count,
            rate=args.rate,
            size=args.size,
            cpus=args.cpus,
            redis_url=args.redis_url,
            postgres_url=args.postgres_url,
            catch_up_limit=args.catch_up_limit,
            quiet_wait=args.quiet_wait,
            still_for=args.still_for,
            work=work,
            hard_open_files=args.hard_open_files,
            ramp=args.ramp,
        )
        if args.rmem_max:
            try:
                set_rmem_max(args.rmem_max, cleanup)
            except OSError as error:
                log(f"cannot raise net.core.rmem_max: {error}")
        if args.cpus:
            # The polling (reading the files) runs beside the sender, not the receiver.
            os.sched_setaffinity(0, {args.cpus[0]})
        trees = make_trees(args.tree, args.live_tree, work)
        for tree in trees:
            prepare_tree(tree)
            log(f"tree {tree.name}: {tree.code} ({tree.description})")
        binary = compile_sender(work)
        payload = work / "datagram.bin"
        payload.write_bytes(build_datagram(args.size))
        header = (
            f"{args.count:,} datagrams of {args.size} bytes at {args.rate:,.0f}/s, "
            f"manage.py receive --rcvbuf {RCVBUF}, CPUs sender,receiver = "
            f"{args.cpus or 'unpinned'} of {os.cpu_count()}, socket buffer granted "
            f"{effective_rcvbuf(RCVBUF):,} bytes (net.core.rmem_max "
            f"{Path('/proc/sys/net/core/rmem_max').read_text().strip()}; Linux doubles it)"
        )
        log(header)
        for sessions in args.sessions:
            for kind in args.databases:
                for open_files in args.open_files:
                    for repeat in range(1, args.repeat + 1):
                        for tree in trees:
                            log(
                                f"{tree.name}: {sessions:,} sessions, {kind}, open-file limit "
                                f"{open_files:,}, run {repeat}"
                            )
                            make = functools.partial(
                                Run, tree.name, kind, open_files, sessions, repeat
                            )
                            for noisy in range(args.noisy_retries + 1):
                                run = attempt_run(
                                    make,
                                    tree,
                                    options,
                                    binary,
                                    payload,
                                    cleanup,
                                    args.start_retries,
                                )
                                load = run.other_load or 0.0
                                if not run.lost or load <= NOISY or noisy == args.noisy_retries:
                                    break
                                log(f"  lossy while others took {load:.0%} of its CPU: again")
                            if noisy:
                                run.notes.append(f"{noisy} noisy lossy runs before this one")
                            runs.append(run)
                            if args.json is not None:  # after every run: a long run is kept
                                write_json(args.json, header, trees, runs)
                            log("  " + " | ".join(row_text(run, args.catch_up_limit)))
        summary = table(runs, args.catch_up_limit)
        print(header)
        # Each tree's code; the working tree's more than once if a retry took a new snapshot.
        for name, code in dict.fromkeys((run.tree, run.code) for run in runs):
            print(f"tree {name}: {code}")
        print()
        print(summary)
    finally:
        cleanup.run()


def write_json(path: Path, header: str, trees: list[Tree], runs: list[Run]) -> None:
    document = {
        "settings": header,
        "trees": {tree.name: tree.description for tree in trees},
        "runs": [{**asdict(run), "consistent": run.consistent} for run in runs],
    }
    path.write_text(json.dumps(document, indent=2))


def attempt_run(
    new_run: Callable[[], Run],
    tree: Tree,
    options: Options,
    binary: Path,
    payload: Path,
    cleanup: Cleanup,
    retries: int,
) -> Run:
    """One run; a run that fails (a receiver that cannot start because of someone's
    half-made change, a database that cannot be created) is started again from scratch
    after 20 s, with a new snapshot of the working tree, and noted if it never works."""
    failures: list[str] = []
    for attempt in range(retries + 1):
        run = new_run()
        run.code = tree.description
        try:
            one_run(run, tree, options, binary, payload, cleanup)
        except Exception as error:  # in the table; the rest goes on
            text = str(error).strip()[-600:] or type(error).__name__
            log(f"  run failed: {text}")
            failures.append(text.splitlines()[-1][:160])
            if attempt == retries:
                run.notes.append("failed: " + " / ".join(failures))
                return run
            time.sleep(20)
            if tree.snapshot:
                with contextlib.suppress(Exception):
                    prepare_tree(tree)
            continue
        if failures:
            run.notes.append(f"after {len(failures)} failed attempts: {failures[-1]}")
        return run
    raise AssertionError("unreachable")


if __name__ == "__main__":
    main()
