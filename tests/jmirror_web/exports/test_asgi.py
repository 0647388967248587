"""A download through the real ASGI application (what daphne runs): the body arrives in
several chunks as it is produced, not gathered in memory first, and the Export row is
finished when the stream ends, or marked aborted when the client goes away."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from django.urls import reverse

from jmirror_web.asgi import application
from jmirror_web.audit.models import AuditEvent
from jmirror_web.exports.models import Export
from jmirror_web.exports.request import CHUNK_BYTES, SourceError
from jmirror_web.intercepts.access import Role
from receiver.store import LINKTYPE_RAW
from tests.factories import assign, make_user
from tests.jmirror_web.exports.evidence import Stored, frames_of, stored_session

pytestmark = pytest.mark.django_db(transaction=True)

PACKETS = 3000  # about 3 MB: several engine chunks


@pytest.fixture(autouse=True)
async def _close_thread_connections() -> AsyncIterator[None]:
    yield
    # The application's database work ran in asgiref's thread for sync code: its
    # connection is closed there, or the test database cannot be dropped after the run.
    await sync_to_async(connections.close_all)()


@pytest.fixture
def big(data_dir: Path) -> Stored:
    payloads = [bytes([0x45]) + i.to_bytes(4, "big") + bytes(995) for i in range(PACKETS)]
    return stored_session(data_dir, count=PACKETS, rotate_seconds=600, payloads=payloads)


@pytest.fixture
def cookie(big: Stored) -> str:
    user: User = make_user(Role.ANALYST)
    assign(user, big.case)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def scope(path: str, query: str, cookie: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def test_the_download_streams_in_chunks_and_completes_its_record(
    big: Stored, cookie: str
) -> None:
    path = reverse("exports:session", args=[big.session.pk])
    communicator = ApplicationCommunicator(application, scope(path, "format=pcap", cookie))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(timeout=30)
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"Content-Type"] == b"application/vnd.tcpdump.pcap"
    chunks: list[bytes] = []
    while True:
        message = await communicator.receive_output(timeout=30)
        assert message["type"] == "http.response.body"
        if not message.get("more_body"):
            assert message.get("body", b"") == b""
            break
        chunks.append(message["body"])
    await communicator.wait(timeout=30)

    data = b"".join(chunks)
    assert len(data) > 2 * CHUNK_BYTES
    assert len(chunks) >= 3
    assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES
    assert frames_of(data) == [(t, LINKTYPE_RAW, d) for t, d in big.frames]
    export = await Export.objects.aget()
    assert export.state == Export.State.COMPLETE
    assert export.sha256 == hashlib.sha256(data).hexdigest()
    assert export.packets == PACKETS
    assert headers[b"X-Export-Id"] == str(export.pk).encode()
    assert await AuditEvent.objects.filter(action="export.complete").acount() == 1


async def test_a_client_that_disconnects_leaves_an_aborted_record(big: Stored, cookie: str) -> None:
    path = reverse("exports:session", args=[big.session.pk])
    communicator = ApplicationCommunicator(application, scope(path, "format=pcapng", cookie))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    assert (await communicator.receive_output(timeout=30))["status"] == 200
    first = await communicator.receive_output(timeout=30)
    assert first["more_body"]
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=30)

    export = await Export.objects.aget()
    assert export.state == Export.State.ABORTED
    assert 0 < export.bytes_sent < export.size + 4 * CHUNK_BYTES
    assert export.sha256 == ""
    aborted = await sync_to_async(list)(AuditEvent.objects.filter(action="export.aborted"))
    assert len(aborted) == 1
    assert aborted[0].details["bytes_sent"] == export.bytes_sent


async def body_until_end(communicator: ApplicationCommunicator) -> list[bytes]:
    """The body's chunks up to its last message, which must be empty (the end)."""
    chunks: list[bytes] = []
    while True:
        message = await communicator.receive_output(timeout=30)
        if not message.get("more_body"):
            assert message.get("body", b"") == b""
            return chunks
        chunks.append(message["body"])


async def test_files_uploaded_and_removed_mid_download_are_read_from_the_store(
    big: Stored, cookie: str, data_dir: Path, object_storage: Any
) -> None:
    from tests.jmirror_web.exports.test_store_reading import remove_local, upload

    path = reverse("exports:session", args=[big.session.pk])
    communicator = ApplicationCommunicator(application, scope(path, "format=pcap", cookie))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    assert (await communicator.receive_output(timeout=30))["status"] == 200
    first = await communicator.receive_output(timeout=30)

    def upload_and_remove_all() -> None:
        for capture in big.files:
            upload(object_storage, capture, data_dir)
            remove_local(capture, data_dir)

    # The file being read is open; the others are opened later, from the store, their
    # rows read again on the request's own thread.
    await sync_to_async(upload_and_remove_all)()
    chunks = await body_until_end(communicator)
    await communicator.wait(timeout=30)
    data = first["body"] + b"".join(chunks)
    assert frames_of(data) == [(t, LINKTYPE_RAW, d) for t, d in big.frames]
    export = await Export.objects.aget()
    assert export.state == Export.State.COMPLETE
    assert export.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_file_gone_mid_download_fails_the_record_and_never_ends_the_body(
    big: Stored, cookie: str, data_dir: Path
) -> None:
    path = reverse("exports:session", args=[big.session.pk])
    communicator = ApplicationCommunicator(application, scope(path, "format=pcap", cookie))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    assert (await communicator.receive_output(timeout=30))["status"] == 200
    assert (await communicator.receive_output(timeout=30))["more_body"]
    newest = big.files[0]  # read last: not open yet
    (data_dir / newest.path).unlink()
    # The application raises (for the server to abort the connection)...
    with pytest.raises(SourceError, match="is missing"):
        await communicator.wait(timeout=30)
    # ...having sent no final message: the body never ends as if complete.
    sent = []
    while not communicator.output_queue.empty():
        sent.append(communicator.output_queue.get_nowait())
    assert sent
    assert all(message.get("more_body") for message in sent)
    export = await Export.objects.aget()
    assert export.state == Export.State.FAILED
    assert f"{Path(newest.path).name} is missing" in export.error
    assert await AuditEvent.objects.filter(action="export.failed").acount() == 1
