"""manage.py intercepts import / export: the records file, its round trip, idempotence,
and every way a file is refused without changing anything."""

from __future__ import annotations

import copy
import getpass
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from jmirror_web.audit.models import AuditEvent, verify_chain
from jmirror_web.intercepts.models import Case, CaseAssignment, Intercept, Router
from jmirror_web.intercepts.records_file import export_records
from tests.factories import assign, make_case, make_intercept, make_router, make_user

pytestmark = pytest.mark.django_db

DEC_1 = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
MAR_1 = int(datetime(2027, 3, 1, tzinfo=UTC).timestamp())


def openli_style_document() -> dict[str, Any]:
    """Two intercepts on the same mirror id from different routers: allowed, and only
    told apart by the routers the file gives them."""
    return {
        "cases": [
            {
                "reference": "NZ-2026-001",
                "title": "Operation Grey",
                "agency": "Police",
                "valid_from": "2026-12-01T00:00:00Z",
                "valid_until": "2027-03-01T00:00:00Z",
                "status": "active",
                "analysts": ["alice"],
            }
        ],
        "routers": [
            {"name": "mx1", "address": "192.0.2.1", "kind": "mx", "port": 6502},
            {"name": "erx1", "address": "2001:db8::1", "kind": "e-series", "port": 5000},
        ],
        "intercepts": [
            {
                "liid": "NZ-0042",
                "case": "NZ-2026-001",
                "agencyid": "Police",
                "authcc": "NZ",
                "delivcc": "NZ",
                "user": "skeletor",
                "vendmirrorid": 0x8000,
                "starttime": DEC_1,
                "endtime": MAR_1,
                "routers": ["mx1"],
                "mediator": 6001,
                "accesstype": "LAN",
            },
            {
                "liid": "NZ-0043",
                "case": "NZ-2026-001",
                "agencyid": "Police",
                "authcc": "NZ",
                "delivcc": "NZ",
                "user": "lexluthor",
                "vendmirrorid": "0x8000",
                "sid": 0x90,
                "routers": ["erx1"],
            },
        ],
    }


def write(tmp_path: Path, document: object, name: str = "records.json") -> Path:
    path = tmp_path / name
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    return path


def run_import(path: Path) -> str:
    out = io.StringIO()
    call_command("intercepts", "import", str(path), stdout=out)
    return out.getvalue()


def run_export() -> str:
    out = io.StringIO()
    call_command("intercepts", "export", stdout=out)
    return out.getvalue()


def database_state() -> tuple[dict[str, Any], list[tuple[int, int]], int]:
    assignments = sorted(CaseAssignment.objects.values_list("case_id", "user_id"))
    return export_records(), assignments, AuditEvent.objects.count()


@pytest.fixture
def alice() -> None:
    make_user(username="alice")


def test_an_export_imported_into_an_empty_database_exports_the_same_json(tmp_path):
    analyst = make_user(username="carol")
    case = make_case(reference="NZ-1", legal_basis="s 53 Search and Surveillance Act")
    assign(analyst, case)
    mx, erx = make_router(name="mx1"), make_router(name="erx1", address="2001:db8::7")
    make_intercept(case, liid="NZ-0001", intercept_id=0x300, sid=0x90, routers=[mx])
    make_intercept(
        case, liid="NZ-0002", intercept_id=0x300, routers=[erx], target_description="bob"
    )
    make_intercept(make_case(reference="NZ-2", legal_hold=True), liid="NZ-0003", keep_content=False)
    first = run_export()

    Intercept.objects.all().delete()
    Case.objects.all().delete()
    Router.objects.all().delete()
    assert export_records() == {"cases": [], "routers": [], "intercepts": []}
    run_import(write(tmp_path, first.encode()))

    assert run_export() == first
    exported = json.loads(first)
    assert exported["cases"][0]["analysts"] == ["carol"]
    assert exported["intercepts"][0]["vendmirrorid"] == 0x300
    assert exported["intercepts"][0]["agencyid"] == "Test agency"


def test_the_export_writes_times_as_openli_does_and_cases_in_iso_8601_utc(tmp_path, alice):
    run_import(write(tmp_path, openli_style_document()))
    path = tmp_path / "out.json"

    call_command("intercepts", "export", str(path))

    exported = json.loads(path.read_text())
    assert exported["cases"][0]["valid_from"] == "2026-12-01T00:00:00Z"
    assert exported["intercepts"][0]["starttime"] == DEC_1
    assert exported["intercepts"][1]["sid"] == 0x90
    assert AuditEvent.objects.last().action == "intercepts.export"


def test_an_openli_style_file_creates_its_records_with_the_documented_mapping(tmp_path, alice):
    output = run_import(write(tmp_path, openli_style_document()))

    assert "cases: 1 created, 0 updated, 0 unchanged" in output
    first, second = Intercept.objects.order_by("liid")
    assert (first.intercept_id, first.target_description, first.sid) == (0x8000, "skeletor", None)
    assert [router.name for router in first.routers.all()] == ["mx1"]
    assert (second.intercept_id, second.sid) == (0x8000, 0x90)
    # No starttime/endtime: the case's validity.
    assert (second.valid_from, second.valid_until) == (
        second.case.valid_from,
        second.case.valid_until,
    )
    case = Case.objects.get()
    assert [user.username for user in case.analysts.all()] == ["alice"]
    assert Router.objects.get(name="erx1").port == 5000


def test_importing_the_same_file_twice_changes_nothing_and_records_only_the_summary(
    tmp_path, alice
):
    path = write(tmp_path, openli_style_document())
    run_import(path)
    before = database_state()
    stamps = list(Intercept.objects.values_list("updated_at", flat=True))

    output = run_import(path)

    records, assignments, events = database_state()
    assert (records, assignments) == before[:2]
    assert events == before[2] + 1
    assert list(Intercept.objects.values_list("updated_at", flat=True)) == stamps
    summary = AuditEvent.objects.last()
    assert summary.action == "intercepts.import"
    assert summary.details["intercepts"] == {"created": 0, "updated": 0, "unchanged": 2}
    assert "intercepts: 0 created, 0 updated, 2 unchanged" in output


def test_importing_a_changed_file_updates_the_records_and_audits_each_change(tmp_path, alice):
    run_import(write(tmp_path, openli_style_document()))
    make_user(username="dave")
    changed = openli_style_document()
    changed["cases"][0]["title"] = "Operation Blue"
    changed["cases"][0]["analysts"] = ["dave"]
    changed["routers"].append({"name": "mx2", "address": "192.0.2.2"})
    changed["intercepts"][0]["routers"] = ["mx2"]
    changed["intercepts"][1]["sid"] = 0x91
    first_new_event = AuditEvent.objects.last().pk + 1

    run_import(write(tmp_path, changed))

    assert Case.objects.get().title == "Operation Blue"
    assert [user.username for user in Case.objects.get().analysts.all()] == ["dave"]
    assert Intercept.objects.get(liid="NZ-0043").sid == 0x91
    actions = list(
        AuditEvent.objects.filter(pk__gte=first_new_event).values_list("action", flat=True)
    )
    assert sorted(actions) == sorted(
        [
            "case.change",
            "router.create",
            "caseassignment.delete",
            "caseassignment.create",
            "intercept.routers.remove",
            "intercept.routers.add",
            "intercept.change",
            "intercepts.import",
        ]
    )
    assert AuditEvent.objects.last().details["cases"] == {
        "created": 0,
        "updated": 1,
        "unchanged": 0,
    }
    assert verify_chain() is None


def test_the_changes_of_an_import_are_attributed_to_the_operating_system_user(tmp_path, alice):
    last_before = AuditEvent.objects.last().pk

    run_import(write(tmp_path, openli_style_document()))

    events = AuditEvent.objects.filter(pk__gt=last_before)
    names = set(events.values_list("actor_name", flat=True))
    assert names == {f"os:{getpass.getuser()}"}


def test_a_case_window_that_no_longer_holds_a_stored_intercept_is_refused(tmp_path, alice):
    run_import(write(tmp_path, openli_style_document()))
    shrunk = openli_style_document()
    shrunk["cases"][0]["valid_until"] = "2027-02-01T00:00:00Z"
    del shrunk["intercepts"]
    before = database_state()

    with pytest.raises(CommandError) as refused:
        run_import(path := write(tmp_path, shrunk))

    assert str(refused.value) == (
        f"{path}: cases[0] (reference NZ-2026-001): intercept NZ-0042: starttime: The "
        "intercept's window must lie inside case NZ-2026-001's validity (2026-12-01 00:00 "
        "to 2027-02-01 00:00 UTC)."
    )
    assert database_state()[:2] == before[:2]


def _set(path: str, value: Any):
    """A change to the document: set the value at a dotted path (list indexes as numbers)."""

    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


def _delete(path: str):
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return change


def _append(kind: str, item: Any):
    def change(document: dict[str, Any]) -> None:
        document[kind].append(item)

    return change


CASE = "cases[0] (reference NZ-2026-001)"
MX1 = "routers[0] (name mx1)"
SECOND = "intercepts[1] (liid NZ-0043)"

BAD_DOCUMENTS = [
    pytest.param(
        _set("intercepts.1.colour", "red"), f"{SECOND}: colour: unknown key", id="unknown key"
    ),
    pytest.param(
        _delete("intercepts.1.vendmirrorid"), f"{SECOND}: vendmirrorid: missing", id="missing"
    ),
    pytest.param(_delete("cases.0.agency"), f"{CASE}: agency: missing", id="case missing agency"),
    pytest.param(
        _set("intercepts.1.starttime", "yesterday"),
        f"{SECOND}: starttime: not a UNIX time (whole seconds since 1970)",
        id="time as text",
    ),
    pytest.param(
        _set("intercepts.1.endtime", DEC_1 + 0.5),
        f"{SECOND}: endtime: not a UNIX time (whole seconds since 1970)",
        id="fractional time",
    ),
    pytest.param(
        _set("intercepts.1.vendmirrorid", 2**30),
        f"{SECOND}: vendmirrorid: not a 30-bit mirror id (0 to 0x3fffffff)",
        id="mirror id over 30 bits",
    ),
    pytest.param(
        _set("intercepts.1.vendmirrorid", "0xzz"),
        f"{SECOND}: vendmirrorid: not a 30-bit mirror id (0 to 0x3fffffff)",
        id="mirror id bad hex",
    ),
    pytest.param(
        _set("intercepts.1.sid", -1),
        f"{SECOND}: sid: not a 32-bit session id or null (0 to 0xffffffff)",
        id="negative sid",
    ),
    pytest.param(
        _set("intercepts.1.authcc", "nz"),
        f"{SECOND}: authcc: Use the two capital letters of an ISO 3166-1 country code.",
        id="country code",
    ),
    pytest.param(
        _set("intercepts.1.user", 42), f"{SECOND}: user: not a string", id="user not a string"
    ),
    pytest.param(
        _set("intercepts.1.case", "NZ-9999"),
        f"{SECOND}: case: no case with reference 'NZ-9999'",
        id="unknown case",
    ),
    pytest.param(
        _set("intercepts.1.routers", ["mx9"]),
        f"{SECOND}: routers: no router named 'mx9'",
        id="unknown router",
    ),
    pytest.param(
        _set("intercepts.1.routers", "mx1"),
        f"{SECOND}: routers: not a list of names",
        id="routers not a list",
    ),
    pytest.param(
        _set("intercepts.1.agencyid", "Spooks"),
        f"{SECOND}: agencyid: 'Spooks' is not the agency of case NZ-2026-001 ('Police')",
        id="agency of another case",
    ),
    pytest.param(
        _set("intercepts.1.endtime", MAR_1 + 1),
        # The model reports the window on its start, whichever end is outside.
        f"{SECOND}: starttime: The intercept's window must lie inside case "
        "NZ-2026-001's validity (2026-12-01 00:00 to 2027-03-01 00:00 UTC).",
        id="window outside the case",
    ),
    pytest.param(
        _set("intercepts.1.routers", ["mx1"]),
        f"{SECOND}: Intercept NZ-0042 (case NZ-2026-001) already claims mirror id 0x8000 "
        "session 0x90 from an overlapping set of routers in an overlapping window; two "
        "intercepts must never claim the same packet.",
        id="overlapping intercepts",
    ),
    pytest.param(
        _set("intercepts.1.liid", "NZ-0042"),
        "intercepts[1] (liid NZ-0042): liid: also at intercepts[0]",
        id="duplicate liid",
    ),
    pytest.param(
        _set("intercepts.1.liid", "NZ 0043"),
        "intercepts[1] (liid NZ 0043): liid: A LIID is 1 to 25 letters, digits, dots, "
        "dashes or underscores.",
        id="bad liid",
    ),
    pytest.param(
        _append("intercepts", "NZ-0044"), "intercepts[2]: not a JSON object", id="not an object"
    ),
    pytest.param(
        _set("cases.0.analysts", ["alice", "mallory"]),
        f"{CASE}: analysts: no user named 'mallory'",
        id="unknown analyst",
    ),
    pytest.param(
        _set("cases.0.valid_from", "2026-12-01T00:00:00"),
        f"{CASE}: valid_from: '2026-12-01T00:00:00' has no UTC offset (end it with Z for UTC)",
        id="naive time",
    ),
    pytest.param(
        _set("cases.0.valid_from", "1 December"),
        f"{CASE}: valid_from: '1 December' is not an ISO 8601 time",
        id="not a time",
    ),
    pytest.param(
        _set("cases.0.valid_until", "2026-11-01T00:00:00Z"),
        f"{CASE}: valid_until: The warrant must end after it starts.",
        id="case window reversed",
    ),
    pytest.param(
        _set("cases.0.status", "open"),
        f"{CASE}: status: Value 'open' is not a valid choice.",
        id="bad status",
    ),
    pytest.param(
        _set("cases.0.legal_hold", "yes"), f"{CASE}: legal_hold: not true or false", id="bool"
    ),
    pytest.param(_set("routers.0.port", True), f"{MX1}: port: not an integer", id="port is bool"),
    pytest.param(
        _set("routers.0.port", 70000),
        f"{MX1}: port: Ensure this value is less than or equal to 65535.",
        id="port out of range",
    ),
    pytest.param(
        _set("routers.0.address", "mx1.example.net"),
        f"{MX1}: address: Enter a valid IPv4 or IPv6 address.",
        id="bad address",
    ),
    pytest.param(
        _set("routers.1.address", "192.0.2.1"),
        "routers[1] (name erx1): address: Router with this Address already exists.",
        id="address taken",
    ),
    pytest.param(_set("cases", {}), "cases: not a list", id="list not a list"),
    pytest.param(
        _set("interceps", []),
        "unknown top-level key 'interceps' (expected cases, routers, intercepts)",
        id="unknown top-level key",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD_DOCUMENTS)
def test_a_bad_file_is_refused_naming_the_record_and_key_and_nothing_is_imported(
    tmp_path, alice, change, message
):
    run_import(write(tmp_path, openli_style_document(), "first.json"))
    document = openli_style_document()
    # Changes that would be kept if the import did not run as one transaction.
    document["cases"][0]["title"] = "Changed"
    document["routers"].append({"name": "mx2", "address": "192.0.2.2"})
    change(document)
    path = write(tmp_path, document)
    records, assignments, events = database_state()

    with pytest.raises(CommandError) as refused:
        run_import(path)

    assert str(refused.value) == f"{path}: {message}"
    assert refused.value.returncode == 2
    assert database_state() == (records, assignments, events + 1)
    failure = AuditEvent.objects.last()
    assert failure.action == "intercepts.import_failed"
    assert failure.details["error"] == message
    assert verify_chain() is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            b"{not json",
            "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            id="not JSON",
        ),
        pytest.param(b"\xff\xfe", "not UTF-8 text", id="not UTF-8"),
        pytest.param(
            b"[]",
            "the file must hold a JSON object with cases, routers and intercepts lists, not a list",
            id="a list",
        ),
        pytest.param(
            b'"cases"',
            "the file must hold a JSON object with cases, routers and intercepts lists, "
            "not a string",
            id="a string",
        ),
    ],
)
def test_a_file_that_is_not_a_records_object_is_refused(tmp_path, content, message):
    path = write(tmp_path, content)
    before = database_state()

    with pytest.raises(CommandError) as refused:
        run_import(path)

    assert str(refused.value) == f"{path}: {message}"
    assert refused.value.returncode == 2
    assert database_state()[:2] == before[:2]


def test_a_file_larger_than_16_mib_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    path.write_bytes(b" " * (16 * 1024 * 1024 + 1))

    with pytest.raises(CommandError) as refused:
        run_import(path)

    assert str(refused.value) == f"{path}: the file is larger than 16 MiB; refusing to read it"
    assert refused.value.returncode == 2
    assert AuditEvent.objects.last().action == "intercepts.import_failed"


def test_a_missing_file_is_refused(tmp_path):
    path = tmp_path / "absent.json"

    with pytest.raises(CommandError) as refused:
        run_import(path)

    assert str(refused.value) == f"{path}: cannot read: No such file or directory"
    assert refused.value.returncode == 2


def test_intercepts_are_imported_after_the_cases_and_routers_they_name(tmp_path, alice):
    document = openli_style_document()
    new_case = copy.deepcopy(document["cases"][0]) | {"reference": "NZ-2026-002"}
    document["cases"].append(new_case)
    document["intercepts"][1]["case"] = "NZ-2026-002"
    document["intercepts"][1]["starttime"] = DEC_1 + int(timedelta(days=1).total_seconds())

    run_import(write(tmp_path, document))

    intercept = Intercept.objects.get(liid="NZ-0043")
    assert intercept.case.reference == "NZ-2026-002"
    assert intercept.valid_from == datetime(2026, 12, 2, tzinfo=UTC)
