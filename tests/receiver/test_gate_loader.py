import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jmirror_web.intercepts.models import Case
from receiver.gate import Claim
from receiver.gate_loader import gate_fingerprint, load_gate, nanoseconds
from tests.factories import make_case, make_intercept, make_router

pytestmark = pytest.mark.django_db


def now_ns() -> int:
    return time.time_ns()


def test_it_claims_a_packet_for_an_intercept_in_force():
    router = make_router(address="192.0.2.10")
    intercept = make_intercept(intercept_id=0x300)
    claim = load_gate().claim("192.0.2.10", 0x300, 0x90, now_ns())
    assert isinstance(claim, Claim)
    assert claim.router.router_id == router.pk
    assert claim.intercept.intercept_id_pk == intercept.pk
    assert claim.intercept.liid == intercept.liid
    assert claim.intercept.case_reference == intercept.case.reference
    assert claim.intercept.keep_content is True


def test_it_drops_a_packet_from_an_unregistered_router():
    make_router(address="192.0.2.10")
    make_intercept(intercept_id=0x300)
    assert load_gate().claim("192.0.2.11", 0x300, 0x90, now_ns()) == "unknown_router"


def test_it_drops_packets_of_a_suspended_case():
    make_router(address="192.0.2.10")
    make_intercept(make_case(status=Case.Status.SUSPENDED), intercept_id=0x300)
    assert load_gate().claim("192.0.2.10", 0x300, 0x90, now_ns()) == "outside_window"


def test_it_drops_packets_before_the_intercept_window_starts():
    make_router(address="192.0.2.10")
    case = make_case()
    make_intercept(
        case,
        intercept_id=0x300,
        valid_from=timezone.now() + timedelta(hours=1),
        valid_until=case.valid_until,
    )
    assert load_gate().claim("192.0.2.10", 0x300, 0x90, now_ns()) == "outside_window"


def test_it_drops_packets_after_the_case_has_ended():
    make_router(address="192.0.2.10")
    ended = timezone.now() - timedelta(minutes=1)
    make_intercept(
        make_case(valid_from=ended - timedelta(days=1), valid_until=ended), intercept_id=0x300
    )
    assert load_gate().claim("192.0.2.10", 0x300, 0x90, now_ns()) == "outside_window"


def test_the_window_is_the_intersection_of_the_intercepts_and_the_cases():
    case = make_case()
    intercept = make_intercept(
        case, valid_from=case.valid_from + timedelta(hours=1), valid_until=case.valid_until
    )
    (rule,) = load_gate().intercepts
    assert rule.window == (nanoseconds(intercept.valid_from), nanoseconds(case.valid_until))


def test_a_pinned_session_id_claims_only_that_session():
    make_router(address="192.0.2.10")
    make_intercept(intercept_id=0x300, sid=0x90)
    gate = load_gate()
    assert isinstance(gate.claim("192.0.2.10", 0x300, 0x90, now_ns()), Claim)
    assert gate.claim("192.0.2.10", 0x300, 0x91, now_ns()) == "no_intercept"


def test_a_router_scope_claims_only_packets_from_its_routers():
    scoped = make_router(address="192.0.2.10")
    make_router(address="192.0.2.11")
    make_intercept(intercept_id=0x300, routers=[scoped])
    gate = load_gate()
    assert isinstance(gate.claim("192.0.2.10", 0x300, 0x90, now_ns()), Claim)
    assert gate.claim("192.0.2.11", 0x300, 0x90, now_ns()) == "no_intercept"


def test_deleting_an_intercept_changes_the_fingerprint_and_the_reloaded_gate_drops_it():
    make_router(address="192.0.2.10")
    intercept = make_intercept(intercept_id=0x300)
    before = gate_fingerprint()
    assert isinstance(load_gate().claim("192.0.2.10", 0x300, 0x90, now_ns()), Claim)
    intercept.delete()
    assert gate_fingerprint() != before
    assert load_gate().claim("192.0.2.10", 0x300, 0x90, now_ns()) == "no_intercept"


def test_the_fingerprint_stays_the_same_while_nothing_changes():
    make_intercept(routers=[make_router()])
    assert gate_fingerprint() == gate_fingerprint()


def test_suspending_a_case_changes_the_fingerprint():
    intercept = make_intercept()
    before = gate_fingerprint()
    intercept.case.status = Case.Status.SUSPENDED
    intercept.case.save()
    assert gate_fingerprint() != before


def test_changing_an_intercepts_routers_changes_the_fingerprint():
    first, second = make_router(), make_router()
    intercept = make_intercept(routers=[first])
    before = gate_fingerprint()
    intercept.routers.set([second])
    assert gate_fingerprint() != before


def test_removing_a_router_changes_the_fingerprint_and_the_reloaded_gate_drops_it():
    router = make_router(address="192.0.2.10")
    make_intercept(intercept_id=0x300)
    before = gate_fingerprint()
    router.delete()
    assert gate_fingerprint() != before
    assert load_gate().claim("192.0.2.10", 0x300, 0x90, now_ns()) == "unknown_router"


def test_it_loads_in_a_fixed_number_of_queries(django_assert_num_queries):
    for _ in range(3):
        make_intercept(routers=[make_router()])
    with django_assert_num_queries(3):
        load_gate()


def test_the_watcher_reloads_only_on_change_and_keeps_its_gate_when_the_database_fails(
    monkeypatch,
):
    from django.db import OperationalError

    from receiver import gate_loader
    from receiver.gate_loader import GateWatcher

    make_router(address="192.0.2.50")
    watcher = GateWatcher()
    first = watcher.gate
    assert watcher.refresh() is first  # nothing changed: the same gate, not rebuilt

    make_intercept(make_case(), intercept_id=0x777)
    changed = watcher.refresh()
    assert changed is not first
    assert any(rule.mirror_id == 0x777 for rule in changed.intercepts)

    def unreachable() -> object:
        raise OperationalError("server closed the connection")

    monkeypatch.setattr(gate_loader, "gate_fingerprint", unreachable)
    assert watcher.refresh() is changed
