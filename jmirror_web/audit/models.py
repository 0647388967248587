"""The append-only audit log: who did what to which object, when, and from where.

Every event carries the SHA-256 of the event before it and its own hash over both, so
removing, inserting or altering a row breaks the chain at that row
(:func:`verify_chain`). Triggers also reject UPDATE and DELETE on the table (migrations
0002 and 0003). Someone who can drop the triggers can still rewrite the whole chain or
cut its newest events off; signed checkpoints (:class:`AuditCheckpoint`,
:mod:`jmirror_web.audit.checkpoints`) are what shows that.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

GENESIS_HASH: Final = "0" * 64
# Serialised once per chain, so that two concurrent writers cannot both link to the
# same previous event. The value is arbitrary; it names this lock in pg_locks.
_POSTGRES_CHAIN_LOCK: Final = 0x4A4D4952  # "JMIR"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> int:
        raise PermissionError("audit events are append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("audit events are append-only")


class AuditEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        # Never touched when the user is deleted: actor_id is hashed into the chain, and
        # the table refuses UPDATE (SET_NULL made deleting a user fail, or break the chain).
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,  # the log outlives deleted users; actor_name keeps who it was
    )
    actor_name = models.CharField(max_length=150, blank=True)
    source_address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict)
    previous_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("audit events are append-only")

    def compute_hash(self) -> str:
        return event_hash(self.previous_hash, self.canonical_content())

    def canonical_content(self) -> str:
        """Everything the hash covers, as canonical JSON (sorted keys, no spaces)."""
        return json.dumps(
            {
                "created_at": self.created_at.isoformat(),
                "actor_id": self.actor_id,
                "actor_name": self.actor_name,
                "source_address": self.source_address,
                "action": self.action,
                "object_type": self.object_type,
                "object_id": self.object_id,
                "object_repr": self.object_repr,
                "details": self.details,
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )


def event_hash(previous_hash: str, content: str) -> str:
    return hashlib.sha256(f"{previous_hash}\n{content}".encode()).hexdigest()


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_POSTGRES_CHAIN_LOCK])
    # SQLite runs transactions with BEGIN IMMEDIATE (settings), which already holds
    # the database's single write lock from the start of the transaction.


# What neither database can store as text: PostgreSQL refuses NUL in text and in jsonb
# (as \u0000), and no UTF-8 column takes a lone surrogate. Refusals record what a client
# asked for (a path, an id) verbatim, so such characters reach the log from outside.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """``value`` (text, or JSON made of dicts, lists and scalars) with every character a
    database cannot store replaced by U+FFFD, so that recording what a client sent never
    fails: the event still says that something odd was there."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(str(key)): storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value


def append_event(
    *,
    action: str,
    actor: Any = None,
    source_address: str | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain (the low-level writer; see
    :func:`jmirror_web.audit.log.record`). ``actor`` is a user, or a string naming
    who acted without an account (e.g. ``"os:root"`` for a management command)."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    if user is not None:
        actor_name = user.get_username()
    else:
        # A string names an actor without an account: a command run from a shell.
        actor_name = actor[:150] if isinstance(actor, str) else ""
    with transaction.atomic():
        _lock_chain()
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event = AuditEvent(
            created_at=timezone.now(),
            actor=user,
            actor_name=storable(actor_name),
            source_address=source_address,
            action=storable(action),
            object_type=storable(object_type[:100]),
            object_id=storable(object_id[:64]),
            object_repr=storable(object_repr[:200]),
            details=storable(json.loads(json.dumps(details or {}, default=str))),
            previous_hash=last or GENESIS_HASH,
        )
        event.hash = event.compute_hash()
        event.save()
    return event


@dataclass(frozen=True)
class ChainBreak:
    event_id: int
    problem: str


def verify_chain(events: Iterator[AuditEvent] | None = None) -> ChainBreak | None:
    """The first event where the chain is broken (altered content, a removed or
    inserted event), or None when the whole log is intact."""
    if events is None:
        events = AuditEvent.objects.order_by("id").iterator(chunk_size=2000)
    previous = GENESIS_HASH
    for event in events:
        if event.previous_hash != previous:
            return ChainBreak(event.pk, "its previous hash does not match the event before it")
        if event.compute_hash() != event.hash:
            return ChainBreak(event.pk, "its content does not match its hash")
        previous = event.hash
    return None


class AuditCheckpointQuerySet(models.QuerySet["AuditCheckpoint"]):
    def update(self, **kwargs: Any) -> int:
        raise PermissionError("audit checkpoints are append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("audit checkpoints are append-only")


class AuditCheckpoint(models.Model):
    """A signed statement that the chain's event ``sequence`` had hash ``head_hash`` at
    ``created_at``: a chain recomputed after an edit, or cut short, disagrees with it.
    Signed with the Ed25519 key of :mod:`jmirror_web.audit.checkpoints`, which lives
    outside the database."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField()
    sequence = models.BigIntegerField(db_index=True)  # the id of the newest event covered
    head_hash = models.CharField(max_length=64)
    key_id = models.CharField(max_length=16)
    signature = models.CharField(max_length=88)  # base64 of the 64-byte signature

    objects = AuditCheckpointQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return (
            f"checkpoint #{self.pk} at event #{self.sequence} ({self.created_at:%Y-%m-%d %H:%M:%S})"
        )

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("audit checkpoints are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("audit checkpoints are append-only")
