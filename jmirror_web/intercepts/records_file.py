"""The intercept records file: cases, routers and intercepts as one JSON object, read by
``manage.py intercepts import`` and written by ``manage.py intercepts export``.

::

    {"cases": [...], "routers": [...], "intercepts": [...]}

Intercepts use the keys of OpenLI's IP intercepts as its provisioner's REST API reads
and writes them (``src/provisioner/updateserver_jsonparsing.c`` and
``updateserver_jsoncreation.c`` in OpenLI-NZ/openli), so an intercept list exported
from OpenLI needs only a ``case`` per intercept:

- ``liid``, ``authcc``, ``delivcc``: the LIID and the authorization and delivery
  country codes.
- ``vendmirrorid``: the Juniper mirror id, our ``intercept_id``. OpenLI masks it to
  30 bits (``& 0x3fffffff``); here a larger value is refused rather than silently
  aliased to another mirror id. A ``"0x..."`` string is accepted as OpenLI's YAML
  configuration accepts one.
- ``user``: OpenLI's target identity in the AAA system (a RADIUS user name or
  calling-station id). Stored verbatim as the intercept's ``target_description``.
- ``agencyid``: OpenLI's id of the requesting agency. Here the agency belongs to the
  case, so export writes the case's agency and import refuses an intercept whose
  ``agencyid`` differs from its case's.
- ``starttime``, ``endtime``: UNIX seconds, as in OpenLI. Left out of a new intercept,
  they default to its case's validity. Export rounds a window that is not on whole
  seconds inwards (start up, end down) so that it stays inside its case's.
- OpenLI's ``mediator``, ``accesstype``, ``radiusident`` and ``mobileident`` concern
  its own collectors and handovers; they are accepted and ignored. Any other unknown
  key is an error: a misspelt key in a warrant record must not pass unnoticed.

Our additions to an intercept: ``case`` (the case reference), ``sid`` (pin one session
id; null for every session), ``routers`` (router names; empty for any registered
router of the intercept's kind) and ``keep_content``.

A CN2 / Contrail vRouter intercept has ``"kind": "cn2"``, no ``vendmirrorid`` and no
``sid`` (either is an error), and claims the mirrored frames that match every one of
these that it gives (at least one):

- ``analyzer_port``: the UDP port (1 to 65535) its mirror destination sends to; null
  or left out for any port;
- ``virtual_networks``: VN names (printable ASCII, 1 to 255 characters); a frame whose
  source or destination VN is one of them;
- ``targets``: IPv4 or IPv6 addresses or prefixes; a frame whose inner source or
  destination address lies in one of them. They are stored as ``ipaddress`` writes
  them (``10.0.0.1/32`` becomes ``10.0.0.1``), which is what export writes.

The two lists hold at most 64 entries each. Its ``routers`` must be routers of kind
``cn2``, and a jmirror intercept's must not be. Every intercept without a ``kind`` (or
with ``"kind": "jmirror"``) is a jmirror intercept, as in OpenLI; export writes
``kind`` for CN2 intercepts only, so a jmirror intercept's record is as it was, and a
jmirror intercept with a CN2 key is an error. Left out of a CN2 intercept that was
already CN2, a claim key keeps its stored value.

A case carries ``reference``, ``agency``, ``valid_from``, ``valid_until`` (ISO 8601 in
UTC, written with a ``Z``; import also accepts another UTC offset or UNIX seconds),
``analysts`` (user names; the assignments become exactly these), and optionally
``title`` (default: the reference), ``status`` (default: draft), ``legal_basis``,
``retention_days``, ``legal_hold`` and ``notes``. A router carries ``name``,
``address`` and optionally ``kind`` (``e-series``, ``mx`` or ``cn2``), ``port`` (the UDP
port of this host it sends to; a vRouter's analyzer port) and ``format`` (``jmirror``,
or ``contrail`` for a vRouter). Left out, ``format`` follows the kind (when the record is
new or its kind changes), and a new vRouter's ``port`` is 8099, Contrail's default.

Import is keyed by case reference, router name and LIID: a record in the file creates
or updates the record with its key, and records not in the file are left alone. An
optional key left out keeps the stored value (a new record gets the default). A record
whose values are already stored is not saved, so importing the same file again changes
nothing and records no change events. Everything is validated by the models' own
rules (window inside the case's, no two intercepts claiming the same packet, ...); the
first error names the record and key, and nothing of the file is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction

from jmirror_web.audit.log import record
from jmirror_web.intercepts.models import (
    MAX_INTERCEPT_ID,
    MAX_SESSION_ID,
    Case,
    CaseAssignment,
    Intercept,
    Router,
)

MAX_FILE_BYTES: Final = 16 * 1024 * 1024
# OpenLI's REST API takes start and end times as JSON integers in this range.
_MAX_UNIX_TIME: Final = 0xFFFFFFFF

_CASE_KEYS: Final = frozenset(
    {
        "reference",
        "title",
        "agency",
        "legal_basis",
        "valid_from",
        "valid_until",
        "status",
        "retention_days",
        "legal_hold",
        "notes",
        "analysts",
    }
)
_ROUTER_KEYS: Final = frozenset({"name", "address", "kind", "port", "format"})
# A CN2 intercept's claims; a jmirror intercept has none of them.
_CN2_KEYS: Final = ("analyzer_port", "virtual_networks", "targets")
_INTERCEPT_KEYS: Final = frozenset(
    {
        "liid",
        "case",
        "agencyid",
        "authcc",
        "delivcc",
        "user",
        "kind",
        "vendmirrorid",
        "sid",
        "starttime",
        "endtime",
        "routers",
        "keep_content",
        *_CN2_KEYS,
    }
)
_OPENLI_KEYS_IGNORED: Final = frozenset({"mediator", "accesstype", "radiusident", "mobileident"})
_TOP_LEVEL_KEYS: Final = ("cases", "routers", "intercepts")

# Model field names as the file calls them, for error messages.
_INTERCEPT_FILE_KEYS: Final = {
    "intercept_id": "vendmirrorid",
    "valid_from": "starttime",
    "valid_until": "endtime",
    "target_description": "user",
}


class RecordsFileError(ValueError):
    """The file cannot be imported; the message names the record and key at fault."""


@dataclass
class ImportSummary:
    """What an import did, per kind of record (``created``, ``updated``, ``unchanged``)."""

    sha256: str
    counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {kind: Counter() for kind in _TOP_LEVEL_KEYS}
    )

    def as_details(self) -> dict[str, Any]:
        return {"sha256": self.sha256} | {
            kind: {outcome: counts[outcome] for outcome in ("created", "updated", "unchanged")}
            for kind, counts in self.counts.items()
        }

    def __str__(self) -> str:
        return "; ".join(
            f"{kind}: {counts['created']} created, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged"
            for kind, counts in self.counts.items()
        )


# Reading -------------------------------------------------------------------------


class _Entry:
    """One record of the file, with typed accessors whose errors say where it is."""

    def __init__(
        self, kind: str, index: int, data: object, key: str, allowed: frozenset[str]
    ) -> None:
        self.where = f"{kind}[{index}]"
        if not isinstance(data, dict):
            raise RecordsFileError(f"{self.where}: not a JSON object")
        self.data: dict[str, Any] = data
        key_value = data.get(key)
        if isinstance(key_value, str) and key_value:
            self.where += f" ({key} {key_value})"
        unknown = sorted(set(data) - allowed - _OPENLI_KEYS_IGNORED)
        if unknown:
            raise self.error(unknown[0], "unknown key")

    def error(self, key: str | None, message: str) -> RecordsFileError:
        return RecordsFileError(
            f"{self.where}: {key}: {message}" if key else f"{self.where}: {message}"
        )

    def has(self, key: str) -> bool:
        return key in self.data

    def _required(self, key: str) -> Any:
        if key not in self.data:
            raise self.error(key, "missing")
        return self.data[key]

    def string(self, key: str) -> str:
        value = self._required(key)
        if not isinstance(value, str):
            raise self.error(key, "not a string")
        return value

    def integer(self, key: str) -> int:
        value = self._required(key)
        # bool is an int in Python, but true is not a port number in a file.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "not an integer")
        return value

    def boolean(self, key: str) -> bool:
        value = self._required(key)
        if not isinstance(value, bool):
            raise self.error(key, "not true or false")
        return value

    def identifier(self, key: str, maximum: int, what: str) -> int:
        """A mirror or session id: an integer, or a "0x..." string as in OpenLI's YAML."""
        value = self._required(key)
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.lower().startswith("0x"):
            try:
                number = int(value, 16)
            except ValueError:
                number = None
        if number is None or not 0 <= number <= maximum:
            raise self.error(key, f"not {what} (0 to {maximum:#x})")
        return number

    def unix_time(self, key: str) -> datetime:
        value = self._required(key)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= _MAX_UNIX_TIME
        ):
            raise self.error(key, "not a UNIX time (whole seconds since 1970)")
        return datetime.fromtimestamp(value, UTC)

    def utc_time(self, key: str) -> datetime:
        value = self._required(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return self.unix_time(key)
        if not isinstance(value, str):
            raise self.error(key, "not an ISO 8601 time or UNIX time")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise self.error(key, f"{value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise self.error(key, f"{value!r} has no UTC offset (end it with Z for UTC)")
        return parsed.astimezone(UTC)

    def names(self, key: str, what: str = "names") -> list[str]:
        value = self._required(key)
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise self.error(key, f"not a list of {what}")
        return value

    def port_or_null(self, key: str) -> int | None:
        if self._required(key) is None:
            return None
        return self.integer(key)


def _entries(
    document: dict[str, Any], kind: str, key: str, allowed: frozenset[str]
) -> list[_Entry]:
    items = document.get(kind, [])
    if not isinstance(items, list):
        raise RecordsFileError(f"{kind}: not a list")
    entries = [_Entry(kind, index, item, key, allowed) for index, item in enumerate(items)]
    seen: dict[str, str] = {}
    for entry in entries:
        value = entry.data.get(key)
        if not isinstance(value, str):
            continue
        if value in seen:
            raise entry.error(key, f"also at {seen[value]}")
        seen[value] = entry.where.split(" ", 1)[0]
    return entries


def parse_document(raw: bytes) -> dict[str, Any]:
    """The file's top-level object, checked for size, encoding and shape."""
    if len(raw) > MAX_FILE_BYTES:
        raise RecordsFileError(
            f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; refusing to read it"
        )
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordsFileError("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RecordsFileError(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise RecordsFileError(
            "the file must hold a JSON object with cases, routers and intercepts lists, "
            f"not {_json_type(document)}"
        )
    unknown = sorted(set(document) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise RecordsFileError(
            f"unknown top-level key {unknown[0]!r} (expected cases, routers, intercepts)"
        )
    return document


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# Validating and saving ------------------------------------------------------------


def _validation_message(
    error: ValidationError, file_keys: dict[str, str] | None = None
) -> tuple[str | None, str]:
    """The first key at fault and all its messages, with model field names translated
    to the file's keys."""
    if not hasattr(error, "error_dict"):
        return None, " ".join(error.messages)
    name, errors = next(iter(error.error_dict.items()))
    messages = " ".join(message for item in errors for message in item.messages)
    if name == NON_FIELD_ERRORS:
        return None, messages
    return (file_keys or {}).get(name, name), messages


def _full_clean(entry: _Entry, instance: models.Model, file_keys: dict[str, str] | None) -> None:
    try:
        instance.full_clean()
    except ValidationError as error:
        raise entry.error(*_validation_message(error, file_keys)) from None


def _apply(instance: models.Model, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(instance, name, value)


def _snapshot(instance: models.Model, names: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(instance, name) for name in names}


def _import_router(entry: _Entry, summary: ImportSummary) -> None:
    name = entry.string("name")
    values: dict[str, Any] = {"address": entry.string("address")}
    for key in ("kind", "format"):
        if entry.has(key):
            values[key] = entry.string(key)
    if entry.has("port"):
        values["port"] = entry.integer("port")
    router = Router.objects.filter(name=name).first() or Router(name=name)
    adding = router._state.adding
    kind = values.get("kind", router.kind)
    # Left out, the format follows the kind (a vRouter sends the Contrail header), and
    # a new vRouter listens on Contrail's analyzer port.
    if "format" not in values and (adding or kind != router.kind):
        values["format"] = Router.format_of(kind)
    if "port" not in values and adding:
        values["port"] = Router.default_port(kind)
    _save_if_changed(entry, router, values, None, summary.counts["routers"])


def _save_if_changed(
    entry: _Entry,
    instance: models.Model,
    values: dict[str, Any],
    file_keys: dict[str, str] | None,
    counts: Counter[str],
    *,
    related_changed: bool = False,
) -> None:
    """Validate ``values`` on ``instance`` and save it when it is new or they differ from
    what is stored: an unchanged record is not written, so its ``updated_at`` stays and
    no event is recorded. full_clean runs before the comparison because it normalizes
    (an IPv6 address in capitals is the same address). ``related_changed`` counts the
    record as updated when only its relations (assignments, routers) change."""
    adding = instance._state.adding
    before = _snapshot(instance, values)
    _apply(instance, values)
    _full_clean(entry, instance, file_keys)
    changed = adding or _snapshot(instance, values) != before
    if changed:
        instance.save()
    counts["created" if adding else "updated" if changed or related_changed else "unchanged"] += 1


def _import_case(entry: _Entry, summary: ImportSummary) -> tuple[Case, bool]:
    reference = entry.string("reference")
    case = Case.objects.filter(reference=reference).first() or Case(reference=reference)
    values: dict[str, Any] = {
        "agency": entry.string("agency"),
        "valid_from": entry.utc_time("valid_from"),
        "valid_until": entry.utc_time("valid_until"),
    }
    for key in ("title", "legal_basis", "status", "notes"):
        if entry.has(key):
            values[key] = entry.string(key)
    if entry.has("retention_days"):
        values["retention_days"] = entry.integer("retention_days")
    if entry.has("legal_hold"):
        values["legal_hold"] = entry.boolean("legal_hold")
    if case._state.adding and "title" not in values:
        values["title"] = reference

    analysts: list[Any] | None = None
    if entry.has("analysts"):
        users = get_user_model()._default_manager
        analysts = []
        for username in entry.names("analysts"):
            user = users.filter(username=username).first()
            if user is None:
                raise entry.error("analysts", f"no user named {username!r}")
            analysts.append(user)
    assigned = {a.user_id: a for a in case.assignments.all()} if not case._state.adding else {}
    wanted = {user.pk: user for user in analysts} if analysts is not None else None
    assignments_change = wanted is not None and set(wanted) != set(assigned)

    window_before = (case.valid_from, case.valid_until) if not case._state.adding else None
    _save_if_changed(
        entry, case, values, None, summary.counts["cases"], related_changed=assignments_change
    )
    if wanted is not None and assignments_change:
        # One row at a time, not analysts.set(): bulk writes would send no save or
        # delete signals, and every assignment change must reach the audit log.
        for user_id, assignment in assigned.items():
            if user_id not in wanted:
                assignment.delete()
        for user_id, user in wanted.items():
            if user_id not in assigned:
                CaseAssignment.objects.create(case=case, user=user)
    window_changed = window_before is not None and window_before != (
        case.valid_from,
        case.valid_until,
    )
    return case, window_changed


def _claim_values(entry: _Entry, stored: Intercept) -> dict[str, Any]:
    """What the intercept claims: a mirror id (and session id) for jmirror, the CN2
    claims for CN2; the other kind's claims cleared."""
    kind = entry.string("kind") if entry.has("kind") else Intercept.Kind.JMIRROR
    if kind not in Intercept.Kind.values:
        raise entry.error("kind", f"{kind!r} is not a kind of intercept (jmirror or cn2)")
    if kind == Intercept.Kind.JMIRROR:
        for key in _CN2_KEYS:
            if entry.has(key):
                raise entry.error(key, 'only a CN2 intercept ("kind": "cn2") has this key')
        values: dict[str, Any] = {
            "kind": kind,
            "intercept_id": entry.identifier(
                "vendmirrorid", MAX_INTERCEPT_ID, "a 30-bit mirror id"
            ),
            "analyzer_port": None,
            "virtual_networks": [],
            "targets": [],
        }
        if entry.has("sid"):
            values["sid"] = (
                None
                if entry.data["sid"] is None
                else entry.identifier("sid", MAX_SESSION_ID, "a 32-bit session id or null")
            )
        return values
    if entry.has("vendmirrorid"):
        raise entry.error(
            "vendmirrorid",
            "a CN2 intercept has no mirror id (it claims by analyzer_port, virtual_networks "
            "and targets)",
        )
    if entry.has("sid"):
        raise entry.error("sid", "a CN2 intercept has no session id")
    keep = not stored._state.adding and stored.kind == Intercept.Kind.CN2
    values = {
        "kind": kind,
        "intercept_id": None,
        "sid": None,
        "analyzer_port": stored.analyzer_port if keep else None,
        "virtual_networks": stored.virtual_networks if keep else [],
        "targets": stored.targets if keep else [],
    }
    if entry.has("analyzer_port"):
        values["analyzer_port"] = entry.port_or_null("analyzer_port")
    if entry.has("virtual_networks"):
        values["virtual_networks"] = entry.names("virtual_networks", "VN names")
    if entry.has("targets"):
        values["targets"] = entry.names("targets", "addresses or prefixes")
    return values


def _intercept_values(entry: _Entry, case: Case, stored: Intercept) -> dict[str, Any]:
    adding = stored._state.adding
    values: dict[str, Any] = {
        "case": case,
        "authcc": entry.string("authcc"),
        "delivcc": entry.string("delivcc"),
    }
    values |= _claim_values(entry, stored)
    if entry.has("agencyid"):
        agency = entry.string("agencyid")
        if agency != case.agency:
            raise entry.error(
                "agencyid",
                f"{agency!r} is not the agency of case {case.reference} ({case.agency!r})",
            )
    if entry.has("user"):
        values["target_description"] = entry.string("user")
    if entry.has("keep_content"):
        values["keep_content"] = entry.boolean("keep_content")
    if entry.has("starttime"):
        values["valid_from"] = entry.unix_time("starttime")
    elif adding:
        values["valid_from"] = case.valid_from
    if entry.has("endtime"):
        values["valid_until"] = entry.unix_time("endtime")
    elif adding:
        values["valid_until"] = case.valid_until
    return values


def _import_intercept(entry: _Entry, summary: ImportSummary) -> None:
    liid = entry.string("liid")
    reference = entry.string("case")
    case = Case.objects.filter(reference=reference).first()
    if case is None:
        raise entry.error("case", f"no case with reference {reference!r}")
    intercept = Intercept.objects.filter(liid=liid).prefetch_related(
        "routers"
    ).first() or Intercept(liid=liid)
    adding = intercept._state.adding
    values = _intercept_values(entry, case, intercept)

    stored_routers = frozenset() if adding else frozenset(r.pk for r in intercept.routers.all())
    router_ids = stored_routers
    if entry.has("routers"):
        names = entry.names("routers")
        found = dict(Router.objects.filter(name__in=names).values_list("name", "pk"))
        for name in names:
            if name not in found:
                raise entry.error("routers", f"no router named {name!r}")
        router_ids = frozenset(found.values())

    before = _snapshot(intercept, (name for name in values if name != "case"))
    before["case_id"] = None if adding else intercept.case_id
    _apply(intercept, values)
    # The routers are set after the row is saved; the overlap check must see these.
    intercept.pending_router_ids = router_ids
    try:
        intercept.full_clean()
    except ValidationError as error:
        raise entry.error(*_validation_message(error, _INTERCEPT_FILE_KEYS)) from None

    after = _snapshot(intercept, (name for name in values if name != "case"))
    after["case_id"] = intercept.case_id
    changed = adding or after != before
    if changed:
        intercept.save()
    routers_changed = router_ids != stored_routers
    if routers_changed:
        intercept.routers.set(router_ids)
    outcome = "created" if adding else "updated" if changed or routers_changed else "unchanged"
    summary.counts["intercepts"][outcome] += 1


def _check_untouched_intercepts(case_entry: _Entry, case: Case, in_file: set[str]) -> None:
    """A case's new window must still hold the intercepts the file does not mention."""
    for intercept in case.intercepts.exclude(liid__in=in_file).select_related("case"):
        intercept.case = case
        try:
            intercept.full_clean()
        except ValidationError as error:
            key, message = _validation_message(error, _INTERCEPT_FILE_KEYS)
            raise case_entry.error(
                None, f"intercept {intercept.liid}: {key}: {message}" if key else message
            ) from None


def import_records(raw: bytes, *, source: str) -> ImportSummary:
    """Import a records file (its bytes; ``source`` names it in the audit log) in one
    transaction, and record one ``intercepts.import`` audit event with the counts and
    the file's SHA-256. On any error nothing is kept, an ``intercepts.import_failed``
    event records the attempt, and :class:`RecordsFileError` says what is wrong.

    Record changes are audited by the model signals, so call this inside
    :func:`jmirror_web.audit.log.acting_as` to attribute them."""
    summary = ImportSummary(sha256=hashlib.sha256(raw).hexdigest())
    try:
        document = parse_document(raw)
        routers = _entries(document, "routers", "name", _ROUTER_KEYS)
        cases = _entries(document, "cases", "reference", _CASE_KEYS)
        intercepts = _entries(document, "intercepts", "liid", _INTERCEPT_KEYS)
        with transaction.atomic():
            for entry in routers:
                _import_router(entry, summary)
            reshaped: list[tuple[_Entry, Case]] = []
            for entry in cases:
                case, window_changed = _import_case(entry, summary)
                if window_changed:
                    reshaped.append((entry, case))
            for entry in intercepts:
                _import_intercept(entry, summary)
            liids = {entry.data["liid"] for entry in intercepts}
            for entry, case in reshaped:
                _check_untouched_intercepts(entry, case, liids)
            record("intercepts.import", details={"source": source} | summary.as_details())
    except RecordsFileError as error:
        record(
            "intercepts.import_failed",
            details={"source": source, "sha256": summary.sha256, "error": str(error)},
        )
        raise
    return summary


# Writing -------------------------------------------------------------------------


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as the file writes times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def export_records() -> dict[str, Any]:
    """Every case, router and intercept in the file's format, ordered by key."""
    cases = [
        {
            "reference": case.reference,
            "title": case.title,
            "agency": case.agency,
            "legal_basis": case.legal_basis,
            "valid_from": utc_iso(case.valid_from),
            "valid_until": utc_iso(case.valid_until),
            "status": case.status,
            "retention_days": case.retention_days,
            "legal_hold": case.legal_hold,
            "notes": case.notes,
            "analysts": sorted(a.user.get_username() for a in case.assignments.all()),
        }
        for case in Case.objects.order_by("reference").prefetch_related("assignments__user")
    ]
    routers = [
        {
            "name": router.name,
            "address": router.address,
            "kind": router.kind,
            "port": router.port,
            "format": router.format,
        }
        for router in Router.objects.order_by("name")
    ]
    intercepts = [
        _intercept_record(intercept)
        for intercept in Intercept.objects.order_by("liid")
        .select_related("case")
        .prefetch_related("routers")
    ]
    return {"cases": cases, "routers": routers, "intercepts": intercepts}


def _intercept_record(intercept: Intercept) -> dict[str, Any]:
    """One intercept as the file writes it: a jmirror intercept with OpenLI's keys and
    no ``kind``; a CN2 intercept with ``kind`` and its claims in place of the ids."""
    claims: dict[str, Any] = (
        {
            "kind": intercept.kind,
            "analyzer_port": intercept.analyzer_port,
            "virtual_networks": list(intercept.virtual_networks),
            "targets": list(intercept.targets),
        }
        if intercept.is_cn2
        else {"vendmirrorid": intercept.intercept_id, "sid": intercept.sid}
    )
    return (
        {
            "liid": intercept.liid,
            "case": intercept.case.reference,
            "agencyid": intercept.case.agency,
            "authcc": intercept.authcc,
            "delivcc": intercept.delivcc,
            "user": intercept.target_description,
        }
        | claims
        | {
            "starttime": math.ceil(intercept.valid_from.timestamp()),
            "endtime": math.floor(intercept.valid_until.timestamp()),
            "routers": sorted(router.name for router in intercept.routers.all()),
            "keep_content": intercept.keep_content,
        }
    )


def records_text(records: dict[str, Any]) -> str:
    """Records (from :func:`export_records`) as the JSON text of a records file."""
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
