"""The gate built from CN2 records: vRouters, CN2 intercepts and their claims."""

import logging
import time

import pytest

from jmirror_web.intercepts.models import Intercept, Router
from receiver.gate import Claim
from receiver.gate_loader import load_gate
from tests.factories import make_intercept, make_router

pytestmark = pytest.mark.django_db


def test_a_cn2_intercept_claims_contrail_frames_from_its_vrouter():
    vrouter = make_router(address="192.0.2.20", kind=Router.Kind.CN2, port=8099)
    intercept = make_intercept(
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=8099,
        virtual_networks=["red"],
        targets=["10.0.0.0/24"],
        routers=[vrouter],
    )
    gate = load_gate()
    now = time.time_ns()
    claim = gate.claim_contrail("192.0.2.20", 8099, "red", None, "10.0.0.7", None, now)
    assert isinstance(claim, Claim)
    assert (claim.router.router_id, claim.router.contrail) == (vrouter.pk, True)
    assert claim.intercept.intercept_id_pk == intercept.pk
    assert claim.intercept.kind == "cn2"
    assert claim.intercept.mirror_id is None
    assert gate.claim_contrail("192.0.2.20", 8099, "blue", None, "10.0.0.7", None, now) == (
        "no_intercept"
    )
    assert gate.analyzer_ports == frozenset({8099})
    assert gate.mirror_ids == ()


def test_a_row_the_gate_cannot_read_is_left_out_and_logged(caplog):
    make_router(address="192.0.2.20", kind=Router.Kind.CN2)
    good = make_intercept(kind=Intercept.Kind.CN2, intercept_id=None, analyzer_port=8099)
    # Written around validation: a string, whose characters must not become names.
    make_intercept(
        liid="BAD-ROW", kind=Intercept.Kind.CN2, intercept_id=None, virtual_networks="red"
    )
    caplog.set_level(logging.ERROR, logger="receiver.gate_loader")

    gate = load_gate()

    assert [rule.intercept_id_pk for rule in gate.intercepts] == [good.pk]
    assert "intercept BAD-ROW is left out of the gate: not a list of names: 'red'" in caplog.text
