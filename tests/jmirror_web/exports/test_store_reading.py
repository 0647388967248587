"""Exports read closed files from the evidence store (a real S3 server, SeaweedFS) when
the local copy is gone, and a file's transitions while an export of it streams (rotation
from ``.part`` to the final name, closing, upload, removal of the local copy) never
change what the export sends: each export completes as stored, or fails at once with its
record saying why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jmirror_web import object_store
from jmirror_web.exports.models import Export
from jmirror_web.exports.request import SourceError
from jmirror_web.intercepts.models import CaptureFile
from jmirror_web.object_store import ObjectStore, StoredObject
from receiver.store import LINKTYPE_RAW, PART_SUFFIX
from tests.factories import assign, make_user
from tests.jmirror_web.exports.evidence import (
    Stored,
    body,
    events,
    frames_of,
    sha256,
    stored_session,
)

pytestmark = pytest.mark.django_db


def download(client: Client, stored: Stored, export_format: str = "pcap") -> Any:
    return client.get(
        reverse("exports:session", args=[stored.session.pk]), {"format": export_format}
    )


def upload(store: ObjectStore, capture: CaptureFile, data_dir: Path) -> StoredObject:
    """What the upload queue does: the file into the store with its SHA-256, then the row."""
    node = capture.node or "node-a"
    key = object_store.object_key(store.config, node, capture.path)
    local = data_dir / capture.path
    stored = store.upload(local, key, capture.sha256)
    capture.node = node
    capture.object_bucket, capture.object_key = stored.bucket, stored.key
    capture.object_version = stored.version
    capture.uploaded_at = timezone.now()
    capture.save()
    return stored


def remove_local(capture: CaptureFile, data_dir: Path) -> None:
    (data_dir / capture.path).unlink()
    capture.local_removed_at = timezone.now()
    capture.save(update_fields=["local_removed_at"])


def expected(stored: Stored) -> list[tuple[int, int, bytes]]:
    return [(t, LINKTYPE_RAW, data) for t, data in stored.frames]


@pytest.fixture
def big(data_dir: Path) -> Stored:
    """A session of four files of about 2 MB each: an export of it is several chunks."""
    payloads = [bytes([0x45]) + bytes([i % 251]) * 1399 for i in range(6000)]
    return stored_session(data_dir, count=6000, rotate_seconds=1500, payloads=payloads)


@pytest.fixture
def big_analyst(big: Stored) -> User:
    from jmirror_web.intercepts.access import Role

    user = make_user(Role.ANALYST)
    assign(user, big.case)
    return user


def test_an_export_from_the_store_is_byte_identical_to_one_from_local_files(
    client: Client,
    stored: Stored,
    analyst: User,
    data_dir: Path,
    object_storage: ObjectStore,
) -> None:
    client.force_login(analyst)
    local = body(download(client, stored))
    for capture in stored.files:
        upload(object_storage, capture, data_dir)
        remove_local(capture, data_dir)
    from_store = body(download(client, stored))
    assert from_store == local
    assert frames_of(from_store) == expected(stored)
    last = Export.objects.latest("pk")
    assert last.state == Export.State.COMPLETE
    assert last.sha256 == sha256(from_store)


def test_a_row_read_while_only_its_part_existed_finds_the_file_once_rotated(
    client: Client, stored: Stored, analyst: User, data_dir: Path
) -> None:
    # The session's last file is still being written (.part, its row not closed) when the
    # export is prepared; the receiver rotates it before the export reaches it.
    last = stored.files[0]  # newest first
    final = data_dir / last.path
    final.rename(final.with_name(final.name + PART_SUFFIX))
    CaptureFile.objects.filter(pk=last.pk).update(closed=False, sha256="")
    client.force_login(analyst)
    response = download(client, stored)
    assert response.status_code == 200
    final.with_name(final.name + PART_SUFFIX).rename(final)
    data = body(response)
    assert frames_of(data) == expected(stored)
    assert Export.objects.get().state == Export.State.COMPLETE


def test_a_row_pointing_at_a_missing_object_fails_the_export_saying_why(
    client: Client, stored: Stored, analyst: User, data_dir: Path, object_storage: ObjectStore
) -> None:
    capture = stored.files[1]
    upload(object_storage, capture, data_dir)
    remove_local(capture, data_dir)
    CaptureFile.objects.filter(pk=capture.pk).update(object_key="node-a/sessions/nothing.pcap")
    client.force_login(analyst)
    response = download(client, stored)
    # Found before the first byte: the download is refused, the refusal audited.
    assert response.status_code != 200
    assert Path(capture.path).name in response.content.decode()
    assert "cannot be read" in response.content.decode()
    assert not Export.objects.exists()


def test_a_store_out_of_reach_fails_the_export_saying_why(
    client: Client,
    stored: Stored,
    analyst: User,
    data_dir: Path,
    object_storage: ObjectStore,
    settings: Any,
) -> None:
    for capture in stored.files:
        upload(object_storage, capture, data_dir)
        remove_local(capture, data_dir)
    # Nothing listens on port 9 (discard): the store cannot be reached.
    settings.STORAGE = object_store.StorageConfig(
        object_storage.bucket, "", endpoint="http://127.0.0.1:9"
    )
    object_store._shared.clear()
    client.force_login(analyst)
    response = download(client, stored)
    assert response.status_code != 200
    assert "cannot be read" in response.content.decode()
    assert "127.0.0.1:9" in response.content.decode()


def test_an_object_deleted_mid_export_fails_it_at_once_with_its_record_saying_why(
    client: Client,
    big: Stored,
    big_analyst: User,
    data_dir: Path,
    s3_server: Any,
    object_storage: ObjectStore,
    settings: Any,
) -> None:
    # A bucket without Object Lock: its objects can be deleted (the health page warns).
    bucket = s3_server.make_bucket(object_lock=False)
    settings.STORAGE = object_store.StorageConfig(bucket, "", endpoint=s3_server.endpoint)
    object_store._shared.clear()
    store = object_store.shared(settings.STORAGE)
    placed = []
    for capture in big.files:
        placed.append(upload(store, capture, data_dir))
        remove_local(capture, data_dir)
    client.force_login(big_analyst)
    response = download(client, big)
    assert response.status_code == 200
    chunks = iter(response.streaming_content)
    received = next(chunks)
    # Files are newest first: the export reads the oldest first, the newest is not open.
    store.client.delete_object(Bucket=bucket, Key=placed[0].key)

    def read_on() -> None:
        nonlocal received
        for chunk in chunks:
            received += chunk

    with pytest.raises(SourceError, match="cannot be read"):
        read_on()
    export = Export.objects.get()
    assert export.state == Export.State.FAILED
    assert Path(big.files[0].path).name in export.error
    assert export.bytes_sent == len(received)
    assert events("export.failed")


def transitions(
    stored: Stored, data_dir: Path, store: ObjectStore, newest_sha256: str
) -> Iterator[str]:
    """Every transition of a session's files, one at a time: the newest file rotates
    from ``.part`` to its final name and its row closes, then each file is uploaded and
    its local copy removed, the file being read first."""
    newest = stored.files[0]
    final = data_dir / newest.path
    final.with_name(final.name + PART_SUFFIX).rename(final)
    yield "rotated"
    CaptureFile.objects.filter(pk=newest.pk).update(
        closed=True, sha256=newest_sha256, closed_at=timezone.now()
    )
    yield "closed"
    for capture in reversed(stored.files):  # oldest first: the one being read
        capture.refresh_from_db()
        upload(store, capture, data_dir)
        yield f"uploaded {capture.pk}"
        remove_local(capture, data_dir)
        yield f"removed {capture.pk}"


def test_exports_streaming_while_files_rotate_close_upload_and_go_complete_or_fail_at_once(
    client: Client, big: Stored, big_analyst: User, data_dir: Path, object_storage: ObjectStore
) -> None:
    # The newest file is still being written when the exports start.
    newest = big.files[0]
    final = data_dir / newest.path
    final.rename(final.with_name(final.name + PART_SUFFIX))
    CaptureFile.objects.filter(pk=newest.pk).update(closed=False, sha256="")
    client.force_login(big_analyst)
    formats = ["pcap", "pcapng", "pcap"]
    responses = [download(client, big, each) for each in formats]
    assert [each.status_code for each in responses] == [200, 200, 200]
    streams = [iter(each.streaming_content) for each in responses]
    received = [bytearray() for _ in streams]
    ended = [False] * len(streams)
    steps = transitions(big, data_dir, object_storage, newest.sha256)
    done_steps = []
    while not all(ended):
        for number, stream in enumerate(streams):
            if ended[number]:
                continue
            chunk = next(stream, None)
            if chunk is None:
                ended[number] = True
            else:
                received[number] += chunk
        step = next(steps, None)  # a transition between every round of chunks
        if step is not None:
            done_steps.append(step)
    for _ in steps:
        pass
    assert len(done_steps) >= 4  # the exports were still streaming through them
    exports = Export.objects.order_by("pk")
    for data, export, export_format in zip(received, exports, formats, strict=True):
        assert export.state == Export.State.COMPLETE, export.error
        assert export.sha256 == sha256(bytes(data))
        assert export.packets == len(big.frames)
        if export_format == "pcap":
            assert frames_of(bytes(data)) == expected(big)
    # Every file is now read from the store only, and still exports the same.
    assert not any((data_dir / each.path).exists() for each in big.files)
    again = body(download(client, big))
    assert again == bytes(received[0])


def test_the_packet_page_and_the_time_lookup_read_from_the_store(
    client: Client, stored: Stored, analyst: User, data_dir: Path, object_storage: ObjectStore
) -> None:
    client.force_login(analyst)
    session = stored.session
    numbers = [1, 6, len(stored.frames)]  # in the first, the middle and the last file
    local = [client.get(reverse("console:packet", args=[session.pk, n])) for n in numbers]
    for capture in stored.files:
        upload(object_storage, capture, data_dir)
        remove_local(capture, data_dir)
    for number, before in zip(numbers, local, strict=True):
        page = client.get(reverse("console:packet", args=[session.pk, number]))
        assert "unavailable" not in page.context
        assert page.context["hexdump"] == before.context["hexdump"]
        assert page.context["time_ns"] == stored.frames[number - 1][0]
    time_ns = stored.frames[6][0]
    found = client.get(reverse("console:packet_jump", args=[session.pk]), {"at": str(time_ns)})
    assert found.url == reverse("console:packet", args=[session.pk, 7])


def test_the_packet_page_says_why_when_the_object_is_missing(
    client: Client, stored: Stored, analyst: User, data_dir: Path, object_storage: ObjectStore
) -> None:
    capture = stored.files[-1]  # the oldest: packet 1
    upload(object_storage, capture, data_dir)
    remove_local(capture, data_dir)
    CaptureFile.objects.filter(pk=capture.pk).update(object_key="node-a/sessions/gone.pcap")
    client.force_login(analyst)
    page = client.get(reverse("console:packet", args=[stored.session.pk, 1]))
    assert "cannot be read" in page.context["unavailable"]
    assert Path(capture.path).name in page.context["unavailable"]


def test_the_stored_packet_list_reads_uploaded_files_whose_local_copy_has_gone(
    client: Client,
    stored: Stored,
    analyst: User,
    data_dir: Path,
    object_storage: ObjectStore,
) -> None:
    """The index stays beside the removed local copy and is used as it is; a file whose
    index is gone too has its index built from the object."""
    from jmirror_web.console.stored_packets import forget_indexes
    from receiver.packet_index import index_path

    client.force_login(analyst)
    url = reverse("api:session_packets", args=[stored.session.pk])
    local = client.get(url, {"page_size": 50}).json()["results"]
    assert len(local) == len(stored.frames)
    for capture in stored.files:
        upload(object_storage, capture, data_dir)
        remove_local(capture, data_dir)
    index_path(data_dir / stored.files[0].path).unlink()
    forget_indexes()
    assert client.get(url, {"page_size": 50}).json()["results"] == local
    page = client.get(reverse("console:packet", args=[stored.session.pk, len(local)]))
    assert f"({stored.frames[-1][0]} ns)" in page.content.decode()
