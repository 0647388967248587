"""Two-factor sign-in with TOTP (django-otp): who must give a code, the sign-in forms'
code field, and the checks that keep a session without one out.

- A user with a confirmed TOTP device gives the current code from their authenticator
  app with the password, on the console's and the admin's sign-in. A missing or wrong
  code is a failed sign-in like a wrong password: the same message (it does not tell
  that the password was right), counted by django-axes, audited as ``login_failed``
  (with ``reason: two_factor_code``, for the auditor only: the password is known to
  whoever tried). django-otp's throttling (``OTP_TOTP_THROTTLE_FACTOR``) also slows
  guessing at one device's codes.
- ``JMIRROR_REQUIRE_2FA`` makes a device compulsory: ``staff`` for superusers and the
  li-admin, auditor and sysadmin roles, ``all`` for every user. A user in scope without
  one is sent to set one up before anything else.
- A session is verified when it was signed in (or the device set up) with a code;
  django-otp keeps the device's id in the session. A user with a device whose session is
  not verified (it began before the device was set up) is signed out, to sign in again
  with a code.
- Setting a device up or removing it asks for the account's password as well as a code
  (:func:`password_confirmed`), so a screen left signed in is not enough. A wrong
  password there is a failed sign-in too: audited as ``login_failed`` (with the page's
  ``reason``) and counted by django-axes; while axes has locked the user name out from
  that address, no password is checked there either.
- API tokens are not asked for a code: a token is made from the shell
  (``manage.py drf_create_token``) for a machine, which has no phone. A session used on
  the API is held to the same rule as the pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from axes.handlers.proxy import AxesProxyHandler  # type: ignore[import-untyped,unused-ignore]
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_login_failed
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve, reverse
from django_otp import DEVICE_ID_SESSION_KEY, verify_token  # type: ignore[import-untyped,unused-ignore]
from django_otp.models import Device  # type: ignore[import-untyped,unused-ignore]
from django_otp.plugins.otp_totp.models import (  # type: ignore[import-untyped,unused-ignore]
    TOTPDevice,
)
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request

from jmirror_web.audit.log import record
from jmirror_web.intercepts.access import Role, roles_of
from jmirror_web.security.early_response import EarlyResponseMiddleware

# The roles JMIRROR_REQUIRE_2FA=staff covers (with superusers): those who manage or
# oversee the records rather than work one assigned case.
STAFF_ROLES: Final = frozenset({Role.LI_ADMIN, Role.AUDITOR, Role.SYSADMIN})
# The reason a failed sign-in's audit event gives when the password was right.
CODE_REFUSED: Final = "two_factor_code"
# The reasons of a wrong password on the two-factor page, setting a device up or removing it
# (audit reasons, not passwords).
ENROL_PASSWORD_REFUSED: Final = "two_factor_enrol_password"  # noqa: S105
REMOVE_PASSWORD_REFUSED: Final = "two_factor_remove_password"  # noqa: S105
SESSION_ENDED: Final = "two_factor.session_ended"

# Pages a user who still owes a code may reach: setting up a device, signing in and out.
# The API decides for itself (VerifiedSessionAuthentication) and answers in JSON.
_OPEN_VIEWS: Final = frozenset(
    {
        "console:two_factor",
        "console:two_factor_qr",
        "console:login",
        "console:logout",
        "admin:logout",
        "healthz",
    }
)
_OPEN_NAMESPACES: Final = frozenset({"api"})


class Step(StrEnum):
    """What a signed-in user must do before using anything."""

    ENROL = "enrol"  # set up a device: JMIRROR_REQUIRE_2FA covers them and they have none
    SIGN_IN_AGAIN = "sign_in_again"  # they have a device; this session was not verified


def required_for(user: Any) -> bool:
    """Whether JMIRROR_REQUIRE_2FA makes a device compulsory for ``user``."""
    scope = settings.JMIRROR_REQUIRE_2FA
    if scope == "all":
        return True
    if scope == "staff":
        return bool(user.is_superuser or roles_of(user) & STAFF_ROLES)
    return False


def confirmed_device(user: Any) -> TOTPDevice | None:
    """The user's device, once set up; the console lets each user have one."""
    device: TOTPDevice | None = (
        TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()
    )
    return device


def missing_step(user: Any, verified: bool) -> Step | None:
    if verified:
        return None
    if confirmed_device(user) is not None:
        return Step.SIGN_IN_AGAIN
    if required_for(user):
        return Step.ENROL
    return None


def request_verified(user: Any) -> bool:
    """Whether the request's session was verified with a code (django-otp's
    OTPMiddleware gives the request's user ``is_verified``)."""
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified is not None and is_verified())


def session_verified(user: Any, session: Mapping[str, Any]) -> bool:
    """Whether the stored session was verified with a code, as OTPMiddleware decides it:
    its device still exists, is confirmed and is the user's. For the websocket, where
    no Django middleware runs."""
    persistent_id = session.get(DEVICE_ID_SESSION_KEY)
    if not isinstance(persistent_id, str):
        return False
    device = Device.from_persistent_id(persistent_id)
    return bool(device is not None and device.user_id == user.pk and device.confirmed)


def normalized_code(code: str) -> str:
    # Authenticator apps show "123 456".
    return "".join(code.split())


def check_code(user: Any, device: TOTPDevice, code: str) -> bool:
    """Whether ``code`` is current for ``device`` (and not used before). A wrong one
    counts towards django-otp's throttling; an empty one is refused without a try."""
    code = normalized_code(code)
    if not code:
        return False
    # verify_token locks the device's row, so one code cannot be used twice at once.
    return verify_token(user, device.persistent_id, code) is not None


def password_confirmed(request: HttpRequest, user: Any, password: str, reason: str) -> bool:
    """Whether ``password`` is the signed-in ``user``'s own: asked again before a device
    is set up or removed. A wrong one is sent as a failed sign-in (the signal
    django.contrib.auth sends for a wrong password, with ``reason``), so the audit log
    records it and django-axes counts it towards the lockout of this user name from this
    address; the failure that reaches the limit gets axes' lockout page. While locked out,
    no password is checked, and the attempt counts again as on the sign-in page."""
    credentials = {"username": user.get_username()}
    # AXES_ENABLED is axes' own setting (default True), unknown to django-stubs.
    axes_enabled = getattr(settings, "AXES_ENABLED", True)
    locked = axes_enabled and not AxesProxyHandler.is_allowed(request, credentials)
    if not locked and user.check_password(password):
        return True
    user_login_failed.send(sender=__name__, credentials=credentials, request=request, reason=reason)
    return False


def password_field() -> forms.CharField:
    return forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        error_messages={
            "required": "Enter your password: setting up or removing two-factor sign-in "
            "asks for it."
        },
    )


def code_field() -> forms.CharField:
    return forms.CharField(
        label="Code",
        required=False,
        max_length=16,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "size": 8}
        ),
    )


class SignInForm(AuthenticationForm):
    """The sign-in: user name, password, and the authenticator app's code for users who
    have set one up (left empty by everyone else)."""

    code = code_field()

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": (
            "Please enter a correct %(username)s and password, and the current code from "
            "your authenticator app if you have set one up."
        ),
    }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        user: Any = self.user_cache
        if user is None:  # a field was missing; the form already says which
            return cleaned
        device = confirmed_device(user)
        if device is None:
            return cleaned
        if not check_code(user, device, cleaned.get("code") or ""):
            self.user_cache = None
            # What django.contrib.auth.authenticate sends for a wrong password: axes
            # counts it and the audit log records it.
            user_login_failed.send(
                sender=__name__,
                credentials={"username": cleaned.get("username", "")},
                request=self.request,
                reason=CODE_REFUSED,
            )
            raise self.get_invalid_login_error()
        # django-otp's user_logged_in receiver keeps the device in the new session.
        user.otp_device = device
        return cleaned


def _open(request: HttpRequest) -> bool:
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return True
    return match.view_name in _OPEN_VIEWS or bool(set(match.namespaces) & _OPEN_NAMESPACES)


def _step_response(request: HttpRequest) -> HttpResponse | None:
    user = request.user
    if not user.is_authenticated or _open(request):
        return None
    step = missing_step(user, request_verified(user))
    if step is None:
        return None
    if step == Step.ENROL:
        return redirect_to_login(request.get_full_path(), reverse("console:two_factor"))
    record(SESSION_ENDED, user, request=request, details={"path": request.path[:200]})
    logout(request)
    messages.info(request, "Your account now signs in with a code: sign in again.")
    return redirect_to_login(request.get_full_path())


class TwoFactorMiddleware(EarlyResponseMiddleware):
    """Sends a signed-in user who owes a code where they can give it: to set up a
    device, or (their session predating their device) to sign in again. Placed after
    django-otp's OTPMiddleware and the message middleware."""

    early = staticmethod(_step_response)


class VerifiedSessionAuthentication(SessionAuthentication):
    """DRF's session authentication, refusing (403) a session that owes a code."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        result = super().authenticate(request)
        if result is not None and missing_step(result[0], request_verified(result[0])):
            raise exceptions.PermissionDenied(
                "This account signs in with a two-factor code: sign in again on the "
                "console, or use an API token."
            )
        return result
