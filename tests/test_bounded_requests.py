"""Request bodies over the product's largest accepted size are refused by the served
product (``manage.py serve``) while they arrive, before Twisted stores them anywhere
(jmirror_web.bounded_requests), and the server goes on serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_helpers import ServedProduct

# JMIRROR_VERIFY_MAX_MB=1: the cap is then DATA_UPLOAD_MAX_MEMORY_SIZE, 2,621,440 bytes.
CAP = 2_621_440


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProduct]:
    served = ServedProduct(Path(tmp_path_factory.mktemp("bounded")) / "data")
    served.env["JMIRROR_VERIFY_MAX_MB"] = "1"
    try:
        served.start()
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


def test_a_declared_length_over_the_cap_is_refused_before_the_body(product: ServedProduct):
    with _connect(product) as client:
        client.sendall(
            b"POST /verify/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Expect: 100-continue\r\n"
            b"Content-Length: 10737418240\r\n\r\n"
        )
        # Not a byte of the 10 GiB is sent: the answer comes from the headers alone.
        answer = _read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer
    assert f"larger than {CAP} bytes".encode() in answer


def test_a_chunked_body_is_cut_off_once_past_the_cap(product: ServedProduct):
    with _connect(product) as client:
        client.sendall(
            b"POST /verify/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 65536
        sent = 0
        try:
            # Twice the cap at most: the server must answer and close before the end.
            while sent < 2 * CAP:
                client.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except (ConnectionResetError, BrokenPipeError):
            pass
        answer = _read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_a_body_under_the_cap_reaches_the_application(product: ServedProduct):
    body = b"a=" + b"b" * 100_000
    with _connect(product) as client:
        client.sendall(
            b"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = _read_until_closed(client)
    # Django answered (no CSRF token: 403), so the body went through.
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    # And the refusals above left the server serving.
    with _connect(product) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(client).startswith(b"HTTP/1.1 200 ")
