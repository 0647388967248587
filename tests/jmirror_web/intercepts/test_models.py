from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from jmirror_web.intercepts.models import (
    MAX_INTERCEPT_ID,
    MAX_SESSION_ID,
    Case,
    Intercept,
    InterceptScope,
    Router,
)
from tests.factories import make_case, make_intercept, make_router

pytestmark = pytest.mark.django_db


def unsaved_intercept(case: Case, **fields: object) -> Intercept:
    values: dict[str, object] = {
        "case": case,
        "liid": "NZ-0042",
        "intercept_id": 0x8000,
        "valid_from": case.valid_from,
        "valid_until": case.valid_until,
    }
    values.update(fields)
    return Intercept(**values)


def test_a_case_is_in_force_only_when_active_and_inside_its_window():
    case = make_case()
    inside = case.valid_from + timedelta(hours=1)
    assert case.is_in_force(inside)
    assert not case.is_in_force(case.valid_from - timedelta(seconds=1))
    assert not case.is_in_force(case.valid_until)  # the warrant ends at valid_until
    for status in (Case.Status.DRAFT, Case.Status.SUSPENDED, Case.Status.CLOSED):
        case.status = status
        assert not case.is_in_force(inside)


def test_an_intercept_is_in_force_only_inside_its_own_window_and_its_case():
    case = make_case()
    intercept = make_intercept(
        case, valid_from=case.valid_from + timedelta(hours=2), valid_until=case.valid_until
    )
    assert not intercept.is_in_force(case.valid_from + timedelta(hours=1))
    assert intercept.is_in_force(case.valid_from + timedelta(hours=3))
    case.status = Case.Status.SUSPENDED
    assert not intercept.is_in_force(case.valid_from + timedelta(hours=3))


def test_a_case_must_end_after_it_starts():
    case = make_case()
    case.valid_until = case.valid_from
    with pytest.raises(ValidationError) as raised:
        case.full_clean()
    assert raised.value.message_dict["valid_until"] == ["The warrant must end after it starts."]


def test_the_database_refuses_an_empty_case_window_too():
    case = make_case()
    with pytest.raises(IntegrityError), transaction.atomic():
        Case.objects.filter(pk=case.pk).update(valid_until=case.valid_from)


def test_case_references_are_unique():
    make_case(reference="W-1")
    with pytest.raises(ValidationError) as raised:
        Case(
            reference="W-1",
            title="t",
            agency="a",
            valid_from=make_case().valid_from,
            valid_until=make_case().valid_until,
        ).full_clean()
    assert "reference" in raised.value.message_dict


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("intercept_id", MAX_INTERCEPT_ID + 1, "less than or equal to 1073741823"),
        ("intercept_id", -1, "greater than or equal to 0"),
        ("sid", MAX_SESSION_ID + 1, "less than or equal to 4294967295"),
        ("liid", "has space", "A LIID is 1 to 25 letters"),
        ("liid", "X" * 26, "at most 25 characters"),
        ("authcc", "nz", "ISO 3166-1"),
        ("delivcc", "NZL", "ISO 3166-1"),
    ],
)
def test_intercept_fields_are_validated(field: str, value: object, message: str):
    intercept = unsaved_intercept(make_case(), **{field: value})
    with pytest.raises(ValidationError) as raised:
        intercept.full_clean()
    assert any(message in text for text in raised.value.message_dict[field])


def test_the_largest_ids_are_accepted():
    unsaved_intercept(make_case(), intercept_id=MAX_INTERCEPT_ID, sid=MAX_SESSION_ID).full_clean()


def test_an_intercepts_window_must_lie_inside_its_cases():
    case = make_case()
    intercept = unsaved_intercept(case, valid_until=case.valid_until + timedelta(seconds=1))
    with pytest.raises(ValidationError) as raised:
        intercept.full_clean()
    assert f"inside case {case.reference}'s validity" in raised.value.message_dict["valid_from"][0]


def test_an_intercept_must_end_after_it_starts():
    case = make_case()
    intercept = unsaved_intercept(case, valid_until=case.valid_from)
    with pytest.raises(ValidationError) as raised:
        intercept.full_clean()
    assert raised.value.message_dict["valid_until"] == ["The intercept must end after it starts."]


def test_a_second_intercept_that_could_claim_the_same_packets_is_refused_naming_the_first():
    case = make_case()
    make_intercept(case, liid="NZ-0001", intercept_id=0x8000)
    second = unsaved_intercept(case, liid="NZ-0002", intercept_id=0x8000)
    with pytest.raises(ValidationError) as raised:
        second.full_clean()
    assert raised.value.messages == [
        f"Intercept NZ-0001 (case {case.reference}) already claims mirror id 0x8000 from an "
        "overlapping set of routers in an overlapping window; two intercepts must never claim "
        "the same packet."
    ]


@pytest.mark.parametrize(
    ("first", "second", "conflict"),
    [
        pytest.param({}, {}, True, id="same-id-unpinned"),
        pytest.param({"sid": 1}, {"sid": 1}, True, id="same-sid"),
        pytest.param({"sid": 1}, {"sid": 2}, False, id="different-sids"),
        pytest.param({"sid": 1}, {}, True, id="unpinned-covers-pinned"),
        pytest.param({}, {"sid": 2}, True, id="pinned-inside-unpinned"),
        pytest.param({"intercept_id": 1}, {"intercept_id": 2}, False, id="different-ids"),
        pytest.param({"routers": "a"}, {"routers": "b"}, False, id="disjoint-routers"),
        pytest.param({"routers": "a"}, {"routers": "ab"}, True, id="shared-router"),
        pytest.param({"routers": "a"}, {}, True, id="any-router-covers-one"),
        pytest.param({"window": (0, 10)}, {"window": (10, 20)}, False, id="adjacent-windows"),
        pytest.param({"window": (0, 11)}, {"window": (10, 20)}, True, id="overlapping-windows"),
    ],
)
def test_the_overlap_rule(first: dict[str, object], second: dict[str, object], conflict: bool):
    case = make_case()
    routers = {"a": make_router(), "b": make_router()}

    def scope_of(spec: dict[str, object]) -> tuple[dict[str, object], frozenset[int]]:
        start, end = spec.get("window", (0, 20))  # type: ignore[misc]
        fields: dict[str, object] = {
            "intercept_id": spec.get("intercept_id", 0x8000),
            "sid": spec.get("sid"),
            "valid_from": case.valid_from + timedelta(hours=start),
            "valid_until": case.valid_from + timedelta(hours=end),
        }
        chosen = frozenset(routers[name].pk for name in str(spec.get("routers", "")))
        return fields, chosen

    fields, chosen = scope_of(first)
    make_intercept(
        case, liid="FIRST", routers=[Router.objects.get(pk=pk) for pk in chosen], **fields
    )
    fields, chosen = scope_of(second)
    candidate = unsaved_intercept(case, liid="SECOND", **fields)
    scope = InterceptScope(
        candidate.intercept_id,
        candidate.sid,
        chosen,
        candidate.valid_from,
        candidate.valid_until,
    )
    if conflict:
        with pytest.raises(ValidationError, match="Intercept FIRST"):
            candidate.check_no_conflict(scope)
    else:
        candidate.check_no_conflict(scope)


def test_an_intercept_does_not_conflict_with_itself_when_changed():
    intercept = make_intercept(intercept_id=0x10)
    intercept.target_description = "changed"
    intercept.full_clean()


def test_a_case_with_intercepts_cannot_be_deleted_while_they_exist():
    intercept = make_intercept()
    with pytest.raises(Exception, match="protected"):
        intercept.case.delete()
