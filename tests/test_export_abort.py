"""A streamed export that fails mid-stream ends its response at once under ``manage.py
serve``: the connection is aborted (a chunked body without its terminating chunk), the
client does not wait on an open connection, and the Export record says FAILED and why.

Found before: Daphne answered the application's exception with its 500 page, which
raised once the response had started; the connection stayed open with no further byte
(a client waited 14 minutes) and Daphne's application checker stopped for good."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_helpers import ServedProduct

PACKET = 64_000
PACKETS = 1_200  # about 77 MB in four files

# In `manage.py shell` of the served product: a stored session of four files, an analyst
# with an API token; prints the session, the token and the newest file's path.
RECORDS = f"""
from pathlib import Path
from django.conf import settings
from rest_framework.authtoken.models import Token
from jmirror_web.intercepts.access import Role
from tests.factories import assign, make_user
from tests.jmirror_web.exports.evidence import SECOND, stored_session, t0

payloads = [bytes([0x45]) + bytes({PACKET - 1})] * {PACKETS}
stored = stored_session(
    Path(settings.DATA_DIR), count={PACKETS}, rotate_seconds=300,
    start_ns=t0() - 3 * 3600 * SECOND, payloads=payloads,
)
user = make_user(Role.ANALYST)
assign(user, stored.case)
print(stored.session.pk, Token.objects.create(user=user).key, stored.files[0].path)
"""


@pytest.fixture
def product(tmp_path: Path) -> Iterator[ServedProduct]:
    served = ServedProduct(tmp_path / "data")
    try:
        served.start()
        yield served
    finally:
        served.stop()


def test_an_export_failing_mid_stream_is_aborted_at_once_and_recorded(
    product: ServedProduct, tmp_path: Path
) -> None:
    session_id, token, newest = product.shell(RECORDS, timeout=120).split()
    request = (
        f"GET /api/sessions/{session_id}/pcap?format=pcap HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Token {token}\r\n\r\n"
    ).encode()
    received = b""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        # A guard against the hang this test is about, not a measure: far longer than
        # the rest of the download takes.
        client.settimeout(60)
        client.connect(("127.0.0.1", product.http_port))
        client.sendall(request)
        while b"\r\n\r\n" not in received:
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
        head, _, received = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"chunked" in head.lower()
        export_id = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-export-id:")
        ).decode()
        while len(received) < 2**20:
            chunk = client.recv(65536)
            assert chunk
            received += chunk
        # The server waits for this client (backpressure): the newest file, read last,
        # is not open yet. It goes missing.
        (tmp_path / "data" / newest).unlink()
        reset = False
        try:
            while chunk := client.recv(1 << 20):
                received += chunk
        except ConnectionResetError:
            reset = True
    assert not received.endswith(b"0\r\n\r\n"), "the body ended as if complete"
    assert reset or not received.endswith(b"\r\n0\r\n\r\n")
    manifest_request = urllib.request.Request(  # noqa: S310  (http, built above)
        f"{product.base}/api/exports/{export_id}",
        headers={"Authorization": f"Token {token}"},
    )
    with urllib.request.urlopen(manifest_request, timeout=30) as response:  # noqa: S310
        manifest = json.load(response)
    assert manifest["state"] == "failed"
    assert Path(newest).name in manifest["error"]
    assert "missing" in manifest["error"]
