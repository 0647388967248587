"""What a running receiver must survive, on PostgreSQL: the database unreachable for a while.

The SQLite variant in ``test_receive_faults.py`` holds the database's write lock; this
one cuts the network between a running receiver and a real PostgreSQL. The test makes a
database of its own on the server at 127.0.0.1:5432 (migrated, then filled with the same
router, case and intercept as the SQLite fault tests), and hands the receiver a
``DATABASE_URL`` that goes through a small TCP proxy inside the test. Cutting the proxy
closes every connection it carries and closes each new one as soon as it is accepted,
so every query and every reconnection the receiver tries fails at once, as it does when
the database host goes away; restoring it lets connections through again.

Skipped, saying so, when no PostgreSQL answers at 127.0.0.1:5432. Like the other fault
tests it uses neither the test database nor the ``django_db`` marker. Its database is
dropped, the proxy stopped and the receiver stopped by pid whatever happens, and every
wait is bounded.
"""

from __future__ import annotations

import selectors
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest

from tests.receiver.test_receive_faults import (
    RECORDS,
    ReceiverProcess,
    Site,
    SteadyStream,
    assert_all_stored_and_counted,
    assert_rows_close_every_file,
    from_router,
    stop_process,
    two_sessions,
    wait_until,
)

POSTGRES_HOST: Final = "127.0.0.1"
POSTGRES_PORT: Final = 5432
SERVER_URL: Final = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}"
OUTAGE: Final = 6.0  # seconds the database is unreachable while packets flow
RATE: Final = 1000  # datagrams per second


# -- the database -----------------------------------------------------------------------


def _administer(sql: str) -> None:
    with psycopg.connect(f"{SERVER_URL}/postgres", autocommit=True, connect_timeout=5) as db:
        db.execute(sql)


class PostgresSite(Site):
    """A :class:`Site` whose database is one of its own on the PostgreSQL server: the
    management commands get a ``DATABASE_URL`` to it unless told another (the receiver's
    goes through the proxy), and the test reads it directly, never through the proxy."""

    def __init__(self, directory: Path, database: str) -> None:
        super().__init__(directory)
        self.name = database
        self.url = f"{SERVER_URL}/{database}"

    def environment(self, **extra: str) -> dict[str, str]:
        return super().environment(**{"DATABASE_URL": self.url, **extra})

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        # Site's queries are written for sqlite3 (qmark); psycopg takes %s.
        query = sql.replace("?", "%s")
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as db:
            return db.execute(query, params).fetchall()


@pytest.fixture
def postgres_site() -> Iterator[PostgresSite]:
    """A fresh, migrated PostgreSQL database with the fault tests' records, and a data
    directory; both gone afterwards."""
    try:
        psycopg.connect(f"{SERVER_URL}/postgres", connect_timeout=3).close()
    except psycopg.Error as error:
        pytest.skip(f"no PostgreSQL at {POSTGRES_HOST}:{POSTGRES_PORT}: {error}")
    name = f"jmirror_outage_{uuid.uuid4().hex[:12]}"
    directory = Path(tempfile.mkdtemp(prefix="jmirror-outage-"))
    _administer(f'CREATE DATABASE "{name}"')
    try:
        site = PostgresSite(directory, name)
        site.manage("migrate", "--verbosity", "0", timeout=120)
        site.manage("shell", "--command", RECORDS)
        yield site
    finally:
        # FORCE: a receiver killed mid-write may leave a backend behind for a moment.
        _administer(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(directory, ignore_errors=True)


# -- the network between the receiver and the database --------------------------------------


class CuttableProxy(threading.Thread):
    """A TCP proxy on a free loopback port to ``upstream``, in one thread.

    :meth:`cut` closes every connection it carries, and until :meth:`restore` it closes
    each new connection as soon as it accepts it. The thread itself does both (the test
    only asks and waits for it), so no socket is closed under another thread's feet.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(name="database-proxy", daemon=True)
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.carried = 0  # connections forwarded
        self.severed = 0  # open connections closed by a cut
        self.turned_away = 0  # connections accepted and closed while cut
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._want_cut = False
        self._is_cut = threading.Event()
        self._is_up = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._is_up.set()
        try:
            while not self._halt.is_set():
                if self._want_cut and not self._is_cut.is_set():
                    self.severed += len(self._peers) // 2
                    self._close_all()
                    self._is_up.clear()
                    self._is_cut.set()
                elif not self._want_cut and self._is_cut.is_set():
                    self._is_cut.clear()
                    self._is_up.set()
                for key, _events in self._selector.select(timeout=0.02):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        self._accept()
                    elif sock in self._peers:
                        self._forward(sock)
        finally:
            self._close_all()
            self._selector.close()
            self.listener.close()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self._want_cut:
            self.turned_away += 1
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.settimeout(5)  # sendall is bounded; reads only follow the selector
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[server] = server, client
        self.carried += 1

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock)
        del self._peers[peer]
        for each in (sock, peer):
            self._selector.unregister(each)
            each.close()

    def _close_all(self) -> None:
        while self._peers:
            self._close_pair(next(iter(self._peers)))

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def cut(self) -> None:
        self._want_cut = True
        assert self._is_cut.wait(5), "the proxy did not cut"

    def restore(self) -> None:
        self._want_cut = False
        assert self._is_up.wait(5), "the proxy did not come back"

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        assert not self.is_alive(), "the proxy thread did not stop"


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    running = CuttableProxy((POSTGRES_HOST, POSTGRES_PORT))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def start_receiver(
    postgres_site: PostgresSite, proxy: CuttableProxy
) -> Iterator[Callable[[], ReceiverProcess]]:
    """Receivers whose database connections go through the proxy; stopped by pid."""
    started: list[ReceiverProcess] = []

    def start() -> ReceiverProcess:
        receiver = ReceiverProcess(postgres_site, DATABASE_URL=proxy.url(postgres_site.name))
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        stop_process(receiver.process)


# -- the test -------------------------------------------------------------------------------


def test_an_unreachable_postgresql_loses_no_packet_and_the_counters_catch_up(
    postgres_site: PostgresSite,
    proxy: CuttableProxy,
    start_receiver: Callable[[], ReceiverProcess],
) -> None:
    site = postgres_site
    receiver = start_receiver()
    sent = two_sessions(30_000)
    stream = SteadyStream(receiver.port, from_router(sent), rate=RATE)
    stream.start()
    try:
        wait_until(lambda: len(site.session_counts()) == 2, 10, "session rows")
        assert proxy.carried > 0, "the receiver's database connection bypassed the proxy"

        proxy.cut()
        try:
            cut_at, cut_since = stream.sent, time.monotonic()
            # A commit already on its way when the cut came may still land: look after it.
            time.sleep(0.5)
            frozen = site.session_counts()
            time.sleep(OUTAGE - 0.5)
            assert site.session_counts() == frozen, "a counter was written through the cut"
            cut_for = time.monotonic() - cut_since
            during = stream.sent - cut_at
        finally:
            proxy.restore()
        stream.wait_for(stream.sent + 500)
    finally:
        total = stream.finish()
    assert stream.errors == 0
    assert during > 0.9 * RATE * cut_for, "packets did not keep flowing through the outage"
    # The outage was real for the receiver: it tried the database while it was gone.
    assert proxy.turned_away > 0, "the receiver did not try to reconnect during the cut"
    assert "database write failed" in receiver.log(), receiver.log()

    def all_counted() -> bool:
        counts = site.session_counts()
        return sum(packets for packets, _ in counts.values()) == total

    # Written while the receiver runs, not only at its exit.
    wait_until(all_counted, 10, "the counters kept through the outage written")
    assert receiver.process.poll() is None, "the receiver exited on its own"
    status, _ = receiver.terminate()
    assert status == 0, receiver.log()

    assert_all_stored_and_counted(site, sent[:total])
    assert site.value("SELECT datagrams FROM intercepts_receiverprocess") == total
    assert_rows_close_every_file(site)
    print(
        f"outage {cut_for:.1f} s, {during} datagrams meanwhile; the proxy carried "
        f"{proxy.carried} connections, severed {proxy.severed}, turned away {proxy.turned_away}"
    )
