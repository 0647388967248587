"""Request bodies over the request's cap (by route and by who asks) are refused through
the real ASGI application (jmirror_web.server.body_limit) before Django spools them: by their
Content-Length before anything is read, or, without one, as soon as the bytes received
pass the cap."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator
from django.db import connections
from django.test import Client
from django.urls import reverse

from jmirror_web.asgi import application
from jmirror_web.intercepts.access import Role
from jmirror_web.server.body_limit import MULTIPART_ENVELOPE, largest_body
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024
CSRF = "c" * 32  # an unmasked token, as the cookie carries it
BOUNDARY = "jmirrorboundary"
REFUSAL = (
    f"The request body is larger than {MIB + MULTIPART_ENVELOPE} bytes, "
    "the most this server accepts.\n"
).encode()


@pytest.fixture(autouse=True)
def _one_mebibyte_cap(settings: Any) -> None:
    settings.JMIRROR_VERIFY_MAX_MB = 1
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000


@pytest.fixture(autouse=True)
async def _close_thread_connections() -> AsyncIterator[None]:
    yield
    # The application's database work ran in asgiref's thread for sync code.
    await sync_to_async(connections.close_all)()


@pytest.fixture
def cookie() -> str:
    client = Client()
    client.force_login(make_user(Role.ANALYST))
    return f"sessionid={client.cookies['sessionid'].value}; csrftoken={CSRF}"


def post(cookie: str, headers: list[tuple[bytes, bytes]]) -> ApplicationCommunicator:
    path = reverse("exports:verify")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    return ApplicationCommunicator(application, scope)


def multipart(data: bytes) -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n'
            f"{CSRF}\r\n"
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="evidence.pcap"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


async def response(communicator: ApplicationCommunicator) -> tuple[int, bytes]:
    start = await communicator.receive_output(timeout=30)
    assert start["type"] == "http.response.start"
    content = b""
    while True:
        message = await communicator.receive_output(timeout=30)
        content += message.get("body", b"")
        if not message.get("more_body", False):
            return start["status"], content


def test_the_cap_is_the_verify_limit_with_room_for_the_envelope_or_the_form_limit(
    settings: Any,
) -> None:
    assert largest_body() == MIB + MULTIPART_ENVELOPE
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * MIB
    assert largest_body() == 5 * MIB


async def test_an_over_limit_content_length_is_refused_before_any_body_is_read(
    cookie: str,
) -> None:
    communicator = post(
        cookie,
        [
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(10 * 2**30).encode()),
        ],
    )
    # Not a byte of the body is sent: the answer comes from the declared length alone.
    assert await response(communicator) == (413, REFUSAL)
    await communicator.wait(timeout=5)


async def test_a_body_without_a_length_is_cut_off_once_over_the_limit(cookie: str) -> None:
    communicator = post(
        cookie, [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    )
    sent = 0
    while sent <= MIB + MULTIPART_ENVELOPE:
        await communicator.send_input(
            {"type": "http.request", "body": bytes(256 * 1024), "more_body": True}
        )
        sent += 256 * 1024
    assert await response(communicator) == (413, REFUSAL)
    await communicator.wait(timeout=5)


async def test_a_verify_upload_under_the_limit_is_hashed(cookie: str) -> None:
    data = b"y" * MIB
    upload = multipart(data)
    communicator = post(
        cookie,
        [
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(upload)).encode()),
        ],
    )
    await communicator.send_input({"type": "http.request", "body": upload, "more_body": False})
    status, content = await response(communicator)
    assert status == 200
    assert hashlib.sha256(data).hexdigest() in content.decode()
    await communicator.wait(timeout=5)


@pytest.mark.parametrize(
    ("signed_in", "content_type", "limit"),
    [
        # Not signed in (no cookie, or one of no live session): a few KiB, on any route.
        (False, "multipart/form-data; boundary=b", 8192),
        # Signed in, but not a form the verify page hashes: Django's limit.
        (True, "application/octet-stream", 100_000),
    ],
)
async def test_the_cap_depends_on_who_asks_and_what(
    cookie: str, signed_in: bool, content_type: str, limit: int
) -> None:
    sent = cookie if signed_in else "sessionid=nosuchsession; csrftoken=" + CSRF
    communicator = post(
        sent,
        [(b"content-type", content_type.encode()), (b"content-length", str(limit + 1).encode())],
    )
    status, content = await response(communicator)
    assert status == 413
    assert f"larger than {limit} bytes".encode() in content
    await communicator.wait(timeout=5)
