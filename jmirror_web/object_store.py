"""Evidence on S3-compatible object storage (SeaweedFS, MinIO, Ceph RGW, AWS S3).

A receiver writes its ``.part`` files to local disk as always; when a file closes, the
upload queue (``receiver.uploads``) puts it in the bucket with its SHA-256 as the object's
checksum, so the store itself refuses a body that does not match, and with Object Lock
retention when the bucket has it. Web processes read closed files back with ranged GETs
(:class:`ObjectReader`), so any of them serves any closed file without the host that
captured it.

Signing, retries and the credential chain are boto3's (the standard AWS variables, a
credentials file, an instance role): nothing here signs a request, and no credential is
ever in a setting of ours, in a URL or in a log line.

This module has no Django: the settings parse :func:`parse_storage_url` and build a
:class:`StorageConfig`; :func:`connect` makes the :class:`ObjectStore`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Final
from urllib.parse import urlsplit

# Objects above this size go up in parts (each part carries its own SHA-256 and the store
# checks the whole object's composite checksum); below it one PUT carries the file's
# SHA-256 itself, which the store checks against the whole body. A default 256 MiB file
# goes in one PUT: measured on a local SeaweedFS (benchmarks/upload_benchmark.py), parts
# of 64 MiB cost the uploading process 3.2 CPU s/GB against 1.1 for one PUT (every part
# hashed twice here, besides the signature's hash) and held the interpreter lock for up
# to 120 ms at a time (one PUT: 28 ms), which the receive loop beside the upload queue
# cannot afford. S3 allows one PUT up to 5 GiB.
MULTIPART_THRESHOLD: Final = 1024 * 2**20
PART_BYTES: Final = 64 * 2**20
# Reads: one ranged GET per this many bytes, streamed (a reader never holds a range in
# memory: its socket does). Large enough that a request's latency is small against its
# transfer: on SeaweedFS a request costs about 10 ms, and an export from the store ran at
# about 210 MB/s with 8 MiB ranges against 270 MB/s with 32 MiB on the same host
# (benchmarks/store_export_benchmark.py). A seek outside the range drops the request.
READ_RANGE_BYTES: Final = 32 * 2**20
FIRST_RANGE_BYTES: Final = 2**20
_HASH_BLOCK: Final = 2**20

# S3 bucket names (the AWS rules, which every compatible store accepts): 3-63 lowercase
# letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class LockMode(StrEnum):
    """Object Lock retention modes: COMPLIANCE cannot be shortened or lifted by anyone;
    GOVERNANCE can be by a user holding s3:BypassGovernanceRetention."""

    COMPLIANCE = "COMPLIANCE"
    GOVERNANCE = "GOVERNANCE"


class StorageError(Exception):
    """The object store refused or could not be reached; ``str(error)`` is one line for a
    log or a page, naming the store and the operation, never a credential."""


class StorageUrlError(ValueError):
    """``JMIRROR_STORAGE_URL`` is not empty and not ``s3://BUCKET[/PREFIX]``."""


@dataclass(frozen=True)
class StorageConfig:
    """Where evidence goes: ``bucket`` and key ``prefix`` (no leading or trailing slash,
    possibly empty), the ``endpoint`` of a non-AWS store (None: AWS), the ``region``
    (None: boto3's own resolution, then us-east-1) and the retention mode."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    lock_mode: LockMode = LockMode.COMPLIANCE

    @property
    def url(self) -> str:
        """The storage URL as configured (no credentials are ever in it)."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.url}{where}"


def parse_storage_url(text: str) -> tuple[str, str] | None:
    """``s3://BUCKET[/PREFIX]`` as (bucket, prefix); None for an empty text (local files).
    Raises :class:`StorageUrlError` for anything else, credentials in the URL included
    (they belong in the AWS variables or a credentials file, never in a setting that is
    shown and logged)."""
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme != "s3":
        raise StorageUrlError(f"{text!r} is not s3://BUCKET[/PREFIX] (empty: local files)")
    if "@" in parts.netloc:
        raise StorageUrlError(
            "holds credentials; give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or a credentials file (AWS_SHARED_CREDENTIALS_FILE), never in the URL"
        )
    if parts.query or parts.fragment:
        raise StorageUrlError(f"{text!r}: no query or fragment is allowed")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StorageUrlError(f"{bucket!r} is not an S3 bucket name")
    prefix = parts.path.strip("/")
    if prefix and any(piece in ("", ".", "..") for piece in prefix.split("/")):
        raise StorageUrlError(f"{text!r}: the prefix has an empty, '.' or '..' part")
    if len(prefix) > 200:
        raise StorageUrlError(f"{text!r}: the prefix is longer than 200 characters")
    return bucket, prefix


def valid_node_name(name: str) -> bool:
    """A node name: 1-63 letters, digits, dots, hyphens and underscores, starting with a
    letter or digit (it becomes part of object keys and shows on pages)."""
    return _NODE.fullmatch(name) is not None


def object_key(config: StorageConfig, node: str, path: str) -> str:
    """The key of a capture file: the prefix, the node that captured it, then the row's
    ``path`` (``sessions/<session directory>/<file>``). The node keeps two hosts' files
    apart whatever their names."""
    return "/".join(piece for piece in (config.prefix, node, path) if piece)


def sha256_checksum(hex_digest: str) -> str:
    """S3's ``ChecksumSHA256``: the digest in base64."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


@dataclass(frozen=True)
class StoredObject:
    """Where an uploaded file is: bucket, key and version (empty on a store without
    versioning)."""

    bucket: str
    key: str
    version: str


@dataclass(frozen=True)
class ObjectFacts:
    size: int
    checksum_sha256: str  # base64, as S3 gives it; empty when the store has none
    lock_mode: str
    retain_until: datetime | None
    legal_hold: bool | None  # None: not asked


@dataclass(frozen=True)
class BucketFacts:
    """What :meth:`ObjectStore.check` found: whether the bucket has Object Lock (without
    it, evidence there can be deleted by anyone holding the credentials) and versioning."""

    object_lock: bool
    versioning: bool


def _error_text(error: BaseException) -> str:
    """One line for a store error: S3's code and message, or the connection failure."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        detail = response.get("Error", {})
        code = detail.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = detail.get("Message") or ""
        return f"{code}: {message}".strip(": ") if message else str(code)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:300]


def refused_by_lock(error: BaseException) -> bool:
    """Whether a store error is a refusal (access denied, retention, legal hold) rather
    than the store being out of reach."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"AccessDenied", "ObjectLocked", "InvalidRequest"} or status == 403


class ObjectStore:
    """One bucket of an S3-compatible store, through boto3. Thread-safe: boto3 clients
    may be shared between threads (a session may not: it is made once here)."""

    def __init__(self, config: StorageConfig, client: Any) -> None:
        self.config = config
        self.client = client

    @property
    def bucket(self) -> str:
        return self.config.bucket

    def _fail(self, operation: str, error: BaseException) -> StorageError:
        return StorageError(
            f"object store {self.config.describe()}: {operation} failed ({_error_text(error)})"
        )

    def check(self) -> BucketFacts:
        """Reach the bucket and read whether it has Object Lock and versioning; raises
        :class:`StorageError` with one line when it cannot."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as error:
            raise self._fail("reaching the bucket", error) from None
        try:
            lock = self.client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError:
            enabled = False  # ObjectLockConfigurationNotFoundError: a bucket without it
        except BotoCoreError as error:
            raise self._fail("reading the Object Lock configuration", error) from None
        try:
            versioning = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except (BotoCoreError, ClientError):
            versioning = None
        return BucketFacts(object_lock=enabled, versioning=versioning == "Enabled")

    def upload(
        self,
        path: Path,
        key: str,
        sha256: str,
        *,
        retain_until: datetime | None = None,
        legal_hold: bool = False,
    ) -> StoredObject:
        """Put the file at ``path`` under ``key`` with its SHA-256 (hex) as the object's
        checksum, so that the store verifies what it received, and with retention until
        ``retain_until`` (None: no retention; the bucket must have Object Lock otherwise)
        and a legal hold when asked. Returns where the store says the object is, which is
        only after it confirmed the upload. Raises :class:`StorageError`."""
        from botocore.exceptions import BotoCoreError, ClientError

        extra: dict[str, Any] = {}
        if retain_until is not None:
            extra["ObjectLockMode"] = str(self.config.lock_mode)
            extra["ObjectLockRetainUntilDate"] = retain_until
        if legal_hold:
            extra["ObjectLockLegalHoldStatus"] = "ON"
        try:
            size = path.stat().st_size
            with path.open("rb") as stream:
                if size <= MULTIPART_THRESHOLD:
                    response = self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=stream,
                        ContentLength=size,
                        ChecksumSHA256=sha256_checksum(sha256),
                        ContentType="application/octet-stream",
                        **extra,
                    )
                    version = response.get("VersionId") or ""
                else:
                    version = self._upload_parts(stream, key, sha256, extra)
        except OSError as error:
            raise StorageError(
                f"{path.name} cannot be read for upload ({error.strerror})"
            ) from None
        except (BotoCoreError, ClientError) as error:
            raise self._fail(f"upload of {key}", error) from None
        return StoredObject(self.bucket, key, version)

    def _upload_parts(self, stream: BinaryIO, key: str, sha256: str, extra: dict[str, Any]) -> str:
        """A multipart upload, each part with its own SHA-256; the whole file's digest is
        checked against ``sha256`` as it is read (the file is closed and must not change),
        and the upload is abandoned (nothing stays in the bucket) on any failure."""
        created = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm="SHA256",
            ContentType="application/octet-stream",
            **extra,
        )
        upload_id = created["UploadId"]
        whole = hashlib.sha256()
        parts = []
        try:
            number = 1
            while True:
                data = stream.read(PART_BYTES)
                if not data:
                    break
                whole.update(data)
                part_sum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
                sent = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=part_sum,
                )
                parts.append(
                    {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": part_sum}
                )
                number += 1
            if whole.hexdigest() != sha256:
                raise StorageError(
                    f"{key}: the file's SHA-256 is {whole.hexdigest()}, not the recorded "
                    f"{sha256}; not uploaded"
                )
            done = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # The first error is the one to report; a failed abort leaves an incomplete
            # upload the store's lifecycle rules clean up, never an object.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return str(done.get("VersionId") or "")

    def facts(self, stored: StoredObject, *, legal_hold: bool = False) -> ObjectFacts:
        """The object's size, stored checksum and retention (HEAD with checksum mode)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(ChecksumMode="ENABLED", **self._address(stored))
            hold = self._legal_hold(stored) if legal_hold else None
        except (BotoCoreError, ClientError) as error:
            raise self._fail(f"reading {stored.key}", error) from None
        return ObjectFacts(
            size=int(head["ContentLength"]),
            checksum_sha256=str(head.get("ChecksumSHA256") or ""),
            lock_mode=str(head.get("ObjectLockMode") or ""),
            retain_until=head.get("ObjectLockRetainUntilDate"),
            legal_hold=hold,
        )

    def _legal_hold(self, stored: StoredObject) -> bool:
        """Whether the object's legal hold is on. An object whose hold was never set has
        no legal hold configuration (S3 answers NoSuchObjectLegalHold), and an object in
        a bucket without Object Lock can have none (InvalidRequest): both are "off"."""
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object_legal_hold(**self._address(stored))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {
                "NoSuchObjectLegalHold",
                "InvalidRequest",
            }:
                return False
            raise
        return bool(answer.get("LegalHold", {}).get("Status") == "ON")

    def sha256(self, stored: StoredObject) -> str:
        """The SHA-256 (hex) of the object's bytes, read in full."""
        digest = hashlib.sha256()
        with self.open(stored) as reader:
            while block := reader.read(_HASH_BLOCK):
                digest.update(block)
        return digest.hexdigest()

    def newer_versions(self, stored: StoredObject) -> int:
        """How many versions of the key were written after ``stored`` (someone put a
        different object under an evidence key; the recorded version still reads)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not stored.version:
            return 0
        try:
            listed = self.client.list_object_versions(Bucket=self.bucket, Prefix=stored.key)
        except (BotoCoreError, ClientError) as error:
            raise self._fail(f"listing the versions of {stored.key}", error) from None
        newer = 0
        for version in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
            if version.get("Key") != stored.key:
                continue
            if version.get("VersionId") == stored.version:
                return newer
            newer += 1  # listed newest first
        return newer

    def set_legal_hold(self, stored: StoredObject, on: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object_legal_hold(
                LegalHold={"Status": "ON" if on else "OFF"}, **self._address(stored)
            )
        except (BotoCoreError, ClientError) as error:
            raise self._fail(f"setting the legal hold of {stored.key}", error) from None

    def extend_retention(self, stored: StoredObject, until: datetime) -> None:
        """Lock the object until ``until`` (only ever later: a store refuses shortening
        COMPLIANCE retention, and the product never asks)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object_retention(
                Retention={"Mode": str(self.config.lock_mode), "RetainUntilDate": until},
                **self._address(stored),
            )
        except (BotoCoreError, ClientError) as error:
            raise self._fail(f"setting the retention of {stored.key}", error) from None

    def delete(self, stored: StoredObject) -> None:
        """Delete the object's version (its key when the store keeps no versions). Raises
        :class:`ObjectDeleteRefused` when the store refuses (retention, legal hold,
        rights) and :class:`StorageError` when it cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(**self._address(stored))
        except ClientError as error:
            if refused_by_lock(error):
                raise ObjectDeleteRefused(
                    f"the store refused to delete {stored.key} ({_error_text(error)})"
                ) from None
            raise self._fail(f"deleting {stored.key}", error) from None
        except BotoCoreError as error:
            raise self._fail(f"deleting {stored.key}", error) from None

    def exists(self, stored: StoredObject) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(**self._address(stored))
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (404, 400) or error.response.get("Error", {}).get("Code") in {
                "404",
                "NoSuchKey",
                "NoSuchVersion",
                "NotFound",
            }:
                return False
            raise self._fail(f"reading {stored.key}", error) from None
        except BotoCoreError as error:
            raise self._fail(f"reading {stored.key}", error) from None
        return True

    def open(self, stored: StoredObject, start: int = 0) -> ObjectReader:
        """A reader of the object from byte ``start``: ranged GETs of
        :data:`READ_RANGE_BYTES`, streamed (never the whole object in memory)."""
        return ObjectReader(self, stored, start)

    def _address(self, stored: StoredObject) -> dict[str, str]:
        address = {"Bucket": stored.bucket, "Key": stored.key}
        if stored.version:
            address["VersionId"] = stored.version
        return address

    def get_range(self, stored: StoredObject, start: int, end: int) -> Any:
        """The body (a stream) of bytes ``start`` to ``end`` inclusive."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Range=f"bytes={start}-{end}", **self._address(stored))
        except (BotoCoreError, ClientError) as error:
            raise self._fail(f"reading {stored.key} at byte {start}", error) from None
        return response["Body"]


class ObjectDeleteRefused(StorageError):
    """The store refused to delete an object version (retention, legal hold or rights)."""


class ObjectReader:
    """A read-only, forward-streaming file over an object: ``read``, ``readinto``,
    ``seek``/``tell`` and ``size``, enough for the export's cursors and for hashing.
    Each :data:`READ_RANGE_BYTES` stretch is one ranged GET, read as it arrives; a seek
    drops the current request and the next read starts a new one there."""

    def __init__(self, store: ObjectStore, stored: StoredObject, start: int = 0) -> None:
        self._store = store
        self._stored = stored
        self.name = stored.key.rsplit("/", 1)[-1]
        self.size = store.facts(stored).size
        self._pos = start
        self._body: Any = None
        self._body_end = start  # where the current request's range ends (exclusive)
        self._requests = 0
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        raise OSError("an object in the store has no file descriptor")

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = {0: offset, 1: self._pos + offset, 2: self.size + offset}[whence]
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if self._body is not None and self._pos < target <= self._body_end:
            # Forward inside the current request's range (skipping blocks one by one,
            # as the packet page does): read on and drop, rather than a request a seek.
            while self._pos < target:
                skipped = len(self._read_body(min(target - self._pos, _HASH_BLOCK)))
                if not skipped:
                    break
                self._pos += skipped
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def _next_body(self, wanted: int) -> bool:
        if self._pos >= self.size:
            return False
        # A reader's first request is only as long as the first read (at least
        # FIRST_RANGE_BYTES): most opens read a header and close (an export's planning,
        # a file's first records), and a long range closed early makes the store send
        # what the connection buffers for nothing.
        length = READ_RANGE_BYTES if self._requests else max(FIRST_RANGE_BYTES, wanted)
        self._requests += 1
        end = min(self.size, self._pos + min(length, READ_RANGE_BYTES))
        self._body = self._store.get_range(self._stored, self._pos, end - 1)
        self._body_end = end
        return True

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as view, view.cast("B") as target:
            wanted = len(target)
            done = 0
            while done < wanted:
                if self._body is None or self._pos >= self._body_end:
                    self._drop_body()
                    if not self._next_body(wanted - done):
                        break
                chunk = self._read_body(min(wanted - done, self._body_end - self._pos))
                if not chunk:
                    raise StorageError(
                        f"object store {self._store.config.describe()}: {self._stored.key} "
                        f"ended at byte {self._pos} of {self.size}"
                    )
                target[done : done + len(chunk)] = chunk
                done += len(chunk)
                self._pos += len(chunk)
            return done

    def _read_body(self, size: int) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return bytes(self._body.read(size))
        except (BotoCoreError, OSError) as error:
            self._drop_body()
            raise self._store._fail(
                f"reading {self._stored.key} at byte {self._pos}", error
            ) from None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buffer = bytearray(size)
        got = self.readinto(buffer)
        del buffer[got:]
        return bytes(buffer)

    def chunks(self, size: int = _HASH_BLOCK) -> Iterator[bytes]:
        while block := self.read(size):
            yield block

    def close(self) -> None:
        self._closed = True
        self._drop_body()

    @property
    def closed(self) -> bool:
        return self._closed


def connect(config: StorageConfig, *, timeout: float = 10.0, attempts: int = 3) -> ObjectStore:
    """An :class:`ObjectStore` for ``config``. Credentials come from boto3's chain
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE and
    AWS_PROFILE, an instance role); nothing is contacted until the first request."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=config.endpoint,
        region_name=config.region or session.region_name or "us-east-1",
        config=Config(
            connect_timeout=timeout,
            read_timeout=max(timeout, 30.0),
            retries={"max_attempts": attempts, "mode": "standard"},
            # Path-style addressing works with every compatible store and any bucket
            # name; virtual-hosted style needs DNS for each bucket.
            # No SHA-256 of the body in the signature (UNSIGNED-PAYLOAD), even over plain
            # HTTP where botocore would otherwise hash every uploaded byte again: every
            # body we send names its checksum in a signed header (ChecksumSHA256, the
            # recorded digest of the file; Content-MD5 on the small XML requests), and
            # the store refuses a body that does not match it. Hashing it once more for
            # the signature protected nothing and cost the capture host's upload process
            # about half of its CPU per byte (benchmarks/upload_benchmark.py).
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            # Checksums only when the request names one (ours do): newer botocore would
            # otherwise add CRC32 trailers some compatible stores reject.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=16,
        ),
    )
    return ObjectStore(config, client)


_shared: dict[StorageConfig, ObjectStore] = {}
_shared_lock = threading.Lock()


def shared(config: StorageConfig) -> ObjectStore:
    """One :class:`ObjectStore` per configuration in this process (boto3 clients are
    costly to make and safe to share)."""
    with _shared_lock:
        store = _shared.get(config)
        if store is None:
            store = _shared[config] = connect(config)
        return store
