"""Backpressure on streamed responses (jmirror_web.server.flow_control): a large export to a
client that stops reading waits for it instead of piling up in the web process.

The end-to-end test serves the product (``manage.py serve``) with a stored session of
about 320 MB, downloads it through the API with a raw socket that reads nothing for a
few seconds after the headers, and watches the server's resident memory meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daphne.http_protocol import WebRequest

from jmirror_web.server import flow_control
from jmirror_web.server.flow_control import FlowControlServer, ResponseFlow
from tests.e2e_helpers import ServedProduct

PACKET = 64_000  # bytes a packet: few packets for many megabytes, quick to store
PACKETS = 5_000  # about 320 MB
PAUSE = 3.0  # seconds the client reads nothing after the headers
RSS_GROWTH_LIMIT = 64 * 2**20

# Runs in `manage.py shell` of the served product: a stored session written by the
# receiver's PcapStore in the product's data directory, an analyst with an API token.
RECORDS = f"""
from pathlib import Path
from django.conf import settings
from rest_framework.authtoken.models import Token
from jmirror_web.intercepts.access import Role
from tests.factories import assign, make_user
from tests.jmirror_web.exports.evidence import SECOND, stored_session, t0

payloads = [bytes([0x45]) + bytes({PACKET - 1})] * {PACKETS}
stored = stored_session(
    Path(settings.DATA_DIR), count={PACKETS}, rotate_seconds=24 * 3600,
    start_ns=t0() - 3 * 3600 * SECOND, payloads=payloads,
)
user = make_user(Role.ANALYST)
assign(user, stored.case)
print(stored.session.pk, Token.objects.create(user=user).key)
"""


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture
def product(tmp_path: Path) -> Iterator[ServedProduct]:
    served = ServedProduct(tmp_path / "data")
    try:
        served.start()
        yield served
    finally:
        served.stop()


def test_a_download_to_a_client_that_stops_reading_waits_for_it(product: ServedProduct) -> None:
    assert product.process is not None
    session_id, token = product.shell(RECORDS, timeout=120).split()
    request = (
        # HTTP/1.0: the body is sent as it is, up to the close, without chunked encoding.
        f"GET /api/sessions/{session_id}/pcap?format=pcap HTTP/1.0\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Token {token}\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        # A small receive window, so that the kernel does not take much of the body off
        # the server's hands while the client reads nothing.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        client.settimeout(30)
        client.connect(("127.0.0.1", product.http_port))
        client.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = client.recv(4096)
            assert chunk, received
            received += chunk
        head, _, body_start = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), head
        headers = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
        )
        before = resident_bytes(product.process.pid)
        peak = before
        deadline = time.monotonic() + PAUSE
        while time.monotonic() < deadline:
            time.sleep(0.1)
            peak = max(peak, resident_bytes(product.process.pid))

        digest = hashlib.sha256(body_start)
        size = len(body_start)
        while chunk := client.recv(1 << 20):
            digest.update(chunk)
            size += len(chunk)

    assert size > 300 * 10**6
    assert peak - before < RSS_GROWTH_LIMIT, (
        f"the server grew by {(peak - before) / 2**20:.1f} MiB (from {before / 2**20:.1f})"
        f" while the client read nothing of a {size / 2**20:.0f} MiB download"
    )
    manifest_request = urllib.request.Request(  # noqa: S310  (http, built above)
        f"{product.base}/api/exports/{headers['X-Export-Id']}",
        headers={"Authorization": f"Token {token}"},
    )
    with urllib.request.urlopen(manifest_request, timeout=30) as response:  # noqa: S310
        manifest = json.load(response)
    assert manifest["size"] == size
    assert manifest["sha256"] == digest.hexdigest()


# The server's handle_reply with fakes -------------------------------------------------


class FakeChannel:
    """The part of twisted.web.http.HTTPChannel that a request's producer goes through."""

    def __init__(self) -> None:
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is registered")
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class FakeRequest(WebRequest):  # type: ignore[misc]
    """A WebRequest without a connection: writes are recorded, a big one pauses."""

    def __init__(self) -> None:  # no super(): nothing of a real connection is needed
        self.channel: Any = FakeChannel()
        self.producer: Any = None
        self.finished = 0
        self.written: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.channel.unregisterProducer()
        self.producer = None

    def handle_reply(self, message: dict[str, Any]) -> None:
        self.written.append(message.get("body", b""))
        if len(message.get("body", b"")) > 65536 and self.producer is not None:
            self.producer.pauseProducing()  # what the transport does past its mark
        if not message.get("more_body", False):
            self.finished = 1


def server() -> FlowControlServer:
    serving = FlowControlServer.__new__(FlowControlServer)  # no endpoints, no reactor
    serving.connections = {}
    return serving


def connected(serving: FlowControlServer) -> FakeRequest:
    request = FakeRequest()
    serving.connections[request] = {}
    return request


def body(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def test_send_waits_while_the_transport_is_paused_and_goes_on_when_resumed() -> None:
    serving = server()
    request = connected(serving)
    send = asyncio.ensure_future(serving.handle_reply(request, body(bytes(2**20), True)))
    await asyncio.sleep(0.05)
    assert not send.done()
    assert isinstance(request.producer, ResponseFlow)
    request.producer.resumeProducing()
    await asyncio.wait_for(send, 1)
    await serving.handle_reply(request, body(b"end", False))
    assert request.written == [bytes(2**20), b"end"]
    assert request.producer is None
    assert request.channel.producer is None


async def test_a_small_chunk_does_not_wait() -> None:
    serving = server()
    request = connected(serving)
    await asyncio.wait_for(serving.handle_reply(request, body(b"x" * 100, True)), 1)
    assert isinstance(request.producer, ResponseFlow)


async def test_a_lost_connection_stops_the_wait() -> None:
    serving = server()
    request = connected(serving)
    send = asyncio.ensure_future(serving.handle_reply(request, body(bytes(2**20), True)))
    await asyncio.sleep(0.05)
    assert not send.done()
    request.producer.stopProducing()  # the transport's connectionLost, through the channel
    await asyncio.wait_for(send, 1)


async def test_a_connection_gone_without_stop_producing_ends_the_wait_within_a_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flow_control, "DISCONNECT_CHECK_SECONDS", 0.05)
    serving = server()
    request = connected(serving)
    send = asyncio.ensure_future(serving.handle_reply(request, body(bytes(2**20), True)))
    await asyncio.sleep(0.02)
    request.channel = None  # what Request.connectionLost does
    await asyncio.wait_for(send, 1)
    assert request.producer is None


async def test_responses_without_more_body_register_nothing() -> None:
    serving = server()
    request = connected(serving)
    await serving.handle_reply(request, body(bytes(2**20), False))
    assert request.producer is None
    assert request.channel.producer is None
