"""Intercept records: what may be captured (cases, intercepts, routers) and what was
(sessions and their capture files).

A packet's content may be stored only when a registered router sent it, an intercept
claims it, and that intercept and its case are in force at the packet's receive time
(:meth:`Intercept.is_in_force`). Validation here keeps the records consistent enough
for that gate to be unambiguous: no two intercepts can claim the same packet.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Greatest

from jmirror_web.intercepts import bulk_counts
from jmirror_web.intercepts.bulk_counts import FileCounts as FileCounts
from jmirror_web.intercepts.bulk_counts import SessionCounts as SessionCounts
from jmirror_web.intercepts.bulk_counts import SessionIdentity as SessionIdentity
from jmirror_web.intercepts.bulk_counts import TrafficCounts as TrafficCounts
from jmirror_web.object_store import StoredObject
from jmirror_web.plain_text import control_character_errors
from receiver.contrail import CONTRAIL_MID
from receiver.store import PART_SUFFIX

if TYPE_CHECKING:
    from django.contrib.auth.models import User

MAX_INTERCEPT_ID: Final = 2**30 - 1
MAX_SESSION_ID: Final = 2**32 - 1
MAX_MID: Final = 2**32 - 1
# Every time a record or a request may give: the receiver's clock is nanoseconds since
# 1970 in a signed 64-bit integer (to 2262), and nothing outside this range needs
# arithmetic (nanoseconds, a day or a year added) that could overflow.
EARLIEST_MOMENT: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_MOMENT: Final = datetime(2200, 1, 1, tzinfo=UTC)
# An UnclaimedStream row that aggregates a source's other streams (receiver.pipeline).
AGGREGATE_MID: Final = MAX_MID + 1
# The UDP port a CN2 mirror destination sends to unless configured otherwise (Contrail's
# analyzer default); a new CN2 router's port when none is given.
CONTRAIL_ANALYZER_PORT: Final = 8099
# A CN2 intercept's lists: bounded so that a record stays readable and the gate's loop
# over them short (docs/architecture.md, The path of a datagram).
MAX_CLAIM_ENTRIES: Final = 64
# A VN name travels in a TLV whose length is one byte.
MAX_VN_NAME_BYTES: Final = 255
_MAX_TARGET_TEXT: Final = 64

_country_code = RegexValidator(
    re.compile(r"^[A-Z]{2}$"), "Use the two capital letters of an ISO 3166-1 country code."
)
# ETSI TS 102 232-1 limits a LIID to 25 octets; OpenLI uses it as a file and topic name,
# so it is kept to printable characters without separators.
_liid = RegexValidator(
    re.compile(r"^[A-Za-z0-9._-]{1,25}$"),
    "A LIID is 1 to 25 letters, digits, dots, dashes or underscores.",
)


def default_retention_days() -> int:
    """A new case's retention: ``JMIRROR_RETENTION_DAYS`` (365 unless configured)."""
    days: int = settings.JMIRROR_RETENTION_DAYS
    return days


def window_range_errors(record: Any) -> dict[str, str]:
    """An error for ``valid_from`` / ``valid_until`` outside the times the product
    handles (:data:`EARLIEST_MOMENT` to :data:`LATEST_MOMENT`)."""
    errors = {}
    for name in ("valid_from", "valid_until"):
        value = getattr(record, name, None)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # as Django reads a naive time (USE_TZ, UTC)
        if isinstance(value, datetime) and not EARLIEST_MOMENT <= value <= LATEST_MOMENT:
            errors[name] = (
                f"A time must lie between {EARLIEST_MOMENT:%Y-%m-%d} and "
                f"{LATEST_MOMENT:%Y-%m-%d} UTC."
            )
    return errors


class Case(models.Model):
    """One legal authorization (a warrant)."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        CLOSED = "closed", "Closed"

    reference = models.CharField(max_length=64, unique=True)
    title = models.CharField(max_length=200)
    agency = models.CharField(max_length=200)
    legal_basis = models.CharField("legal basis / issuing authority", max_length=300, blank=True)
    valid_from = models.DateTimeField(help_text="UTC.")
    valid_until = models.DateTimeField(help_text="UTC; the warrant ends at this instant.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    retention_days = models.PositiveIntegerField(
        default=default_retention_days,
        validators=[MaxValueValidator(36500)],
        help_text="Days after the warrant ends before its files are purged.",
    )
    legal_hold = models.BooleanField(
        default=False, help_text="Keep every file of the case whatever the retention says."
    )
    notes = models.TextField(blank=True)
    analysts: models.ManyToManyField[User, CaseAssignment] = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        through="CaseAssignment",
        related_name="assigned_cases",
        blank=True,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-valid_from", "reference"]
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_from__lt=models.F("valid_until")),
                name="case_window_not_empty",
                violation_error_message="A case's validity must start before it ends.",
            )
        ]

    def __str__(self) -> str:
        return self.reference

    def clean(self) -> None:
        errors = control_character_errors(
            self, ("reference", "title", "agency", "legal_basis"), ("notes",)
        )
        errors |= window_range_errors(self)
        if errors:
            raise ValidationError(errors)
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            errors["valid_until"] = "The warrant must end after it starts."
        if errors:
            raise ValidationError(errors)

    def is_in_force(self, at: datetime) -> bool:
        return self.status == Case.Status.ACTIVE and self.valid_from <= at < self.valid_until


class CaseAssignment(models.Model):
    """A user assigned to a case: the only way to its packet content and downloads."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="assignments")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="case_assignments"
    )
    assigned_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["case", "user"], name="one_assignment_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.case}"


class Router(models.Model):
    """A mirror source: the router's address and the mediation port it sends to."""

    class Kind(models.TextChoices):
        E_SERIES = "e-series", "E Series (JUNOSe)"
        MX = "mx", "MX Series (Junos)"
        CN2 = "cn2", "CN2 / Contrail vRouter"

    class Format(models.TextChoices):
        JMIRROR = "jmirror", "jmirror (8-byte header)"
        CONTRAIL = "contrail", "Contrail Juniper header"

    name = models.CharField(max_length=100, unique=True)
    address = models.GenericIPAddressField(unique=True, help_text="Source address of its mirror.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.MX)
    port = models.PositiveIntegerField(
        default=30030,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="UDP port of this host that the router sends its mirror to; for a CN2 "
        f"vRouter, its analyzer port (Contrail's default is {CONTRAIL_ANALYZER_PORT}).",
    )
    format = models.CharField(max_length=16, choices=Format.choices, default=Format.JMIRROR)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"

    def clean(self) -> None:
        errors = control_character_errors(self, ("name",))
        if not errors and self.format != Router.format_of(self.kind):
            errors["format"] = (
                "A CN2 vRouter sends the Contrail Juniper header."
                if self.kind == Router.Kind.CN2
                else "E Series and MX routers send jmirror; only a CN2 vRouter sends the "
                "Contrail Juniper header."
            )
        if errors:
            raise ValidationError(errors)

    @staticmethod
    def format_of(kind: str) -> str:
        """The format a router of ``kind`` sends: a new router's format when none is given."""
        return Router.Format.CONTRAIL if kind == Router.Kind.CN2 else Router.Format.JMIRROR

    @staticmethod
    def default_port(kind: str) -> int:
        """A new router's port when none is given."""
        return CONTRAIL_ANALYZER_PORT if kind == Router.Kind.CN2 else 30030


@dataclass(frozen=True)
class InterceptScope:
    """What an intercept claims, for the overlap check (routers empty: every router of
    its kind). A jmirror intercept claims by ``intercept_id`` and ``sid``; a CN2 one by
    ``analyzer_port`` (None: any port), its VN names and targets aside (see
    :func:`find_conflict`)."""

    intercept_id: int | None
    sid: int | None
    router_ids: frozenset[int]
    valid_from: datetime
    valid_until: datetime
    kind: str = "jmirror"
    analyzer_port: int | None = None


def normalized_virtual_networks(value: object) -> list[str]:
    """A CN2 intercept's VN names as stored: a list of at most :data:`MAX_CLAIM_ENTRIES`
    distinct names of 1 to 255 printable ASCII characters (what the vRouter puts in TLVs
    3 and 4; the decoder escapes any other byte, so such a name could never match).
    Raises ValidationError naming the first one at fault."""
    if not isinstance(value, list):
        raise ValidationError("Give the virtual networks as a list of names.")
    if len(value) > MAX_CLAIM_ENTRIES:
        raise ValidationError(
            f"At most {MAX_CLAIM_ENTRIES} virtual networks per intercept ({len(value)} given)."
        )
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str):
            raise ValidationError(f"Virtual network {name!r} is not a name (text).")
        shown = repr(name if len(name) <= 40 else name[:40] + "...")
        if not 1 <= len(name) <= MAX_VN_NAME_BYTES:
            raise ValidationError(
                f"Virtual network {shown} is {len(name)} characters long; a VN name is 1 to "
                f"{MAX_VN_NAME_BYTES}."
            )
        if not all(" " <= character <= "~" for character in name):
            raise ValidationError(
                f"Virtual network {shown}: a VN name is printable ASCII only (no NUL, no "
                "control or non-ASCII character)."
            )
        if name in seen:
            raise ValidationError(f"Virtual network {shown} is listed twice.")
        seen.add(name)
    return list(value)


def normalized_targets(value: object) -> list[str]:
    """A CN2 intercept's targets as stored: a list of at most :data:`MAX_CLAIM_ENTRIES`
    distinct IPv4 or IPv6 addresses or prefixes, each written as ``ipaddress`` writes it
    (a /32 or /128 as the bare address). A prefix with bits set beyond its length is
    refused rather than guessed at. Raises ValidationError naming the first one at fault."""
    if not isinstance(value, list):
        raise ValidationError("Give the targets as a list of addresses or prefixes.")
    if len(value) > MAX_CLAIM_ENTRIES:
        raise ValidationError(
            f"At most {MAX_CLAIM_ENTRIES} targets per intercept ({len(value)} given)."
        )
    normalized: list[str] = []
    for text in value:
        if not isinstance(text, str):
            raise ValidationError(f"Target {text!r} is not an address or prefix (text).")
        shown = repr(text if len(text) <= 40 else text[:40] + "...")
        if len(text) > _MAX_TARGET_TEXT or "%" in text:
            raise ValidationError(f"Target {shown} is not an IPv4 or IPv6 address or prefix.")
        try:
            network = ipaddress.ip_network(text)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValidationError(
                    f"Target {shown} is not an IPv4 or IPv6 address or prefix."
                ) from None
            raise ValidationError(
                f"Target {shown} has bits set beyond its prefix length: did you mean {loose}?"
            ) from None
        form = str(network.network_address if network.num_addresses == 1 else network)
        if form in normalized:
            raise ValidationError(f"Target {shown} is listed twice (as {form}).")
        normalized.append(form)
    return normalized


class Intercept(models.Model):
    """One target under a case, whose packets are captured while the intercept is in
    force. A jmirror intercept claims by mirror id (and optionally session id); a CN2
    intercept claims Contrail frames by analyzer port, virtual networks and target
    addresses, every one of those given (at least one). Either may be held to routers
    (of its own kind)."""

    class Kind(models.TextChoices):
        JMIRROR = "jmirror", "jmirror (E Series, MX)"
        CN2 = "cn2", "CN2 / Contrail vRouter"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="intercepts")
    liid = models.CharField("LIID", max_length=25, unique=True, validators=[_liid])
    kind = models.CharField(
        max_length=16,
        choices=Kind.choices,
        default=Kind.JMIRROR,
        help_text="The format the intercept's routers mirror in.",
    )
    intercept_id = models.PositiveIntegerField(
        "mirror id",
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_INTERCEPT_ID)],
        help_text="jmirror: the 30-bit intercept id the router puts in the jmirror header "
        "(0 to 2^30-1). A CN2 intercept has none.",
    )
    sid = models.PositiveBigIntegerField(
        "session id",
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_SESSION_ID)],
        help_text="Claim only this session id; empty claims every session of the mirror id.",
    )
    analyzer_port = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="CN2: claim the frames sent to this UDP port of this host (the mirror "
        "destination's analyzer port); empty: any port.",
    )
    virtual_networks = models.JSONField(
        default=list,
        blank=True,
        help_text=f"CN2: claim the frames whose source or destination virtual network is "
        f"one of these names (at most {MAX_CLAIM_ENTRIES}).",
    )
    targets = models.JSONField(
        default=list,
        blank=True,
        help_text=f"CN2: claim the frames whose inner source or destination address lies in "
        f"one of these addresses or prefixes (at most {MAX_CLAIM_ENTRIES}).",
    )
    routers = models.ManyToManyField(
        Router,
        blank=True,
        related_name="intercepts",
        help_text="Accept the mirror only from these routers; none selected accepts any "
        "registered router of the intercept's kind (vRouters for CN2, others for jmirror).",
    )
    valid_from = models.DateTimeField(help_text="UTC; inside the case's validity.")
    valid_until = models.DateTimeField(help_text="UTC; inside the case's validity.")
    authcc = models.CharField(
        "authorization country", max_length=2, validators=[_country_code], default="NZ"
    )
    delivcc = models.CharField(
        "delivery country", max_length=2, validators=[_country_code], default="NZ"
    )
    target_description = models.TextField(blank=True)
    keep_content = models.BooleanField(
        default=True,
        help_text="Store packet content; when off, only metadata (counters, 5-tuples) is kept.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Set by a form that edits the routers with the row (the admin's): they are saved
    # after the row, so clean() would otherwise check the routers stored before the edit
    # (none at all for a new intercept, which reads as "every router").
    pending_router_ids: frozenset[int] | None = None

    class Meta:
        ordering = ["liid"]
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_from__lt=models.F("valid_until")),
                name="intercept_window_not_empty",
                violation_error_message="An intercept's window must start before it ends.",
            ),
            models.CheckConstraint(
                condition=Q(kind="jmirror", intercept_id__isnull=False, analyzer_port__isnull=True)
                | Q(kind="cn2", intercept_id__isnull=True, sid__isnull=True),
                name="intercept_claims_fit_kind",
                violation_error_message="A jmirror intercept has a mirror id and no analyzer "
                "port; a CN2 intercept has neither mirror id nor session id.",
            ),
            models.CheckConstraint(
                condition=Q(analyzer_port__isnull=True)
                | Q(analyzer_port__gte=1, analyzer_port__lte=65535),
                name="intercept_analyzer_port_range",
                violation_error_message="An analyzer port is 1 to 65535.",
            ),
        ]

    def __str__(self) -> str:
        return self.liid

    @property
    def is_cn2(self) -> bool:
        return self.kind == Intercept.Kind.CN2

    def claims_text(self) -> str:
        """What the intercept claims, in words, routers and window aside: for a page
        or a message ("mirror id 0x8000 session 0x90", "analyzer port 8099, VN red")."""
        if not self.is_cn2:
            text = f"mirror id {self.intercept_id:#x}" if self.intercept_id is not None else ""
            return text + (f" session {self.sid:#x}" if self.sid is not None else "")
        parts = [f"analyzer port {self.analyzer_port}" if self.analyzer_port else "any port"]
        if self.virtual_networks:
            parts.append("VN " + ", ".join(self.virtual_networks))
        if self.targets:
            parts.append("target " + ", ".join(self.targets))
        return "; ".join(parts)

    def is_in_force(self, at: datetime) -> bool:
        return self.valid_from <= at < self.valid_until and self.case.is_in_force(at)

    def scope(self, router_ids: frozenset[int] | None = None) -> InterceptScope:
        if router_ids is None:
            router_ids = (
                frozenset(self.routers.values_list("pk", flat=True)) if self.pk else frozenset()
            )
        return InterceptScope(
            self.intercept_id,
            self.sid,
            router_ids,
            self.valid_from,
            self.valid_until,
            self.kind,
            self.analyzer_port,
        )

    def clean(self) -> None:
        errors = control_character_errors(self, (), ("target_description",))
        errors |= window_range_errors(self)
        if errors:
            raise ValidationError(errors)
        self._clean_claims()
        self._check_router_kinds()
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            errors["valid_until"] = "The intercept must end after it starts."
        case = self.case if self.case_id else None
        if (
            case is not None
            and self.valid_from
            and self.valid_until
            and (self.valid_from < case.valid_from or self.valid_until > case.valid_until)
        ):
            errors["valid_from"] = (
                f"The intercept's window must lie inside case {case.reference}'s "
                f"validity ({case.valid_from:%Y-%m-%d %H:%M} to "
                f"{case.valid_until:%Y-%m-%d %H:%M} UTC)."
            )
        if errors:
            raise ValidationError(errors)
        if (self.is_cn2 or self.intercept_id is not None) and self.valid_from and self.valid_until:
            self.check_no_conflict(self.scope(self.pending_router_ids))

    def _clean_claims(self) -> None:
        """The claims of the intercept's kind, and none of the other kind's; a CN2
        intercept's lists normalized."""
        errors: dict[str, Any] = {}
        if not self.is_cn2:
            if self.kind != Intercept.Kind.JMIRROR:
                return  # the field's choices report it
            if self.intercept_id is None:
                errors["intercept_id"] = "A jmirror intercept claims by mirror id: give one."
            for name, what in (
                ("analyzer_port", "analyzer port"),
                ("virtual_networks", "virtual network"),
                ("targets", "target"),
            ):
                if getattr(self, name) not in (None, []):
                    errors[name] = f"Only a CN2 intercept claims by {what}."
            if errors:
                raise ValidationError(errors)
            return
        if self.intercept_id is not None:
            errors["intercept_id"] = (
                "A CN2 intercept has no mirror id: it claims Contrail frames by analyzer "
                "port, virtual network or target."
            )
        if self.sid is not None:
            errors["sid"] = "A CN2 intercept has no session id."
        for name, normalize in (
            ("virtual_networks", normalized_virtual_networks),
            ("targets", normalized_targets),
        ):
            try:
                setattr(self, name, normalize(getattr(self, name)))
            except ValidationError as error:
                errors[name] = error.messages
        if errors:
            raise ValidationError(errors)
        if self.analyzer_port is None and not self.virtual_networks and not self.targets:
            raise ValidationError(
                "A CN2 intercept claims by analyzer port, virtual networks or targets: give "
                "at least one.",
                code="no_claim",
            )

    def _check_router_kinds(self) -> None:
        """A CN2 intercept names only vRouters, a jmirror one none: a router sends one
        format, and the other kind of intercept could never claim what it sends."""
        router_ids = self.pending_router_ids
        if router_ids is None:
            router_ids = (
                frozenset(self.routers.values_list("pk", flat=True)) if self.pk else frozenset()
            )
        if not router_ids:
            return
        routers = Router.objects.filter(pk__in=router_ids).order_by("name")
        if self.is_cn2:
            wrong = [router.name for router in routers.exclude(kind=Router.Kind.CN2)]
            if wrong:
                raise ValidationError(
                    {
                        "routers": f"{', '.join(wrong)}: not a CN2 vRouter; a CN2 intercept "
                        "claims only the Contrail frames vRouters send."
                    }
                )
        else:
            wrong = [router.name for router in routers.filter(kind=Router.Kind.CN2)]
            if wrong:
                raise ValidationError(
                    {
                        "routers": f"{', '.join(wrong)}: a CN2 vRouter, which sends Contrail "
                        "frames; only a CN2 intercept claims them."
                    }
                )

    def check_no_conflict(self, scope: InterceptScope) -> None:
        """Refuse a scope that could claim a packet another intercept claims."""
        conflict = find_conflict(scope, exclude_pk=self.pk)
        if conflict is not None and scope.kind == Intercept.Kind.CN2:
            port = (
                f"analyzer port {scope.analyzer_port}"
                if scope.analyzer_port is not None
                else "any analyzer port"
            )
            raise ValidationError(
                f"Intercept {conflict.liid} (case {conflict.case.reference}) already claims "
                f"Contrail frames ({conflict.claims_text()}) from an overlapping set of "
                f"vRouters in an overlapping window, and this one would claim on {port}; two "
                "intercepts must never claim the same frame. Virtual networks and targets "
                "do not keep two intercepts apart (a frame carries two VN names and two "
                "addresses, and one from a target of one to a target of the other would match "
                "both): give each mirror "
                "destination its own analyzer port.",
                code="intercept_conflict",
            )
        if conflict is not None:
            assert scope.intercept_id is not None  # a jmirror scope
            raise ValidationError(
                f"Intercept {conflict.liid} (case {conflict.case.reference}) already claims "
                f"mirror id {scope.intercept_id:#x}"
                + (f" session {scope.sid:#x}" if scope.sid is not None else "")
                + " from an overlapping set of routers in an overlapping window; "
                "two intercepts must never claim the same packet.",
                code="intercept_conflict",
            )


def find_conflict(scope: InterceptScope, exclude_pk: int | None = None) -> Intercept | None:
    """The first intercept whose claim overlaps ``scope``: of the same kind (a jmirror
    datagram and a Contrail frame are never the same packet), with router sets that can
    coincide (intersecting, or either empty = any router), overlapping windows, and

    - jmirror: the same mirror id and session ids that can coincide (equal, or either
      unpinned);
    - CN2: analyzer ports that can coincide (equal, or either unset). VN names and
      targets never keep two CN2 intercepts apart: a frame carries a source and a
      destination VN and address, so a frame from one's target to the other's (or
      between their networks) matches both."""
    candidates = (
        Intercept.objects.filter(
            kind=scope.kind,
            valid_from__lt=scope.valid_until,
            valid_until__gt=scope.valid_from,
        )
        .select_related("case")
        .prefetch_related("routers")
        .order_by("pk")
    )
    if scope.kind == Intercept.Kind.CN2:
        if scope.analyzer_port is not None:
            candidates = candidates.filter(
                Q(analyzer_port__isnull=True) | Q(analyzer_port=scope.analyzer_port)
            )
    else:
        candidates = candidates.filter(intercept_id=scope.intercept_id)
    if scope.sid is not None:
        candidates = candidates.filter(Q(sid__isnull=True) | Q(sid=scope.sid))
    if exclude_pk is not None:
        candidates = candidates.exclude(pk=exclude_pk)
    for other in candidates:
        other_routers = {router.pk for router in other.routers.all()}
        if not scope.router_ids or not other_routers or scope.router_ids & other_routers:
            return other
    return None


class SessionManager(models.Manager["Session"]):
    def add_counts(self, rows: Sequence[SessionCounts]) -> dict[SessionIdentity, int]:
        """Add ``rows`` to their sessions' counters, making the rows that do not exist,
        in a few statements (one per chunk of rows: INSERT ... ON CONFLICT DO UPDATE);
        returns the primary key of every session written. The extent only ever grows (an
        import of an older capture must not move a session's extent inwards) and the
        latest claim wins the intercept. Rows for the same session are added together."""
        return bulk_counts.add_session_counts(self.model, self.db, rows)


class Session(models.Model):
    """What one router sends for one (mid, sid): filled by the receiver.

    Keyed by router, mid and sid together: two routers can send the same (mid, sid).
    """

    router = models.ForeignKey(Router, on_delete=models.PROTECT, related_name="sessions")
    intercept = models.ForeignKey(
        Intercept, on_delete=models.PROTECT, related_name="sessions", null=True, blank=True
    )
    mid = models.PositiveBigIntegerField(validators=[MaxValueValidator(MAX_MID)])
    sid = models.PositiveBigIntegerField(validators=[MaxValueValidator(MAX_SESSION_ID)])
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    packets = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    stored_packets = models.PositiveBigIntegerField(default=0)

    objects = SessionManager()

    class Meta:
        ordering = ["-last_seen"]
        constraints = [
            models.UniqueConstraint(fields=["router", "mid", "sid"], name="one_session_per_stream")
        ]

    def __str__(self) -> str:
        if self.is_contrail:
            return f"{self.router.name} Contrail port {self.sid}"
        return f"{self.router.name} mid {self.mid:#x} sid {self.sid:#x}"

    @property
    def is_contrail(self) -> bool:
        """Whether this is a CN2 vRouter's Contrail session: its mid is
        receiver.contrail.CONTRAIL_MID and its sid the analyzer port the frames came to
        (a Contrail session is one vRouter's frames to one analyzer port)."""
        return self.mid == CONTRAIL_MID

    @property
    def analyzer_port(self) -> int | None:
        """A Contrail session's analyzer port; None for jmirror."""
        return self.sid if self.is_contrail else None


class TrafficMinuteManager(models.Manager["TrafficMinute"]):
    def add(self, rows: Sequence[TrafficCounts]) -> None:
        """Add ``rows`` to their sessions' minutes, making the rows that do not exist, in
        a few statements (INSERT ... ON CONFLICT DO UPDATE)."""
        bulk_counts.add_traffic(self.model, self.db, rows)


class TrafficMinute(models.Model):
    """What one session received in one minute (claimed packets, stored or not), written
    by the receiver with the session's counters: the dashboard's traffic over time.
    Counted at the minute of the latest packet of each write (about a second's worth;
    a write held back by a database outage counts at its latest minute)."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="minutes")
    minute = models.DateTimeField(help_text="Start of the minute, UTC.")
    packets = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)

    objects = TrafficMinuteManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "minute"], name="one_row_per_session_minute")
        ]
        indexes = [models.Index(fields=["minute"], name="traffic_minute")]

    def __str__(self) -> str:
        return f"{self.session_id} {self.minute:%Y-%m-%d %H:%M}: {self.packets} packets"


class CaptureFileManager(models.Manager["CaptureFile"]):
    def record(self, rows: Sequence[FileCounts]) -> None:
        """Write the rows of files being written and of files just closed, by path, in a
        few statements (INSERT ... ON CONFLICT (path) DO UPDATE). A closed row is final:
        a row of a file still open never reopens it."""
        bulk_counts.record_files(self.model, self.db, rows)

    def save_closed(self, row: FileCounts) -> None:
        """Make or complete the row of one closed file, by path (a file a receiver that
        was stopped short left for the next one to close)."""
        self.update_or_create(
            path=row.path,
            defaults={
                "session_id": row.session_id,
                "first_packet": row.first_packet,
                "last_packet": row.last_packet,
                "packets": row.packets,
                "bytes": row.bytes,
                "sha256": row.sha256,
                "closed": row.closed,
                "node": row.node,
                "closed_at": row.closed_at,
            },
        )

    def closed_paths(self) -> set[str]:
        """The path of every row of a closed file."""
        return set(self.filter(closed=True).values_list("path", flat=True))


# A CaptureFile row's path: this word, then the file's place under settings.SESSIONS_DIR
# as the receiver's store names it ("sessions/<session directory>/<file>.pcap").
SESSIONS_PREFIX: Final = "sessions"


class OutsideSessionsDirectory(Exception):
    """A capture file's path is not under the sessions directory: such a file is never
    read, served or deleted, whatever its row says."""


class CaptureFile(models.Model):
    """One pcap file of a session. Its ``path`` is :data:`SESSIONS_PREFIX` and the file's
    place under ``settings.SESSIONS_DIR`` (or the file's absolute path under it);
    :meth:`on_disk` and :meth:`stored_path` are the only translations between the two."""

    session = models.ForeignKey(Session, on_delete=models.PROTECT, related_name="files")
    path = models.CharField(max_length=500, unique=True)
    first_packet = models.DateTimeField(null=True, blank=True)
    last_packet = models.DateTimeField(null=True, blank=True)
    packets = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    closed = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Retention (jmirror_web.intercepts.retention): when the purge of the file was decided
    # and audited, then when the file was seen gone from disk. Between the two the file
    # may still exist and must not be served. The row stays for the chain of custody.
    purged_at = models.DateTimeField(null=True, blank=True)
    file_deleted_at = models.DateTimeField(null=True, blank=True)
    # Re-verification against the disk (jmirror_web.exports.verification): the last
    # result stands, and a mismatch stays an alert until a later check finds the file OK.
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_ok = models.BooleanField(null=True, blank=True)
    verify_detail = models.CharField(max_length=300, blank=True)
    # Which capture host wrote the file (settings.NODE_NAME of its receiver), and when
    # it closed (then its SHA-256 exists and it may be uploaded).
    node = models.CharField(max_length=63, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # Object storage (jmirror_web.object_store, receiver.uploads): where the store put
    # the file, set only once the store confirmed the upload with the file's SHA-256.
    object_bucket = models.CharField(max_length=63, blank=True)
    object_key = models.CharField(max_length=1024, blank=True)
    object_version = models.CharField(max_length=1024, blank=True)
    uploaded_at = models.DateTimeField(null=True, blank=True)
    # Retention the upload set (Object Lock), and the legal hold as last set on the object.
    object_retain_until = models.DateTimeField(null=True, blank=True)
    object_legal_hold = models.BooleanField(default=False)
    # The upload queue: failed attempts so far, the last failure, and when to try again.
    upload_attempts = models.PositiveIntegerField(default=0)
    upload_error = models.CharField(max_length=300, blank=True)
    upload_after = models.DateTimeField(null=True, blank=True)
    # When the capturing host removed its local copy (JMIRROR_LOCAL_KEEP_HOURS after the
    # upload): from then on the file is read from the store only.
    local_removed_at = models.DateTimeField(null=True, blank=True)

    objects = CaptureFileManager()

    class Meta:
        ordering = ["session", "first_packet", "pk"]
        indexes = [
            # The few rows whose file deletion is still to be done or confirmed.
            models.Index(
                fields=["purged_at"],
                condition=Q(purged_at__isnull=False, file_deleted_at__isnull=True),
                name="capturefile_purge_pending",
            ),
            # The upload queue: each node's closed files not yet in the store.
            models.Index(
                fields=["node", "upload_after"],
                condition=Q(closed=True, uploaded_at__isnull=True, purged_at__isnull=True),
                name="capturefile_upload_queue",
            ),
        ]

    def __str__(self) -> str:
        return self.path

    @property
    def stored_object(self) -> StoredObject | None:
        """Where the store holds this file, once uploaded; None before."""
        if self.uploaded_at is None or not self.object_key:
            return None
        return StoredObject(self.object_bucket, self.object_key, self.object_version)

    def on_disk(self) -> Path:
        """Where this row's file is. Only a file under ``settings.SESSIONS_DIR`` is ever
        given: a path that leaves it (absolute elsewhere, with ``..``, through a symbolic
        link) or that is relative but does not start with :data:`SESSIONS_PREFIX` raises
        :class:`OutsideSessionsDirectory` (rows are written by the receiver; anything
        else in one is not ours to read or delete). A file still being written has the
        ``.part`` suffix until it closes: that name is given while only it exists."""
        refused = OutsideSessionsDirectory(
            f"Capture file {self.pk} is recorded outside the sessions directory; "
            "it is not read, exported or deleted."
        )
        stored = PurePosixPath(self.path)
        root = Path(settings.SESSIONS_DIR)
        if ".." in stored.parts:
            raise refused
        if stored.is_absolute():
            path = Path(stored)  # held to the sessions directory below
        elif len(stored.parts) >= 2 and stored.parts[0] == SESSIONS_PREFIX:
            path = root.joinpath(*stored.parts[1:])
        else:
            raise refused
        if not self.closed and not path.exists():
            part = path.with_name(path.name + PART_SUFFIX)
            if part.exists():
                path = part
        resolved, within = path.resolve(), root.resolve()
        if resolved == within or not resolved.is_relative_to(within):
            raise refused
        return path

    def open_for_reading(self) -> BinaryIO:
        """This row's file opened for reading, from the start (see :meth:`on_disk`)."""
        return self.on_disk().open("rb")

    @staticmethod
    def stored_path(path: Path) -> str:
        """The ``path`` of the row of a file that the receiver's store wrote, from where
        the store says it is: relative to the sessions directory, or absolute under it.
        Raises :class:`OutsideSessionsDirectory` for any other place."""
        if path.is_absolute():
            try:
                path = path.relative_to(settings.SESSIONS_DIR)
            except ValueError:
                raise OutsideSessionsDirectory(
                    f"{str(path)!r} is not under the sessions directory "
                    f"{str(settings.SESSIONS_DIR)!r}"
                ) from None
        if not path.parts or ".." in path.parts:
            raise OutsideSessionsDirectory(f"{str(path)!r} does not name a file of the store")
        return str(PurePosixPath(SESSIONS_PREFIX, *path.parts))


class ReceiverProcess(models.Model):
    """One run of a receiver (``manage.py receive``): its totals since it started, written
    by the receiver at least once a second. A system record: no case data in it."""

    hostname = models.CharField(max_length=255)
    # settings.NODE_NAME of the receiver (several capture hosts: the health page lists
    # each node's receivers).
    node = models.CharField(max_length=63, blank=True)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    # When the receiver last wrote to the database: a stale value means it is stuck or gone.
    reported_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    datagrams = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    malformed = models.PositiveBigIntegerField(default=0)
    unstorable = models.PositiveBigIntegerField(default=0)
    internal_errors = models.PositiveBigIntegerField(default=0)
    unclaimed_overflow = models.PositiveBigIntegerField(default=0)
    # Drop reason (unknown_router, no_intercept, outside_window) -> datagrams.
    drops = models.JSONField(default=dict)
    # errno name (ENOSPC...) -> packets that could not be stored.
    store_errors = models.JSONField(default=dict)
    open_files = models.PositiveIntegerField(default=0)
    # Load: sessions with traffic lately, the longest receive round since the
    # previous report and since start (a long round is what overflows the socket buffer),
    # files the open-file bound closed early, and how far the database's counters trail
    # the traffic, as of the last write: the session counters that were waiting for it,
    # and how old the oldest of them was when written (about the write interval when the
    # database keeps up; the metrics give the backlog as it stands).
    active_sessions = models.PositiveIntegerField(default=0)
    round_ms = models.FloatField(default=0.0)
    longest_round_ms = models.FloatField(default=0.0)
    bound_closes = models.PositiveBigIntegerField(default=0)
    bookkeeping_backlog = models.PositiveIntegerField(default=0)
    bookkeeping_lag_seconds = models.FloatField(default=0.0)
    # The upload queue (receiver.uploads), with an evidence store: closed files waiting
    # for their upload, their bytes and how long the oldest has waited; since start, what
    # was uploaded, failed attempts, local copies removed, and the last failure (one line,
    # no path or key: a system record).
    upload_backlog = models.PositiveIntegerField(default=0)
    upload_backlog_bytes = models.PositiveBigIntegerField(default=0)
    upload_oldest_seconds = models.FloatField(default=0.0)
    uploaded_files = models.PositiveBigIntegerField(default=0)
    uploaded_bytes = models.PositiveBigIntegerField(default=0)
    upload_failures = models.PositiveBigIntegerField(default=0)
    local_copies_removed = models.PositiveBigIntegerField(default=0)
    last_upload_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]

    def __str__(self) -> str:
        return f"receiver {self.hostname}:{self.pid} started {self.started_at:%Y-%m-%d %H:%M:%S}"

    def report(self, listeners: Sequence[ListenerCounts], **totals: Any) -> None:
        """Write this run's ``totals`` (fields of this model) and the counters of its
        sockets, each socket's row made on its first report."""
        ReceiverProcess.objects.filter(pk=self.pk).update(**totals)
        for each in listeners:
            Listener.objects.update_or_create(
                receiver=self,
                address=each.address,
                defaults={
                    "datagrams": each.datagrams,
                    "bytes": each.bytes,
                    "kernel_drops": each.kernel_drops,
                    "rcvbuf": each.rcvbuf,
                },
            )


class ListenerCounts(NamedTuple):
    """What a receiver knows of one of its sockets (see ReceiverProcess.report)."""

    address: str
    datagrams: int
    bytes: int
    kernel_drops: int | None
    rcvbuf: int


class Listener(models.Model):
    """One UDP socket of a receiver process."""

    receiver = models.ForeignKey(
        ReceiverProcess, on_delete=models.CASCADE, related_name="listeners"
    )
    address = models.CharField(max_length=64)
    datagrams = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    # Dropped by the kernel because the socket's receive buffer was full; null: unknown.
    kernel_drops = models.PositiveBigIntegerField(null=True, blank=True)
    rcvbuf = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["receiver", "address"]
        constraints = [
            models.UniqueConstraint(fields=["receiver", "address"], name="one_row_per_listener")
        ]

    def __str__(self) -> str:
        return self.address


UnclaimedKey = tuple[str, int, int]  # source, mid, sid


class UnclaimedStreamManager(models.Manager["UnclaimedStream"]):
    def keys_among(
        self, sources: Iterable[str], mids: Iterable[int], sids: Iterable[int]
    ) -> set[UnclaimedKey]:
        """The (source, mid, sid) of the rows whose source, mid and sid are each among
        those given (a superset of the streams asked about, in one query)."""
        return {
            (row.source, row.mid, row.sid)
            for row in self.filter(
                source__in=set(sources), mid__in=set(mids), sid__in=set(sids)
            ).only("source", "mid", "sid")
        }

    def streams_per_source(self, sources: Iterable[str]) -> dict[str, int]:
        """How many rows of single streams (aggregate rows aside) each source has."""
        return dict(
            self.filter(source__in=set(sources))
            .exclude(mid=AGGREGATE_MID)
            .values("source")
            .annotate(rows=Count("pk"))
            .values_list("source", "rows")
        )

    def add_counts(
        self, key: UnclaimedKey, *, packets: int, last_seen: datetime, reason: str
    ) -> None:
        """Add ``packets`` to an existing row: its last sighting only moves forward, and
        the latest reason wins."""
        source, mid, sid = key
        self.filter(source=source, mid=mid, sid=sid).update(
            packets=F("packets") + packets,
            last_seen=Greatest("last_seen", Value(last_seen)),
            reason=reason,
        )


class UnclaimedStream(models.Model):
    """A (source, mid, sid) whose packets arrived and were dropped, so that an LI
    administrator can map it (register the router, create the intercept). Counts only:
    no byte of these packets is kept."""

    class Reason(models.TextChoices):
        UNKNOWN_ROUTER = "unknown_router", "unknown router"
        NO_INTERCEPT = "no_intercept", "no intercept"
        OUTSIDE_WINDOW = "outside_window", "outside the warrant window"

    source = models.CharField(max_length=64, help_text="Address the datagrams came from.")
    router = models.ForeignKey(
        Router, on_delete=models.SET_NULL, null=True, blank=True, related_name="unclaimed"
    )
    mid = models.PositiveBigIntegerField(validators=[MaxValueValidator(MAX_MID)])
    sid = models.PositiveBigIntegerField(validators=[MaxValueValidator(MAX_SESSION_ID)])
    reason = models.CharField(max_length=20, choices=Reason.choices)
    packets = models.PositiveBigIntegerField(default=0)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()

    objects = UnclaimedStreamManager()

    class Meta:
        ordering = ["-last_seen"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "mid", "sid"], name="one_unclaimed_per_stream"
            )
        ]

    def __str__(self) -> str:
        if self.is_aggregate:
            return f"{self.source} other streams ({self.reason})"
        if self.is_contrail:
            return f"{self.source} Contrail port {self.sid} ({self.reason})"
        return f"{self.source} mid {self.mid:#x} sid {self.sid:#x} ({self.reason})"

    @property
    def is_aggregate(self) -> bool:
        """Whether this row counts the source's streams past the per-source limit
        (receiver.pipeline.admit_unclaimed) rather than one stream: its mid is
        AGGREGATE_MID, one past the largest a jmirror header holds."""
        return self.mid == AGGREGATE_MID

    @property
    def is_contrail(self) -> bool:
        """Whether the stream is a CN2 vRouter's Contrail frames to one analyzer port (mid
        receiver.contrail.CONTRAIL_MID, sid the port)."""
        return self.mid == CONTRAIL_MID

    @property
    def analyzer_port(self) -> int | None:
        """A Contrail stream's analyzer port; None for jmirror."""
        return self.sid if self.is_contrail else None

    @property
    def mirror_id(self) -> int:
        """The 30-bit intercept id inside the mid (the 2 top bits are the version): what an
        intercept made for this stream would claim."""
        return self.mid & MAX_INTERCEPT_ID
