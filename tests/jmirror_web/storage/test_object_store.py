"""The object store client against a real S3 server (SeaweedFS): uploads carry the
file's SHA-256 and the store refuses a body that does not match; Object Lock retention
and legal hold refuse deletion; ranged reads stream the object back."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jmirror_web import object_store
from jmirror_web.object_store import (
    ObjectDeleteRefused,
    StorageConfig,
    StorageError,
    StorageUrlError,
    parse_storage_url,
)


def _file(tmp_path: Path, size: int, name: str = "f.pcap") -> tuple[Path, str]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("s3://evidence", ("evidence", "")),
        ("s3://evidence/site-a/", ("evidence", "site-a")),
        ("s3://my.bucket-1/a/b", ("my.bucket-1", "a/b")),
    ],
)
def test_storage_url_parses(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_storage_url(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://evidence",
        "s3://key:secret@evidence",
        "s3://Evidence",
        "s3://ab",
        "s3://evidence/a//b",
        "s3://evidence/../x",
        "s3://evidence?x=1",
        "s3://" + "a" * 64,
    ],
)
def test_storage_url_refuses(text: str) -> None:
    with pytest.raises(StorageUrlError):
        parse_storage_url(text)


def test_credentials_in_the_url_are_not_echoed() -> None:
    with pytest.raises(StorageUrlError) as refused:
        parse_storage_url("s3://AKIAEXAMPLE:topsecret@evidence")
    assert "topsecret" not in str(refused.value)


@pytest.mark.django_db
def test_upload_with_checksum_retention_and_ranged_read(
    object_storage: object_store.ObjectStore, tmp_path: Path
) -> None:
    path, sha256 = _file(tmp_path, 3 * 2**20 + 17)
    until = datetime.now(UTC) + timedelta(days=1)
    stored = object_storage.upload(path, "node-a/sessions/x/f.pcap", sha256, retain_until=until)
    assert stored.version
    facts = object_storage.facts(stored)
    assert facts.size == path.stat().st_size
    assert facts.checksum_sha256 == object_store.sha256_checksum(sha256)
    assert facts.lock_mode == "COMPLIANCE"
    assert object_storage.sha256(stored) == sha256
    data = path.read_bytes()
    with object_storage.open(stored, start=2**20 + 5) as reader:
        assert reader.read(100) == data[2**20 + 5 : 2**20 + 105]
        reader.seek(len(data) - 10)
        assert reader.read() == data[-10:]
        assert reader.read(5) == b""
    with pytest.raises(ObjectDeleteRefused):
        object_storage.delete(stored)
    assert object_storage.exists(stored)


@pytest.mark.django_db
def test_a_body_that_does_not_match_its_checksum_is_refused(
    object_storage: object_store.ObjectStore, tmp_path: Path
) -> None:
    path, _sha256 = _file(tmp_path, 4096)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(StorageError, match="upload of"):
        object_storage.upload(path, "k/f.pcap", wrong)


@pytest.mark.django_db
def test_multipart_upload_verifies_the_whole_file(
    object_storage: object_store.ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_store, "MULTIPART_THRESHOLD", 2**20)
    monkeypatch.setattr(object_store, "PART_BYTES", 5 * 2**20)
    path, sha256 = _file(tmp_path, 11 * 2**20 + 3)
    stored = object_storage.upload(path, "k/big.pcap", sha256)
    assert object_storage.sha256(stored) == sha256
    with pytest.raises(StorageError, match="not the recorded"):
        object_storage.upload(path, "k/big2.pcap", hashlib.sha256(b"x").hexdigest())
    assert not object_storage.exists(object_store.StoredObject(stored.bucket, "k/big2.pcap", ""))


@pytest.mark.django_db
def test_legal_hold_refuses_deletion_until_lifted(
    object_storage: object_store.ObjectStore, tmp_path: Path
) -> None:
    path, sha256 = _file(tmp_path, 1000)
    stored = object_storage.upload(path, "k/held.pcap", sha256, legal_hold=True)
    assert object_storage.facts(stored, legal_hold=True).legal_hold is True
    with pytest.raises(ObjectDeleteRefused):
        object_storage.delete(stored)
    object_storage.set_legal_hold(stored, False)
    object_storage.delete(stored)
    assert not object_storage.exists(stored)


@pytest.mark.django_db
def test_check_reports_object_lock(
    object_storage: object_store.ObjectStore, s3_server: Any
) -> None:
    assert object_storage.check().object_lock
    plain = s3_server.make_bucket(object_lock=False)
    other = object_store.connect(StorageConfig(plain, "", endpoint=s3_server.endpoint))
    assert not other.check().object_lock


def test_unreachable_store_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = object_store.connect(
        StorageConfig("evidence", "", endpoint="http://127.0.0.1:9"), timeout=1, attempts=1
    )
    with pytest.raises(StorageError) as failed:
        store.check()
    text = str(failed.value)
    assert "\n" not in text
    assert "s3://evidence at http://127.0.0.1:9" in text
    assert "y" not in text.split("(")[0] or "AWS_SECRET" not in text


@pytest.mark.django_db
def test_reads_and_seeks_forward_and_back_give_the_objects_bytes(
    object_storage: object_store.ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_store, "READ_RANGE_BYTES", 4096)
    path, sha256 = _file(tmp_path, 3 * 4096 + 100)
    data = path.read_bytes()
    stored = object_storage.upload(path, "k/seek.pcap", sha256)
    with object_storage.open(stored) as reader:
        assert reader.read(10) == data[:10]
        assert reader.seek(1000, 1) == 1010  # forward inside the range being read
        assert reader.read(10) == data[1010:1020]
        assert reader.seek(5000) == 5000  # past the range: a new request
        assert reader.read(4) == data[5000:5004]
        assert reader.seek(3) == 3  # back
        assert reader.read(5) == data[3:8]
        assert reader.seek(-4, 2) == len(data) - 4
        assert reader.read() == data[-4:]
        with pytest.raises(ValueError, match="negative"):
            reader.seek(-1)


@pytest.mark.django_db
def test_a_readers_first_request_is_short_and_the_next_ones_long(
    object_storage: object_store.ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_store, "READ_RANGE_BYTES", 8192)
    monkeypatch.setattr(object_store, "FIRST_RANGE_BYTES", 1024)
    path, sha256 = _file(tmp_path, 3 * 8192 + 100)
    data = path.read_bytes()
    stored = object_storage.upload(path, "k/ranges.pcap", sha256)
    asked: list[tuple[int, int]] = []
    get_range = object_storage.get_range

    def spy(stored: object_store.StoredObject, start: int, end: int) -> Any:
        asked.append((start, end))
        return get_range(stored, start, end)

    monkeypatch.setattr(object_storage, "get_range", spy)
    with object_storage.open(stored) as reader:
        assert reader.read(24) == data[:24]  # a header: one short request
        assert asked == [(0, 1023)]
        assert reader.read() == data[24:]
    assert asked[1:] == [(1024, 9215), (9216, 17407), (17408, len(data) - 1)]
