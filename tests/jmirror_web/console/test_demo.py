"""manage.py demo: records that make simulate's traffic stored and visible."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from jmirror_web.intercepts.models import Case, CaseAssignment, Listener, ReceiverProcess, Router
from receiver.gate import Claim
from receiver.gate_loader import load_gate
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def test_demo_records_make_the_gate_claim_simulated_traffic_and_can_be_made_twice():
    admin = make_user(is_superuser=True, is_staff=True)
    out = io.StringIO()
    call_command("demo", stdout=out)
    call_command("demo", stdout=out)

    claim = load_gate().claim("127.0.0.1", 0x300, 0x90, time.time_ns())
    assert isinstance(claim, Claim)
    assert claim.intercept.liid == "DEMO-LIID-1"
    assert Case.objects.filter(reference="DEMO-1").count() == 1
    assert CaseAssignment.objects.filter(user=admin, case__reference="DEMO-1").count() == 1
    assert "kept case DEMO-1" in out.getvalue()


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        ([("127.0.0.1", 30030)], "127.0.0.1:30030"),
        ([("0.0.0.0", 4000), ("::", 4001)], "127.0.0.1:4000"),  # noqa: S104
        ([("::", 4001)], "[::1]:4001"),
    ],
)
def test_demo_says_to_send_the_traffic_where_the_receiver_listens(settings, listen, target):
    settings.JMIRROR_LISTEN = listen
    out = io.StringIO()
    call_command("demo", stdout=out)
    assert f"simulate --to {target} " in out.getvalue()


def test_demo_names_the_port_a_running_receiver_actually_bound(settings):
    """The receiver reported 127.0.0.1:41234 while this process's setting says 30030:
    the running receiver wins; a stopped or silent one does not; a CN2 analyzer port is
    not where jmirror traffic goes."""
    settings.JMIRROR_LISTEN = [("127.0.0.1", 30030)]
    now = timezone.now()
    process = ReceiverProcess.objects.create(hostname="h", pid=1, started_at=now, reported_at=now)
    Router.objects.create(name="cn2", address="192.0.2.9", kind=Router.Kind.CN2, port=8099)
    Listener.objects.create(receiver=process, address="127.0.0.1:8099")
    Listener.objects.create(receiver=process, address="127.0.0.1:41234")

    def target() -> str:
        out = io.StringIO()
        call_command("demo", stdout=out)
        return out.getvalue().split("simulate --to ")[1].split(" ")[0]

    assert target() == "127.0.0.1:41234"
    ReceiverProcess.objects.filter(pk=process.pk).update(reported_at=now - timedelta(minutes=5))
    assert target() == "127.0.0.1:30030"
    ReceiverProcess.objects.filter(pk=process.pk).update(reported_at=now, stopped_at=now)
    assert target() == "127.0.0.1:30030"
