"""Request bodies against the served product (``manage.py serve``,
jmirror_web.server.bounded_requests): the cap is decided from the head, by route and by who asks;
a refused body is neither kept in memory nor written to disk; a signed-in user's verify
upload is hashed as it streams; slow bodies are cut; an over-long request line gets 414
and an oversized websocket message 1009."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e_helpers import ServedProduct

MIB = 1024 * 1024
GIB = 1024 * MIB
ANONYMOUS_CAP = 8192  # JMIRROR_ANONYMOUS_BODY_MAX_BYTES's default
SIGNED_IN_CAP = 2_621_440  # DATA_UPLOAD_MAX_MEMORY_SIZE
BODY_TIMEOUT = 3  # JMIRROR_BODY_TIMEOUT_SECONDS, short for the test
# The signed-in verify upload: 1 GiB (about 4 s on loopback here);
# JMIRROR_VERIFY_UPLOAD_BYTES sets another size (whole MiB).
UPLOAD = int(os.environ.get("JMIRROR_VERIFY_UPLOAD_BYTES", GIB))
CSRF = "c" * 32  # an unmasked token, as the cookie carries it
BOUNDARY = b"jmirrorboundary"

USER = """
from django.contrib.auth.models import User
from django.test import Client
user = User.objects.create_user("uploader", password="a long passphrase 77")
client = Client()
client.force_login(user)
from rest_framework.authtoken.models import Token
print(client.cookies["sessionid"].value, Token.objects.create(user=user).key)
"""


class Served(ServedProduct):
    temp: Path
    session: str
    token: str


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = Path(tmp_path_factory.mktemp("bounded"))
    served = Served(root / "data")
    served.temp = root / "tmp"
    served.temp.mkdir()
    served.env["TMPDIR"] = str(served.temp)  # where Twisted or Django would spool a body
    served.env["JMIRROR_BODY_TIMEOUT_SECONDS"] = str(BODY_TIMEOUT)
    served.env["JMIRROR_VERIFY_MAX_MB"] = str(UPLOAD // MIB + 1)
    try:
        served.start()
        served.session, served.token = served.shell(USER).split()
        yield served
    finally:
        served.stop()


def _connect(product: ServedProduct) -> socket.socket:
    return socket.create_connection(("127.0.0.1", product.http_port), timeout=20)


def _read_until_closed(client: socket.socket, limit: float = 20.0) -> bytes:
    received = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = client.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        received += chunk
    return received


def rss(product: ServedProduct) -> int:
    assert product.process is not None
    status = Path(f"/proc/{product.process.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match[1]) * 1024


class PeakRSS:
    """The server's largest resident size while the block runs, sampled every 20 ms."""

    def __init__(self, product: ServedProduct) -> None:
        self.product = product
        self.before = rss(product)
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss(self.product))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.product))

    @property
    def growth(self) -> int:
        return self.peak - self.before


def files_under(*roots: Path) -> dict[Path, int]:
    """Every file and its size, but the database's own (the audit log and sessions grow)."""
    return {
        path: path.stat().st_size
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and ".sqlite3" not in path.name
    }


def head(path: str, headers: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


@pytest.mark.parametrize("path", ["/healthz", "/accounts/login/", "/verify/", "/api/cases/"])
def test_a_gigabyte_declared_by_an_anonymous_client_is_refused_at_its_head(
    product: Served, path: str
) -> None:
    disk = files_under(product.temp, Path(product.env["JMIRROR_DATA_DIR"]))
    with PeakRSS(product) as memory, _connect(product) as client:
        client.sendall(
            head(path, f"Content-Type: application/octet-stream\r\nContent-Length: {GIB}\r\n")
        )
        sent_head = time.monotonic()
        client.settimeout(1.0)
        first = client.recv(65536)
        answered = time.monotonic() - sent_head
        # The client goes on sending: what arrives is dropped, never kept.
        try:
            for _ in range(64):
                client.sendall(b"x" * MIB)
        except OSError:
            pass
        answer = first + _read_until_closed(client, 5)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert f"larger than {ANONYMOUS_CAP} bytes".encode() in answer
    print(f"anonymous 1 GiB to {path}: 413 after {answered:.3f} s, RSS +{memory.growth} B")
    assert answered < 1.0
    assert memory.growth < 20 * MIB, memory.growth
    assert files_under(product.temp, Path(product.env["JMIRROR_DATA_DIR"])) == disk


def test_a_chunked_anonymous_body_is_cut_off_past_the_anonymous_cap(product: Served) -> None:
    disk = files_under(product.temp)
    piece = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    sent = 0
    first = b""
    with PeakRSS(product) as memory, _connect(product) as client:
        client.sendall(head("/healthz", "Transfer-Encoding: chunked\r\n"))
        sent_head = time.monotonic()
        client.setblocking(False)
        # A gigabyte at most, sent while the server reads; its answer ends the sending.
        while sent < GIB and not first and time.monotonic() - sent_head < 10:
            readable, writable, _ = select.select([client], [client], [], 1.0)
            if readable:
                first = client.recv(65536)
            elif writable:
                with contextlib.suppress(BlockingIOError):
                    sent += client.send(piece)
        answered = time.monotonic() - sent_head
        client.setblocking(True)
        answer = first + _read_until_closed(client, 5)
    print(f"anonymous chunked: {sent} B sent, 413 after {answered:.3f} s, RSS +{memory.growth} B")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert sent < 64 * MIB
    assert answered < 1.0
    assert memory.growth < 20 * MIB, memory.growth
    assert files_under(product.temp) == disk


def test_a_cookie_of_no_live_session_is_anonymous(product: Served) -> None:
    with _connect(product) as client:
        client.sendall(
            head(
                "/verify/",
                f"Cookie: sessionid=nosuchsession0000000000000000000\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {GIB}\r\n",
            )
        )
        answer = _read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert f"larger than {ANONYMOUS_CAP} bytes".encode() in answer


def test_a_signed_in_user_gets_django_limits_off_the_verify_page(product: Served) -> None:
    cookie = f"Cookie: sessionid={product.session}\r\n"
    with _connect(product) as client:
        client.sendall(head("/healthz", f"{cookie}Content-Length: {SIGNED_IN_CAP + 1}\r\n"))
        refused = _read_until_closed(client)
    assert refused.startswith(b"HTTP/1.1 413 "), refused[:200]
    assert f"larger than {SIGNED_IN_CAP} bytes".encode() in refused
    body = b"a=" + b"b" * 100_000
    with _connect(product) as client:
        client.sendall(
            head(
                "/accounts/login/",
                f"{cookie}Connection: close\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n",
            )
            + body
        )
        answer = _read_until_closed(client)
    # Django answered (no CSRF token: 403), so the body went through.
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]


def test_an_api_token_gets_django_limits_on_the_api(product: Served) -> None:
    with _connect(product) as client:
        client.sendall(
            head(
                "/api/cases/",
                f"Authorization: Token {product.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {SIGNED_IN_CAP + 1}\r\n",
            )
        )
        answer = _read_until_closed(client)
    assert f"larger than {SIGNED_IN_CAP} bytes".encode() in answer
    body = b'{"reference": "' + b"x" * 20_000 + b'"}'
    with _connect(product) as client:
        client.sendall(
            head(
                "/api/cases/",
                f"Authorization: Token {product.token}\r\nContent-Type: application/json\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n",
            )
            + body
        )
        answer = _read_until_closed(client)
    # The API answered (a user of no role may not create cases), so the body went through.
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]


def test_continue_is_sent_once_the_signed_in_body_is_allowed(product: Served) -> None:
    body = b"a=" + b"b" * 20_000
    with _connect(product) as client:
        client.sendall(
            head(
                "/accounts/login/",
                f"Cookie: sessionid={product.session}\r\nExpect: 100-continue\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n",
            )
        )
        assert client.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        client.sendall(body)
        answer = _read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]  # Django's CSRF refusal


def test_a_signed_in_verify_upload_is_hashed_as_it_streams(product: Served) -> None:
    piece = os.urandom(MIB)
    count = UPLOAD // MIB
    digest = hashlib.sha256()
    preamble = (
        b'--%s\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n%s\r\n'
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="big.pcap"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" % (BOUNDARY, CSRF.encode(), BOUNDARY)
    )
    ending = b"\r\n--%s--\r\n" % BOUNDARY
    length = len(preamble) + count * len(piece) + len(ending)
    disk = files_under(product.temp)
    with PeakRSS(product) as memory, _connect(product) as client:
        client.settimeout(120)
        client.sendall(
            head(
                "/verify/",
                f"Cookie: sessionid={product.session}; csrftoken={CSRF}\r\n"
                f"Connection: close\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
                f"Content-Length: {length}\r\n",
            )
            + preamble
        )
        for _ in range(count):
            client.sendall(piece)
            digest.update(piece)
        client.sendall(ending)
        answer = _read_until_closed(client, 120)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert digest.hexdigest().encode() in answer
    assert f"({count * MIB} bytes)".encode() in answer
    print(f"verify upload of {count} MiB: server RSS grew {memory.growth / MIB:.1f} MiB")
    assert memory.growth < 64 * MIB, memory.growth
    assert files_under(product.temp) == disk


def test_a_second_file_streamed_to_the_verify_page_is_a_clear_400(product: Served) -> None:
    body = (
        b"".join(
            b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%d"\r\n\r\nx\r\n'
            % (BOUNDARY, n)
            for n in range(11)
        )
        + b'--%s\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n%s\r\n'
        % (
            BOUNDARY,
            CSRF.encode(),
        )
        + b"--%s--\r\n" % BOUNDARY
    )
    body += b" " * (ANONYMOUS_CAP - len(body) + 1)  # over the anonymous cap: streamed
    with _connect(product) as client:
        client.sendall(
            head(
                "/verify/",
                f"Cookie: sessionid={product.session}; csrftoken={CSRF}\r\nConnection: close\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
                f"Content-Length: {len(body)}\r\n",
            )
            + body
        )
        answer = _read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"Send one file at a time." in answer


def test_a_stalled_body_is_cut_within_the_body_timeout(product: Served) -> None:
    with _connect(product) as client:
        client.sendall(
            head(
                "/accounts/login/",
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n",
            )
            + b"username=a"
        )
        started = time.monotonic()
        answer = _read_until_closed(client, BODY_TIMEOUT + 10)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert took < BODY_TIMEOUT + 2
    assert "its body was too slow" in product.wait_for_line("too slow", 5)


@pytest.mark.parametrize(
    ("stalled", "answer"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"HTTP/1.1 408 "),
        (b"GET /heal", b"HTTP/1.1 408 "),
        (b"", b""),  # nothing asked: closed without an answer
    ],
)
def test_a_stalled_head_is_cut_within_the_body_timeout(
    product: Served, stalled: bytes, answer: bytes
) -> None:
    with _connect(product) as client:
        client.sendall(stalled)
        started = time.monotonic()
        received = _read_until_closed(client, BODY_TIMEOUT + 10)
        took = time.monotonic() - started
    assert received.startswith(answer), received[:200]
    assert bool(received) == bool(answer)
    assert took < BODY_TIMEOUT + 2


def test_a_websocket_outlives_the_head_timeout(product: Served) -> None:
    with connect(
        f"ws://127.0.0.1:{product.http_port}/ws/live/",
        origin=product.base,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={product.session}"},
        open_timeout=10,
    ) as websocket:
        time.sleep(BODY_TIMEOUT + 1.5)
        websocket.send('{"action": "subscribe", "stream": "dashboard"}')
        assert "subscribed" in str(websocket.recv(timeout=10))


def test_a_request_line_over_the_line_limit_gets_414(product: Served) -> None:
    with _connect(product) as client:
        client.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = _read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    with _connect(product) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 20_000)
        answer = _read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_an_oversized_websocket_message_is_closed_with_1009(product: Served) -> None:
    with connect(
        f"ws://127.0.0.1:{product.http_port}/ws/live/",
        origin=product.base,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={product.session}"},
        open_timeout=10,
        max_size=None,
    ) as websocket:
        websocket.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


def test_the_server_still_serves(product: Served) -> None:
    with _connect(product) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(client).startswith(b"HTTP/1.1 200 ")
