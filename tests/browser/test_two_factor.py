"""Two-factor sign-in in a real browser, against the product served by Daphne with
``JMIRROR_REQUIRE_2FA=staff``: an LI administrator signs in with the password, is sent to
set up a device, reads the key off the page (the QR code must load under the strict
Content-Security-Policy), confirms it with the password and a code (a wrong password is
refused), and from then on signs in with one.
Any JavaScript or console error (a CSP violation is one) fails the test."""

from __future__ import annotations

import time
from base64 import b32decode
from collections.abc import Iterator

import pytest
from django_otp.oath import TOTP
from playwright.sync_api import Browser, Page

from tests.browser.conftest import needs_chromium
from tests.browser.test_live_view import WAIT_MS, PageErrors
from tests.e2e_helpers import ServedProduct

PASSWORD = "browser test passphrase 42"
USERNAME = "officer"

pytestmark = [pytest.mark.browser, needs_chromium]

RECORDS = f"""
from django.contrib.auth.models import Group, User
user = User.objects.create_user({USERNAME!r}, password={PASSWORD!r})
user.groups.add(Group.objects.get(name="li-admin"))
"""


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProduct]:
    served = ServedProduct(tmp_path_factory.mktemp("browser-2fa") / "data")
    served.env["JMIRROR_REQUIRE_2FA"] = "staff"
    try:
        served.start()
        served.shell(RECORDS)
        yield served
    finally:
        served.stop()
        print(served.read_output())


def code(key: str, steps_ahead: int = 0) -> str:
    """What the phone shows, from the key as the page prints it."""
    totp = TOTP(b32decode(key.replace(" ", "")))
    totp.time = time.time() + steps_ahead * 30
    return f"{totp.token():06d}"


def clear_of_a_step_change(margin: float = 3.0) -> None:
    """Waits until the current 30 s step has `margin` seconds left.

    A code made just before a step changes and checked just after it makes django-otp
    record a drift of one step (OTP_TOTP_SYNC), and the test's "next step" code then falls
    outside the window: a refusal that says nothing about the product.
    """
    left = 30 - time.time() % 30
    if left < margin:
        time.sleep(left + 0.1)


def submit_sign_in(page: Page, base: str, one_time_code: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.fill("#id_code", one_time_code)
    page.click("main button[type=submit]")


def test_an_li_admin_sets_up_two_factor_and_then_signs_in_with_a_code(
    product: ServedProduct, browser: Browser
) -> None:
    errors = PageErrors()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    try:
        page = errors.watch(context.new_page())
        base = product.base

        # The password alone signs in, but only as far as the set-up page.
        submit_sign_in(page, base, "")
        page.wait_for_url(f"{base}/accounts/two-factor/?next=/")
        assert "must sign in with a code" in page.inner_text("main")
        loaded = page.eval_on_selector("img.qr", "img => img.complete && img.naturalWidth > 0")
        assert loaded, "the QR code did not load"
        key = page.inner_text("code.secret")
        # The account's password as well as a code: a screen left signed in is not enough.
        page.fill("#id_password", "not the password")
        page.fill("#id_code", code(key))
        page.click("main button[type=submit]")
        page.wait_for_selector("main p.error")
        assert "That is not your password" in page.inner_text("main")
        assert page.inner_text("code.secret") == key  # the same key, to try again
        page.fill("#id_password", PASSWORD)
        clear_of_a_step_change()
        page.fill("#id_code", code(key))
        page.click("main button[type=submit]")
        page.wait_for_url(f"{base}/")
        assert "Two-factor sign-in is on" in page.inner_text("main")

        page.click(".bar .signout button[type=submit]")
        page.wait_for_url(f"{base}/accounts/login/")
        # Without the code: refused, on the sign-in page again.
        submit_sign_in(page, base, "")
        page.wait_for_selector("main p.error")
        assert page.url == f"{base}/accounts/login/"
        # With the code of the next step (the one just used cannot be used again).
        clear_of_a_step_change()
        submit_sign_in(page, base, code(key, steps_ahead=1))
        page.wait_for_url(f"{base}/")
        assert page.locator(".bar .who").inner_text() == USERNAME
    finally:
        context.close()
    assert errors.messages == []
