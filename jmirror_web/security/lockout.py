"""What happens when django-axes locks a sign-in out: an audit event, and a page that
says so plainly (instead of axes' one-line text)."""

from __future__ import annotations

from typing import Any, Final

from axes.helpers import get_client_username, get_cool_off  # type: ignore[import-untyped,unused-ignore]
from axes.signals import user_locked_out  # type: ignore[import-untyped,unused-ignore]
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from jmirror_web.audit.models import append_event

# 429 Too Many Requests, as axes answers by default: the client should wait, and a
# monitoring probe can tell a lockout from a wrong password (200 with the form again).
LOCKOUT_STATUS: Final = 429
TEMPLATE: Final = "registration/locked_out.html"


def _address(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    # axes' own view of the address, so that the audit event names what was locked.
    address = getattr(request, "axes_ip_address", None) or request.META.get("REMOTE_ADDR")
    return str(address) if address else None


def _locked_out(
    sender: Any,
    request: HttpRequest | None = None,
    username: str | None = None,
    ip_address: str | None = None,
    **kwargs: Any,
) -> None:
    """Record the lockout. Sent on the failure that reaches the limit and again on every
    failure during the lockout, each of which starts the cool-off again."""
    append_event(
        action="login_locked_out",
        source_address=ip_address or _address(request),
        details={
            "username": str(username or "")[:150],
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "cooloff_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
            "path": request.path[:200] if request is not None else "",
        },
    )


def lockout_page(request: HttpRequest, credentials: dict[str, Any] | None) -> HttpResponse:
    cool_off = get_cool_off(request)
    minutes = int(cool_off.total_seconds() // 60) if cool_off is not None else None
    context = {
        "username": get_client_username(request, credentials) or "",
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cooloff_minutes": minutes,
    }
    return render(request, TEMPLATE, context, status=LOCKOUT_STATUS)


def connect() -> None:
    user_locked_out.connect(_locked_out, dispatch_uid="jmirror_audit_locked_out")
