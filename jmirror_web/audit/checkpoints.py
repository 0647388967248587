"""Signed checkpoints of the audit chain, and checking the chain against them.

The hash chain alone shows a changed or removed event only to someone who did not
recompute the hashes after it, and it cannot show that its newest events were cut off.
A checkpoint says "event N had hash H at time T", signed with an Ed25519 key kept in a
file outside the database (``JMIRROR_AUDIT_KEY_FILE``): whoever rewrites the database
cannot sign a new one. Checkpoints are kept in an append-only table and, as JSON lines,
wherever the operator sends them (syslog, a WORM bucket), where the database's owner
cannot delete them; ``manage.py verify_audit`` checks the chain against both with the
public key alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from jmirror_web.audit.models import AuditCheckpoint, AuditEvent
from jmirror_web.intercepts.records_file import utc_iso

logger = logging.getLogger(__name__)

# What is signed starts with this, so that a signature made by this key for anything
# else can never pass as a checkpoint.
SIGNED_PREFIX: Final = b"jmirror-audit-checkpoint/1\n"
# A PEM Ed25519 key is 119 bytes; anything much bigger is not one.
KEY_FILE_MAX_BYTES: Final = 16 * 1024
# A checkpoint's JSON line is about 300 bytes; longer lines of a file are refused.
CHECKPOINT_LINE_MAX: Final = 4096
# The first periodic checkpoint of a process waits this long, so that a process restarted
# again and again still writes checkpoints, without adding work to its start.
FIRST_CHECKPOINT_DELAY: Final = 60.0


class SigningKeyError(Exception):
    """The checkpoint key file cannot be made, read or used."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """Names a key in each checkpoint: the first 16 hex digits of the SHA-256 of its raw
    32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def key_file() -> Path:
    return Path(settings.JMIRROR_AUDIT_KEY_FILE)


def signing_key(path: Path | None = None, *, create: bool = True) -> Ed25519PrivateKey:
    """The private key in ``path`` (``JMIRROR_AUDIT_KEY_FILE``), made there first when
    missing and ``create`` is true."""
    path = key_file() if path is None else path
    if create and not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _create_key_file(path: Path) -> None:
    """Written aside with mode 0600 and linked into place: two processes starting at
    once agree on one key, none reads a half-written one, and an existing key is never
    replaced (that would leave every checkpoint signed with it unverifiable)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(draft, path)
            except FileExistsError:
                return  # another process made it first: that one is the key
        finally:
            draft.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # a key lost in a power cut would orphan its checkpoints
        finally:
            os.close(directory)
    except OSError as error:
        raise SigningKeyError(
            f"the audit signing key {str(path)!r} cannot be created: {error.strerror}; "
            "make its directory writable or set JMIRROR_AUDIT_KEY_FILE"
        ) from None
    logger.info(
        "created the audit signing key %s (key %s)", path, key_id(_read_key_file(path).public_key())
    )


def _read_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        # Non-blocking, so that a FIFO in its place is refused rather than waited on.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as source:
            status = os.fstat(source.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise SigningKeyError(f"the audit signing key {str(path)!r} is not a file")
            if status.st_mode & 0o077:
                raise SigningKeyError(
                    f"the audit signing key {str(path)!r} is open to other users (mode "
                    f"{stat.S_IMODE(status.st_mode):04o}); chmod 600 it"
                )
            data = source.read(KEY_FILE_MAX_BYTES + 1)
    except OSError as error:
        raise SigningKeyError(
            f"the audit signing key {str(path)!r} cannot be read: {error.strerror}"
        ) from None
    try:
        if len(data) > KEY_FILE_MAX_BYTES:
            raise ValueError
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"the audit signing key {str(path)!r} is not an unencrypted Ed25519 private key "
            "in PEM (PKCS #8)"
        )
    return key


def public_key_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def load_public_key(data: bytes, name: str) -> Ed25519PublicKey:
    """A public key as ``manage.py audit public-key`` prints it (PEM)."""
    try:
        key = serialization.load_pem_public_key(data[:KEY_FILE_MAX_BYTES])
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{name} is not an Ed25519 public key in PEM")
    return key


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint as signed and exported: ``number`` is its row's id (not signed: it
    only names the checkpoint in messages); the rest is what the signature covers."""

    number: int
    sequence: int
    head_hash: str
    time: str
    key_id: str
    signature: str  # base64

    @classmethod
    def of(cls, checkpoint: AuditCheckpoint) -> SignedCheckpoint:
        return cls(
            number=checkpoint.pk,
            sequence=checkpoint.sequence,
            head_hash=checkpoint.head_hash,
            time=utc_iso(checkpoint.created_at),
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )

    @classmethod
    def from_json(cls, line: str) -> SignedCheckpoint:
        """One exported line; ValueError saying what is wrong with it."""
        try:
            fields = json.loads(line)
        except ValueError:
            raise ValueError("not JSON") from None
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        kinds = {
            "checkpoint": int,
            "sequence": int,
            "hash": str,
            "time": str,
            "key_id": str,
            "signature": str,
        }
        for name, kind in kinds.items():
            value = fields.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(
                    f"{name!r} is missing or not a{'n integer' if kind is int else ' string'}"
                )
        return cls(
            number=fields["checkpoint"],
            sequence=fields["sequence"],
            head_hash=fields["hash"],
            time=fields["time"],
            key_id=fields["key_id"],
            signature=fields["signature"],
        )

    def message(self) -> bytes:
        """The bytes signed: canonical JSON of everything but the number."""
        content = {
            "hash": self.head_hash,
            "key_id": self.key_id,
            "sequence": self.sequence,
            "time": self.time,
        }
        return SIGNED_PREFIX + json.dumps(content, sort_keys=True, separators=(",", ":")).encode()

    def identity(self) -> tuple[bytes, str]:
        """The same checkpoint in the table and in a file, whatever its number says."""
        return self.message(), self.signature

    def json_line(self) -> str:
        return json.dumps(
            {
                "checkpoint": self.number,
                "sequence": self.sequence,
                "hash": self.head_hash,
                "time": self.time,
                "key_id": self.key_id,
                "signature": self.signature,
            },
            sort_keys=True,
        )

    def signature_problem(self, public_keys: Mapping[str, Ed25519PublicKey]) -> str | None:
        key = public_keys.get(self.key_id)
        if key is None:
            if not public_keys:
                return f"signed with key {self.key_id}, and no public key was given to check it"
            return f"signed with key {self.key_id}, not with {', '.join(sorted(public_keys))}"
        try:
            key.verify(base64.b64decode(self.signature, validate=True), self.message())
        except (InvalidSignature, binascii.Error, ValueError):
            return "its signature does not verify: the checkpoint was forged or altered"
        return None

    def __str__(self) -> str:
        return f"checkpoint #{self.number} (event #{self.sequence}, {self.time})"


def write_checkpoint(key: Ed25519PrivateKey | None = None) -> AuditCheckpoint | None:
    """Sign the chain's newest event now; None when the log is empty."""
    key = signing_key() if key is None else key
    head = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
    if head is None:
        return None
    now = timezone.now()
    unsigned = SignedCheckpoint(
        number=0,
        sequence=head[0],
        head_hash=head[1],
        time=utc_iso(now),
        key_id=key_id(key.public_key()),
        signature="",
    )
    return AuditCheckpoint.objects.create(
        created_at=now,
        sequence=unsigned.sequence,
        head_hash=unsigned.head_hash,
        key_id=unsigned.key_id,
        signature=base64.b64encode(key.sign(unsigned.message())).decode("ascii"),
    )


def checkpoint_if_moved() -> AuditCheckpoint | None:
    """A new checkpoint when events were added since the newest one, else None."""
    newest_event = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    covered = AuditCheckpoint.objects.order_by("-sequence").values_list("sequence", flat=True)
    newest_covered = covered.first()
    if newest_event is None or (newest_covered is not None and newest_covered >= newest_event):
        return None
    return write_checkpoint()


def run_periodic_checkpoints(stop: threading.Event, interval: float, first_delay: float) -> None:
    """Every ``interval`` seconds until ``stop``, a checkpoint when the chain moved. Never
    raises: a web process must not die of a missing key or a database away for a while.
    Each one is also logged as its JSON line, so a log shipped off the host keeps it."""
    delay = first_delay
    while not stop.wait(delay):
        delay = interval
        try:
            written = checkpoint_if_moved()
        except SigningKeyError as error:
            logger.error("audit checkpoint not written: %s", error)
        except DatabaseError as error:
            logger.warning("audit checkpoint not written (%s); trying again later", error)
        except Exception:
            logger.exception("audit checkpoint not written; trying again later")
        else:
            if written is not None:
                logger.info("audit checkpoint %s", SignedCheckpoint.of(written).json_line())
        finally:
            connection.close()  # not held idle for an hour, nor reused when broken


def start_periodic_checkpoints() -> threading.Thread | None:
    """The long-running web process's checkpoint writer, every
    ``JMIRROR_AUDIT_CHECKPOINT_MINUTES`` (0: none). A daemon thread: it holds nothing
    that needs closing, and an interrupted write is rolled back."""
    minutes: int = settings.JMIRROR_AUDIT_CHECKPOINT_MINUTES
    if not minutes:
        return None
    thread = threading.Thread(
        target=run_periodic_checkpoints,
        args=(threading.Event(), minutes * 60.0, FIRST_CHECKPOINT_DELAY),
        name="audit-checkpoints",
        daemon=True,
    )
    thread.start()
    return thread


@dataclass(frozen=True)
class Finding:
    checkpoint: SignedCheckpoint
    problem: str

    def __str__(self) -> str:
        return f"{self.checkpoint}: {self.problem}"


def check_checkpoints(
    stored: Iterable[SignedCheckpoint],
    kept: Iterable[SignedCheckpoint],
    public_keys: Mapping[str, Ed25519PublicKey],
    event_hashes: Mapping[int, str],
    last_event: int,
    kept_name: str = "",
) -> list[Finding]:
    """What disagrees, first checkpoint (by the event it covers) first.

    ``stored`` come from the table, ``kept`` from an exported file (``kept_name``); the
    two are matched by what is signed. ``event_hashes`` holds the hash of each event a
    checkpoint names that the chain still has, ``last_event`` the chain's newest id."""
    in_table = {each.identity(): each for each in stored}
    only_kept = {each.identity(): each for each in kept if each.identity() not in in_table}
    everything = sorted(
        [*in_table.values(), *only_kept.values()], key=lambda each: (each.sequence, each.number)
    )
    findings: list[Finding] = []
    for checkpoint in everything:
        problems: list[str] = []
        if checkpoint.identity() in only_kept:
            problems.append(f"it is in {kept_name} but not in the database: it was deleted")
        signature = checkpoint.signature_problem(public_keys)
        if signature is not None:
            problems.append(signature)
        found = event_hashes.get(checkpoint.sequence)
        if found is None and checkpoint.sequence > last_event:
            problems.append(
                f"the log ends at event #{last_event}: its newest events were deleted (truncated)"
            )
        elif found is None:
            problems.append(
                f"event #{checkpoint.sequence} is missing: events it covers were deleted"
            )
        elif found != checkpoint.head_hash:
            problems.append(
                f"event #{checkpoint.sequence} has hash {found[:16]}..., the checkpoint "
                f"{checkpoint.head_hash[:16]}...: the chain was rewritten"
            )
        findings.extend(Finding(checkpoint, problem) for problem in problems)
    return findings


def read_checkpoint_file(source: TextIO, name: str) -> list[SignedCheckpoint]:
    """An exported file's checkpoints; ValueError naming the line that is not one."""
    checkpoints = []
    number = 0
    while line := source.readline(CHECKPOINT_LINE_MAX + 1):
        number += 1
        if len(line) > CHECKPOINT_LINE_MAX:
            raise ValueError(f"{name}, line {number}: longer than {CHECKPOINT_LINE_MAX} characters")
        if not line.strip():
            continue
        try:
            checkpoints.append(SignedCheckpoint.from_json(line))
        except ValueError as error:
            raise ValueError(f"{name}, line {number}: not a checkpoint ({error})") from None
    return checkpoints
