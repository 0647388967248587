"""The first administrator's printed password must be changed at first sign-in.

``ensure_admin`` prints a generated password once (it stays in a terminal's scroll-back,
a CI log, a screenshot). Until its user has changed it, every page but the password
change, sign-out and the health check sends them to change it, and the API refuses them
(403): the printed password never becomes the password evidence is taken with.
"""

from __future__ import annotations

from typing import Any, Final

from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve, reverse

from jmirror_web.audit.log import record
from jmirror_web.security.early_response import EarlyResponseMiddleware
from jmirror_web.security.models import PasswordChangeRequired

PASSWORD_CHANGED: Final = "auth.password_changed"  # noqa: S105  # an audit action name
# Reachable while a change is owed: the change itself, signing out, the health check.
_OPEN_VIEWS: Final = frozenset(
    {"console:password", "console:logout", "console:login", "admin:logout", "healthz"}
)


def require_change(user: Any) -> None:
    """Make ``user`` change their current password at their next page."""
    PasswordChangeRequired.objects.update_or_create(
        user=user, defaults={"password_hash": user.password}
    )


def change_owed(user: Any) -> bool:
    """Whether ``user`` still signs in with the password made for them; a row whose
    password has been changed since (by any path) is removed."""
    if not user.is_authenticated:
        return False
    owed = PasswordChangeRequired.objects.filter(user=user).first()
    if owed is None:
        return False
    if owed.password_hash != user.password:
        owed.delete()
        return False
    return True


def _open(request: HttpRequest) -> bool:
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return True
    return match.view_name in _OPEN_VIEWS


def _gate(request: HttpRequest) -> HttpResponse | None:
    if _open(request) or not change_owed(request.user):
        return None
    if request.path_info.startswith("/api/"):
        return JsonResponse(
            {"detail": "Change the password made for this account first, on the console."},
            status=403,
        )
    return redirect(f"{reverse('console:password')}?next={request.get_full_path()}")


class FirstPasswordMiddleware(EarlyResponseMiddleware):
    """Sends a user who owes a password change to the change page (after the
    authentication and message middleware)."""

    early = staticmethod(_gate)


@login_required
def password_page(request: HttpRequest) -> HttpResponse:
    """Change one's own password (Django's form: the old one, the new one twice, the
    password validators)."""
    owed = change_owed(request.user)
    form = PasswordChangeForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        update_session_auth_hash(request, user)
        PasswordChangeRequired.objects.filter(user=user).delete()
        record(PASSWORD_CHANGED, user, request=request, details={"required": owed})
        messages.success(request, "Your password was changed.")
        wanted = request.GET.get("next", "")
        return redirect(wanted if wanted.startswith("/") and not wanted.startswith("//") else "/")
    return render(request, "console/password.html", {"form": form, "owed": owed})
