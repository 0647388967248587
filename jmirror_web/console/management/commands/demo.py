"""``manage.py demo``: records for trying the product with ``manage.py simulate``.

A router for 127.0.0.1, an active case ``DEMO-1`` valid for 30 days with an intercept for
mirror id 0x300 (simulate's default), and every superuser assigned to it, so that the
traffic ``simulate`` sends to the embedded receiver is stored and shows live. Safe to run
again: existing demo records are kept. Not for a production host: it makes a warrant.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from jmirror_web.environment import parse_listen
from jmirror_web.intercepts.models import (
    Case,
    CaseAssignment,
    Intercept,
    ReceiverProcess,
    Router,
)
from receiver.receive_loop import format_address

DEMO_CASE = "DEMO-1"
DEMO_LIID = "DEMO-LIID-1"
DEMO_MIRROR_ID = 0x300


class Command(BaseCommand):
    help = "Create demo records (router 127.0.0.1, case DEMO-1, intercept for mid 0x300)."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        router, _ = Router.objects.get_or_create(
            address="127.0.0.1", defaults={"name": "demo-router"}
        )
        case, made = Case.objects.get_or_create(
            reference=DEMO_CASE,
            defaults={
                "title": "Demo case for simulated traffic",
                "status": Case.Status.ACTIVE,
                "valid_from": now - timedelta(minutes=5),
                "valid_until": now + timedelta(days=30),
            },
        )
        if not Intercept.objects.filter(liid=DEMO_LIID).exists():
            intercept = Intercept(
                case=case,
                liid=DEMO_LIID,
                intercept_id=DEMO_MIRROR_ID,
                valid_from=case.valid_from,
                valid_until=case.valid_until,
            )
            intercept.full_clean()
            intercept.save()
        for user in get_user_model().objects.filter(is_superuser=True, is_active=True):
            CaseAssignment.objects.get_or_create(case=case, user=user)
        self.stdout.write(
            f"{'created' if made else 'kept'} case {DEMO_CASE}: router {router.address}, "
            f"intercept {DEMO_LIID} for mirror id {DEMO_MIRROR_ID:#x}. Now run: "
            f".venv/bin/python manage.py simulate --to {receiver_address()} "
            "--rate 20 --duration 120"
        )


# A receiver that reported this recently is running (it reports at least once a second).
LIVE_REPORT_SECONDS = 10


def receiver_address() -> str:
    """Where simulate's --to should point: the jmirror socket a running receiver reported
    it had bound (the port actually listened on, whatever this process's environment
    says), else JMIRROR_LISTEN's first address. A wildcard address is reached through
    loopback."""
    host, port = running_listener() or settings.JMIRROR_LISTEN[0]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104  # not a bind
    return format_address(host, port)


def running_listener() -> tuple[str, int] | None:
    """The first jmirror socket of the receiver that reported last, if one is running
    (CN2 analyzer ports, which take Contrail frames, are left out)."""
    recent = timezone.now() - timedelta(seconds=LIVE_REPORT_SECONDS)
    process = (
        ReceiverProcess.objects.filter(stopped_at__isnull=True, reported_at__gte=recent)
        .order_by("-reported_at")
        .first()
    )
    if process is None:
        return None
    analyzer_ports = set(Router.objects.filter(kind=Router.Kind.CN2).values_list("port", flat=True))
    for address in process.listeners.order_by("address").values_list("address", flat=True):
        try:
            host, port = parse_listen(address)
        except ValueError:
            continue
        if port not in analyzer_ports:
            return host, port
    return None
