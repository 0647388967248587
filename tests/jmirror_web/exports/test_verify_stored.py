"""``verify_files`` and the file checks on objects in the evidence store (a real S3
server, SeaweedFS): the store's own SHA-256 of an object, its bytes re-hashed on request,
an object altered in a bucket without Object Lock reported and alerted, a version
written over an evidence key in a bucket with Object Lock reported as a warning while
the recorded version still verifies, and a store out of reach said so, never taken
for a verified or an altered file."""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from jmirror_web import object_store
from jmirror_web.exports.verification import verify_capture_file
from jmirror_web.intercepts.models import CaptureFile
from jmirror_web.object_store import ObjectStore
from tests.jmirror_web.exports.evidence import Stored, events
from tests.jmirror_web.exports.test_store_reading import remove_local, upload

pytestmark = pytest.mark.django_db


def in_store(
    stored: Stored, store: ObjectStore, data_dir: Path, *, keep_local: bool = False
) -> None:
    for capture in stored.files:
        upload(store, capture, data_dir)
        if not keep_local:
            remove_local(capture, data_dir)


def verify(*args: str) -> str:
    output = StringIO()
    call_command("verify_files", *args, stdout=output)
    return output.getvalue()


def test_stored_objects_verify_by_the_stores_checksum_and_by_rehash(
    stored: Stored, data_dir: Path, object_storage: ObjectStore
) -> None:
    in_store(stored, object_storage, data_dir)
    output = verify()
    assert output.count("ok       ") == 3
    assert "by the store's checksum" in output
    assert "3 files checked, 0 altered or missing" in output
    output = verify("--rehash")
    assert output.count("in the store, re-hashed") == 3
    keys = {event.details["object"]["key"] for event in events("capture_file.verify")}
    assert keys == {each.object_key for each in stored.files}


def test_local_copy_and_object_are_both_checked_while_both_exist(
    stored: Stored, data_dir: Path, object_storage: ObjectStore
) -> None:
    in_store(stored, object_storage, data_dir, keep_local=True)
    check = verify_capture_file(stored.files[0])
    assert check.ok is True
    assert "on disk" in check.detail
    assert "by the store's checksum" in check.detail


def test_an_object_altered_in_a_bucket_without_lock_is_reported_and_alerted(
    client: Client,
    stored: Stored,
    analyst: User,
    data_dir: Path,
    s3_server: Any,
    object_storage: ObjectStore,
    settings: Any,
) -> None:
    bucket = s3_server.make_bucket(object_lock=False)
    settings.STORAGE = object_store.StorageConfig(bucket, "", endpoint=s3_server.endpoint)
    object_store._shared.clear()
    store = object_store.shared(settings.STORAGE)
    in_store(stored, store, data_dir)
    capture = stored.files[1]
    # No versioning: the key now holds other bytes (and no SHA-256 of the upload's).
    store.client.put_object(Bucket=bucket, Key=capture.object_key, Body=b"not the evidence")
    with pytest.raises(CommandError) as failed:
        verify()
    assert failed.value.returncode == 1
    capture.refresh_from_db()
    assert capture.verify_ok is False
    assert "SHA-256 in the store is" in capture.verify_detail
    [failure] = events("capture_file.verify_failed")
    assert failure.object_id == str(capture.pk)
    client.force_login(analyst)
    dashboard = client.get(reverse("home")).content.decode()
    assert f"stored file {capture.path} does not match its recorded SHA-256" in dashboard

    # Overwritten again with a checksum of its own: the store's checksum is compared.
    store.client.put_object(
        Bucket=bucket,
        Key=capture.object_key,
        Body=b"other bytes",
        ChecksumSHA256=object_store.sha256_checksum(hashlib.sha256(b"other bytes").hexdigest()),
    )
    check = verify_capture_file(CaptureFile.objects.get(pk=capture.pk))
    assert check.ok is False
    assert "the store's SHA-256 of the object is" in check.detail


def test_a_version_written_over_a_locked_key_is_a_warning_and_the_record_still_verifies(
    stored: Stored, data_dir: Path, object_storage: ObjectStore
) -> None:
    in_store(stored, object_storage, data_dir)
    capture = stored.files[0]
    object_storage.client.put_object(
        Bucket=object_storage.bucket, Key=capture.object_key, Body=b"written over"
    )
    output = verify("--rehash")
    assert f"ok       {capture.path}" in output
    assert "warning: 1 newer version(s) written over its key" in output
    assert "1 with newer versions" in output
    capture.refresh_from_db()
    assert capture.verify_ok is True
    assert "newer version" in capture.verify_detail


def test_a_multipart_object_is_rehashed_its_store_checksum_being_of_the_parts(
    stored: Stored, data_dir: Path, object_storage: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_store, "MULTIPART_THRESHOLD", 100)
    monkeypatch.setattr(object_store, "PART_BYTES", 5 * 2**20)
    in_store(stored, object_storage, data_dir)
    check = verify_capture_file(stored.files[0])
    assert check.ok is True, check.detail
    assert "in the store, re-hashed" in check.detail


def test_a_store_out_of_reach_leaves_the_result_unchecked_not_altered(
    stored: Stored, data_dir: Path, object_storage: ObjectStore, settings: Any
) -> None:
    in_store(stored, object_storage, data_dir)
    assert verify_capture_file(stored.files[0]).ok is True
    settings.STORAGE = object_store.StorageConfig(
        object_storage.bucket, "", endpoint="http://127.0.0.1:9"
    )
    object_store._shared.clear()
    with pytest.raises(CommandError, match="could not be checked") as failed:
        verify()
    assert failed.value.returncode == 1
    capture = CaptureFile.objects.get(pk=stored.files[0].pk)
    assert capture.verify_ok is True  # the last result stands
    assert not events("capture_file.verify_failed")
