"""The verify page takes one file: a form with more file parts than Django accepts
(``DATA_UPLOAD_MAX_NUMBER_FILES``), or a second file, is refused with a clear 400; and
the form hashed as it streams in (:class:`StreamedVerifyUpload`, which the server uses)
gives the file's hash and keeps only the small fields."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from jmirror_web.exports.verification import (
    FORM_FIELD_BYTES_MAX,
    FORM_FIELDS_MAX,
    MALFORMED,
    ONE_FILE,
    StreamedVerifyUpload,
)


@pytest.mark.django_db
@pytest.mark.parametrize("count", [2, 11])
def test_more_than_one_file_is_a_clear_400(client: Client, analyst: User, count: int) -> None:
    client.force_login(analyst)
    files = [SimpleUploadedFile(f"part{n}.pcap", b"x" * 10) for n in range(count)]
    response = client.post(reverse("exports:verify"), {"file": files})
    assert response.status_code == 400
    assert "Send one file at a time." in response.content.decode()


# The verify form hashed as it streams in (what manage.py serve does) ---------------------

BOUNDARY = b"jmirrorboundary"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    body = b""
    for name, file_name, value in parts:
        disposition = f'form-data; name="{name}"'
        if file_name is not None:
            disposition += f'; filename="{file_name}"'
        body += b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (
            BOUNDARY,
            disposition.encode(),
            value,
        )
    return body + b"--%s--\r\n" % BOUNDARY


def streamed(body: bytes, piece: int, limit: int = 1 << 30) -> StreamedVerifyUpload:
    upload = StreamedVerifyUpload(BOUNDARY, limit)
    for start in range(0, len(body), piece):
        upload.feed(body[start : start + piece])
    upload.finish()
    return upload


@pytest.mark.parametrize("piece", [1, 7, 65536])
def test_a_streamed_form_gives_the_file_hash_and_the_other_fields(piece: int) -> None:
    data = bytes(range(256)) * 40 + b"\r\n--jmirrorboundar"  # almost a boundary, inside
    upload = streamed(
        form(("csrfmiddlewaretoken", None, b"t" * 32), ("file", "e.pcap", data)), piece
    )
    assert upload.outcome() == {
        "file": {
            "field": "file",
            "name": "e.pcap",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    }
    assert upload.fields == [("csrfmiddlewaretoken", "t" * 32)]


def test_a_second_streamed_file_is_refused() -> None:
    upload = streamed(form(("file", "a", b"1"), ("file", "b", b"2")), 65536)
    assert upload.outcome() == {"error": ONE_FILE}


@pytest.mark.parametrize(
    "body",
    [
        b"not multipart at all",
        form(("file", "a", b"1"))[:-10],  # cut short
        form(*[(f"f{n}", None, b"v") for n in range(FORM_FIELDS_MAX + 1)]),
        form(("sha256", None, b"a" * (FORM_FIELD_BYTES_MAX + 1))),
    ],
)
def test_a_malformed_or_oversized_streamed_form_is_refused(body: bytes) -> None:
    assert streamed(body, 1000).outcome() == {"error": MALFORMED}


def test_a_streamed_file_over_the_limit_is_refused() -> None:
    upload = streamed(form(("file", "a", b"x" * 2000)), 100, limit=1000)
    assert upload.too_large
    assert "larger than" in upload.outcome()["error"]
