"""The "Two-factor sign-in" page: each user sets up (or removes) their own TOTP device.

Setting up shows a new secret (a QR code and the same key as text) on every visit, and
the device counts only once a current code from it has been entered with the account's
password; removing it takes the password and a current code too, so a screen left signed
in is not enough. Both are audited, and so is a wrong password (as a failed sign-in,
counted towards the lockout); a wrong code is only refused. The secret of a device in use
is never shown again; a lost phone is reset from the shell (``manage.py two_factor
--reset USERNAME``). The rules themselves are in :mod:`jmirror_web.security.two_factor`.
"""

from __future__ import annotations

import io
from base64 import b32encode
from typing import Any, Final

import django_otp  # type: ignore[import-untyped,unused-ignore]
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django_otp.plugins.otp_totp.models import (  # type: ignore[import-untyped,unused-ignore]
    TOTPDevice,
)
from django_otp.qr import write_qrcode_image  # type: ignore[import-untyped,unused-ignore]

from jmirror_web.audit.log import record
from jmirror_web.security.two_factor import (
    ENROL_PASSWORD_REFUSED,
    REMOVE_PASSWORD_REFUSED,
    check_code,
    code_field,
    confirmed_device,
    password_confirmed,
    password_field,
    required_for,
)

ENROLLED: Final = "two_factor.enrol"
REMOVED: Final = "two_factor.remove"
# A wrong code on this page: not a failed sign-in (the user is signed in, and the lockout
# is for passwords), but an attempt on the account's second factor, so it is audited.
CODE_REFUSED: Final = "two_factor.code_refused"
DEVICE_NAME: Final = "authenticator app"
TEMPLATE: Final = "console/two_factor.html"
WRONG_CODE: Final = (
    "That code was not accepted. Enter the code your app shows now (after a wrong one, "
    "wait a few seconds); if it keeps failing, check the time on your phone."
)
WRONG_PASSWORD: Final = "That is not your password: enter the one you sign in with."  # noqa: S105


class ConfirmForm(forms.Form):
    """What setting a device up or removing it asks for: the account's password (checked
    first: a wrong one spends no try at the code) and a current code."""

    password = password_field()
    code = code_field()


def _confirmed(request: HttpRequest, form: ConfirmForm, device: TOTPDevice, reason: str) -> bool:
    user: Any = request.user
    if not form.is_valid():
        return False
    if not password_confirmed(request, user, form.cleaned_data["password"], reason):
        form.add_error("password", WRONG_PASSWORD)
        return False
    if not check_code(user, device, form.cleaned_data["code"]):
        form.add_error("code", WRONG_CODE)
        during = "enrol" if reason == ENROL_PASSWORD_REFUSED else "remove"
        record(CODE_REFUSED, user, request=request, details={"during": during})
        return False
    return True


def _pending(user: Any) -> TOTPDevice | None:
    device: TOTPDevice | None = (
        TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()
    )
    return device


def _new_pending(user: Any) -> TOTPDevice:
    """A fresh secret for this visit; one shown before and never confirmed is dropped."""
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    device: TOTPDevice = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
    return device


def _grouped_key(device: TOTPDevice) -> str:
    key = b32encode(device.bin_key).decode()
    return " ".join(key[i : i + 4] for i in range(0, len(key), 4))


def _next(request: HttpRequest) -> str:
    """Where to go once set up: the page the user was sent here from, if on this site."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return ""


@login_required
@never_cache
def two_factor_page(request: HttpRequest) -> HttpResponse:
    device = confirmed_device(request.user)
    if device is not None:
        return _enrolled(request, device)
    return _enrol(request)


def _enrol(request: HttpRequest) -> HttpResponse:
    user: Any = request.user
    form = ConfirmForm(request.POST or None)
    if request.method == "POST":
        pending = _pending(user)
        if pending is None:  # set up meanwhile in another tab, or never shown
            return HttpResponseRedirect(reverse("console:two_factor"))
        if _confirmed(request, form, pending, ENROL_PASSWORD_REFUSED):
            with transaction.atomic():
                pending.confirmed = True
                pending.save(update_fields=["confirmed"])
                TOTPDevice.objects.filter(user=user, confirmed=False).delete()
            # The code just given verifies this session too.
            django_otp.login(request, pending)
            record(ENROLLED, user, request=request, details={"device": pending.persistent_id})
            messages.success(request, "Two-factor sign-in is on: sign-ins now ask for a code.")
            return HttpResponseRedirect(_next(request) or reverse("console:two_factor"))
    else:
        pending = _new_pending(user)
    context = {
        "device": None,
        "form": form,
        "secret": _grouped_key(pending),
        "required": required_for(user),
        "next": _next(request),
    }
    return render(request, TEMPLATE, context)


def _enrolled(request: HttpRequest, device: TOTPDevice) -> HttpResponse:
    user: Any = request.user
    form = ConfirmForm(request.POST or None)
    if request.method == "POST" and _confirmed(request, form, device, REMOVE_PASSWORD_REFUSED):
        persistent_id = device.persistent_id
        device.delete()
        record(REMOVED, user, request=request, details={"device": persistent_id})
        messages.success(request, "Two-factor sign-in is off.")
        return HttpResponseRedirect(reverse("console:two_factor"))
    context = {"device": device, "form": form, "required": required_for(user)}
    return render(request, TEMPLATE, context)


@login_required
@never_cache
def enrolment_qr(request: HttpRequest) -> HttpResponse:
    """The secret being set up, as a QR code (SVG, for an ``<img>``: no inline markup
    for the page's Content-Security-Policy to refuse). Only ever the pending one."""
    pending = _pending(request.user)
    if pending is None:
        raise Http404("no two-factor set-up in progress")
    image = io.BytesIO()
    write_qrcode_image(pending.config_url, image)
    return HttpResponse(image.getvalue(), content_type="image/svg+xml")
