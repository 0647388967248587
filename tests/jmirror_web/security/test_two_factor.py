"""Two-factor sign-in (TOTP): setting a device up and removing it (each with the password
and a code), the code on the console and admin sign-ins (failures counted by axes and
audited), JMIRROR_REQUIRE_2FA, the API, and ``manage.py two_factor``."""

from __future__ import annotations

import time
from base64 import b32encode
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.authtoken.models import Token

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from tests.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db

LOGIN_PAGES = ["console:login", "admin:login"]
FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fast_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = FAST_HASHERS


def code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    """The code the user's phone shows now (or that many time steps later)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():0{device.digits}d}"


def wrong(device: TOTPDevice) -> str:
    # Ten steps away: outside the tolerance of one step either side.
    return code(device, steps_ahead=10)


def enrolled(user: User) -> TOTPDevice:
    device: TOTPDevice = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return device


def sign_in(page: str, username: str, password: str, code: str = "", **extra: Any) -> Any:
    client = Client(REMOTE_ADDR="192.0.2.1")
    return client.post(
        reverse(page), {"username": username, "password": password, "code": code, **extra}
    )


def signed_in(response: Any) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


# Setting up and removing a device ------------------------------------------------------


def test_a_user_sets_up_a_device_by_entering_a_code_from_it():
    user = make_user(Role.ANALYST, username="ana")
    client = Client()
    client.force_login(user)

    page = client.get(reverse("console:two_factor"))
    pending = TOTPDevice.objects.get(user=user)
    assert page.status_code == 200
    assert pending.confirmed is False
    key = page.context["secret"].replace(" ", "")
    assert len(key) == 32  # 20 random bytes in base32, shown grouped by four
    assert f'<img class="qr" src="{reverse("console:two_factor_qr")}"' in page.content.decode()

    response = client.post(
        reverse("console:two_factor"), {"password": PASSWORD, "code": code(pending)}
    )

    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.confirmed is True
    # The code just given verifies this session: it is not signed out for lacking one.
    assert client.session[DEVICE_ID_SESSION_KEY] == pending.persistent_id
    assert client.get(reverse("home")).status_code == 200
    [event] = events("two_factor.enrol")
    assert event.actor_name == "ana"
    assert event.object_id == str(user.pk)
    assert event.details == {"device": pending.persistent_id}


def test_a_wrong_code_does_not_set_the_device_up():
    user = make_user(Role.ANALYST)
    client = Client()
    client.force_login(user)
    client.get(reverse("console:two_factor"))
    pending = TOTPDevice.objects.get(user=user)

    response = client.post(
        reverse("console:two_factor"), {"password": PASSWORD, "code": wrong(pending)}
    )

    assert response.status_code == 200
    assert "That code was not accepted" in response.content.decode()
    pending.refresh_from_db()
    assert pending.confirmed is False
    assert events("two_factor.enrol") == []
    [refused] = events("two_factor.code_refused")
    assert refused.object_id == str(user.pk)
    assert refused.details == {"during": "enrol"}
    # The same secret stays on the page, so the user can try again without re-scanning.
    assert response.context["secret"].replace(" ", "") == b32encode(pending.bin_key).decode()


def test_every_visit_to_the_set_up_page_shows_a_new_secret():
    user = make_user(Role.ANALYST)
    client = Client()
    client.force_login(user)
    first = client.get(reverse("console:two_factor")).context["secret"]
    second = client.get(reverse("console:two_factor")).context["secret"]

    assert first != second
    assert TOTPDevice.objects.filter(user=user).count() == 1


def test_the_qr_code_is_an_svg_of_the_pending_secret_without_inline_style_or_script():
    user = make_user(Role.ANALYST, username="ana")
    client = Client()
    client.force_login(user)
    client.get(reverse("console:two_factor"))

    response = client.get(reverse("console:two_factor_qr"))

    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert "no-store" in response["Cache-Control"]
    svg = response.content.decode()
    assert "<svg" in svg
    assert "style" not in svg
    assert "script" not in svg


def test_the_qr_code_of_a_device_in_use_is_never_shown():
    user = make_user(Role.ANALYST)
    enrolled(user)
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user).persistent_id
    session.save()

    assert client.get(reverse("console:two_factor_qr")).status_code == 404
    assert "secret" not in client.get(reverse("console:two_factor")).context


def test_the_set_up_page_keeps_the_strict_content_security_policy():
    user = make_user(Role.ANALYST)
    client = Client()
    client.force_login(user)
    response = client.get(reverse("console:two_factor"))

    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    body = response.content.decode()
    assert "style=" not in body
    assert "<script>" not in body


def test_the_header_links_to_the_two_factor_page():
    client = Client()
    client.force_login(make_user(Role.AUDITOR))
    assert reverse("console:two_factor") in client.get(reverse("home")).content.decode()


def verified_client(user: User, device: TOTPDevice) -> Client:
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def test_removing_the_device_takes_the_password_and_a_current_code_and_is_audited():
    user = make_user(Role.LI_ADMIN, username="ana")
    device = enrolled(user)
    client = verified_client(user, device)

    refused = client.post(
        reverse("console:two_factor"), {"password": PASSWORD, "code": wrong(device)}
    )
    assert refused.status_code == 200
    assert "That code was not accepted" in refused.content.decode()
    assert TOTPDevice.objects.filter(pk=device.pk).exists()
    # django-otp's throttling: after a wrong code the device takes none for a second.
    time.sleep(1.1)
    removed = client.post(
        reverse("console:two_factor"), {"password": PASSWORD, "code": code(device)}
    )

    assert removed.status_code == 302
    assert not TOTPDevice.objects.filter(user=user).exists()
    [event] = events("two_factor.remove")
    assert event.actor_name == "ana"
    assert event.details == {"device": device.persistent_id}


# The password, asked again to set a device up or remove it -----------------------------


def pending_for(client: Client, user: User) -> TOTPDevice:
    client.get(reverse("console:two_factor"))
    device: TOTPDevice = TOTPDevice.objects.get(user=user, confirmed=False)
    return device


def test_a_wrong_password_does_not_set_the_device_up_and_is_audited():
    """Someone at a screen left signed in cannot attach their own phone to the account."""
    user = make_user(Role.ANALYST, username="ana")
    client = Client(REMOTE_ADDR="192.0.2.7")
    client.force_login(user)
    pending = pending_for(client, user)
    now = code(pending)

    response = client.post(reverse("console:two_factor"), {"password": "not it", "code": now})

    assert response.status_code == 200
    body = response.content.decode()
    assert "That is not your password" in body
    assert "That code was not accepted" not in body
    pending.refresh_from_db()
    assert pending.confirmed is False
    assert DEVICE_ID_SESSION_KEY not in client.session
    assert events("two_factor.enrol") == []
    [failure] = events("login_failed")
    assert failure.details == {"username": "ana", "reason": "two_factor_enrol_password"}
    assert failure.source_address == "192.0.2.7"
    # The code was not tried: with the password, the same one still sets the device up.
    assert response.context["secret"].replace(" ", "") == b32encode(pending.bin_key).decode()
    accepted = client.post(reverse("console:two_factor"), {"password": PASSWORD, "code": now})
    assert accepted.status_code == 302
    pending.refresh_from_db()
    assert pending.confirmed is True


def test_a_missing_password_does_not_set_the_device_up():
    user = make_user(Role.ANALYST)
    client = Client()
    client.force_login(user)
    pending = pending_for(client, user)

    for data in ({"code": code(pending)}, {"password": "", "code": code(pending)}):
        response = client.post(reverse("console:two_factor"), data)

        assert response.status_code == 200
        assert "Enter your password" in response.content.decode()
        pending.refresh_from_db()
        assert pending.confirmed is False
    assert events("two_factor.enrol") == []
    # Not a guess at the password: not a failed sign-in.
    assert events("login_failed") == []


def test_a_wrong_password_does_not_remove_the_device_and_is_audited():
    user = make_user(Role.LI_ADMIN, username="ana")
    device = enrolled(user)
    client = verified_client(user, device)

    response = client.post(
        reverse("console:two_factor"), {"password": "not it", "code": code(device)}
    )

    assert response.status_code == 200
    assert "That is not your password" in response.content.decode()
    assert TOTPDevice.objects.filter(pk=device.pk, confirmed=True).exists()
    assert client.session[DEVICE_ID_SESSION_KEY] == device.persistent_id
    assert events("two_factor.remove") == []
    [failure] = events("login_failed")
    assert failure.details == {"username": "ana", "reason": "two_factor_remove_password"}


def test_a_wrong_code_does_not_remove_the_device_and_is_audited():
    user = make_user(Role.LI_ADMIN)
    device = enrolled(user)
    client = verified_client(user, device)

    response = client.post(
        reverse("console:two_factor"), {"password": PASSWORD, "code": wrong(device)}
    )

    assert "That code was not accepted" in response.content.decode()
    assert TOTPDevice.objects.filter(pk=device.pk, confirmed=True).exists()
    assert events("two_factor.remove") == []
    [refused] = events("two_factor.code_refused")
    assert refused.details == {"during": "remove"}


def test_a_missing_password_does_not_remove_the_device():
    user = make_user(Role.LI_ADMIN)
    device = enrolled(user)
    client = verified_client(user, device)

    response = client.post(reverse("console:two_factor"), {"code": code(device)})

    assert response.status_code == 200
    assert "Enter your password" in response.content.decode()
    assert TOTPDevice.objects.filter(pk=device.pk, confirmed=True).exists()
    assert events("two_factor.remove") == []
    assert events("login_failed") == []


def test_both_forms_ask_for_the_password():
    user = make_user(Role.ANALYST)
    client = Client()
    client.force_login(user)
    setting_up = client.get(reverse("console:two_factor")).content.decode()
    device = enrolled(user)
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    removing = verified_client(user, device).get(reverse("console:two_factor"))

    for body in (setting_up, removing.content.decode()):
        assert 'type="password" name="password"' in body
        assert 'autocomplete="current-password"' in body
        assert "csrfmiddlewaretoken" in body


# Signing in ----------------------------------------------------------------------------


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_a_user_with_a_device_signs_in_with_the_current_code(page: str):
    user = make_user(Role.LI_ADMIN, username="ana")
    device = enrolled(user)

    response = sign_in(page, "ana", PASSWORD, code(device))

    assert signed_in(response)
    assert response.client.session[DEVICE_ID_SESSION_KEY] == device.persistent_id
    assert response.client.get(reverse("home")).status_code == 200
    assert response.client.get(reverse("admin:index")).status_code == 200
    assert len(events("login")) == 1


@pytest.mark.parametrize("page", LOGIN_PAGES)
@pytest.mark.parametrize("given", ["missing", "wrong", "garbage"])
def test_a_missing_or_wrong_code_is_a_failed_sign_in(page: str, given: str):
    user = make_user(Role.LI_ADMIN, username="ana")
    device = enrolled(user)
    typed = {"missing": "", "wrong": wrong(device), "garbage": "12ab56"}[given]

    response = sign_in(page, "ana", PASSWORD, typed)

    assert response.status_code == 200
    assert not signed_in(response)
    assert "_auth_user_id" not in response.client.session
    [failure] = events("login_failed")
    assert failure.details == {"username": "ana", "reason": "two_factor_code"}
    assert failure.source_address == "192.0.2.1"
    assert events("login") == []


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_a_wrong_code_and_a_wrong_password_get_the_same_answer(page: str):
    device = enrolled(make_user(Role.LI_ADMIN, username="ana"))
    typed = wrong(device)

    wrong_code = sign_in(page, "ana", PASSWORD, typed).content.decode()
    wrong_password = sign_in(page, "ana", "not it", typed).content.decode()

    def without_tokens(html: str) -> str:
        return "\n".join(line for line in html.splitlines() if "csrfmiddlewaretoken" not in line)

    assert without_tokens(wrong_code) == without_tokens(wrong_password)
    assert events("login_failed")[1].details == {"username": "ana"}


def test_a_code_is_good_for_one_sign_in_only():
    user = make_user(Role.ANALYST, username="ana")
    device = enrolled(user)
    now = code(device)

    assert signed_in(sign_in("console:login", "ana", PASSWORD, now))
    assert not signed_in(sign_in("console:login", "ana", PASSWORD, now))


def test_a_user_without_a_device_signs_in_with_the_password_alone_whatever_the_code_field():
    make_user(Role.ANALYST, username="ana")
    assert signed_in(sign_in("console:login", "ana", PASSWORD))
    assert signed_in(sign_in("console:login", "ana", PASSWORD, "123456"))


def test_an_unconfirmed_device_asks_for_no_code():
    user = make_user(Role.ANALYST, username="ana")
    TOTPDevice.objects.create(user=user, name="half set up", confirmed=False)
    assert signed_in(sign_in("console:login", "ana", PASSWORD))


def test_the_sign_in_pages_have_the_code_field():
    for page in LOGIN_PAGES:
        body = Client().get(reverse(page)).content.decode()
        assert 'name="code"' in body
        assert 'autocomplete="one-time-code"' in body


class TestLockout:
    @pytest.fixture(autouse=True)
    def throttling(self, settings: Any) -> None:
        settings.AXES_ENABLED = True
        settings.AXES_FAILURE_LIMIT = 3

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_code_failures_count_towards_the_lockout(self, page: str):
        device = enrolled(make_user(Role.LI_ADMIN, username="ana"))
        responses = [
            sign_in(page, "ana", PASSWORD, ""),
            sign_in(page, "ana", PASSWORD, wrong(device)),
            sign_in(page, "ana", PASSWORD, ""),
        ]

        assert [response.status_code for response in responses] == [200, 200, 429]
        assert "Sign-in locked" in responses[-1].content.decode()
        [locked] = events("login_locked_out")
        assert locked.details["username"] == "ana"
        assert len(events("login_failed")) == 3
        # Locked: even the password with the right code is refused until the cool-off.
        time.sleep(1.1)  # django-otp's own throttling after the wrong code
        assert sign_in(page, "ana", PASSWORD, code(device)).status_code == 429

    def test_password_and_code_failures_count_together(self):
        device = enrolled(make_user(Role.LI_ADMIN, username="ana"))
        sign_in("console:login", "ana", "not it", code(device))
        sign_in("admin:login", "ana", PASSWORD, "")
        assert sign_in("console:login", "ana", PASSWORD, "").status_code == 429

    def test_a_right_code_below_the_limit_signs_in(self):
        device = enrolled(make_user(Role.ANALYST, username="ana"))
        sign_in("console:login", "ana", PASSWORD, "")
        assert signed_in(sign_in("console:login", "ana", PASSWORD, code(device)))

    def test_wrong_passwords_on_the_two_factor_page_count_towards_the_lockout(self):
        user = make_user(Role.LI_ADMIN, username="ana")
        device = enrolled(user)
        client = verified_client(user, device)
        client.defaults["REMOTE_ADDR"] = "192.0.2.1"

        def remove(password: str) -> Any:
            return client.post(
                reverse("console:two_factor"), {"password": password, "code": code(device)}
            )

        responses = [remove("not it"), remove("nor this")]
        assert [response.status_code for response in responses] == [200, 200]
        # With the sign-in's failures: the third one locks the user name out from here.
        assert sign_in("console:login", "ana", "wrong", code(device)).status_code == 429
        [locked] = events("login_locked_out")
        assert locked.details["username"] == "ana"

        # While locked out, not even the right password is checked on the page.
        refused = remove(PASSWORD)
        assert refused.status_code == 429
        assert "Sign-in locked" in refused.content.decode()
        assert TOTPDevice.objects.filter(pk=device.pk).exists()
        assert [event.details.get("reason") for event in events("login_failed")] == [
            "two_factor_remove_password",
            "two_factor_remove_password",
            None,
            "two_factor_remove_password",
        ]

    def test_the_failure_that_reaches_the_limit_on_the_page_gets_the_lockout_page(self):
        user = make_user(Role.ANALYST, username="ana")
        client = Client(REMOTE_ADDR="192.0.2.1")
        client.force_login(user)
        pending = pending_for(client, user)
        statuses = [
            client.post(
                reverse("console:two_factor"), {"password": "not it", "code": code(pending)}
            ).status_code
            for _ in range(3)
        ]

        assert statuses == [200, 200, 429]
        pending.refresh_from_db()
        assert pending.confirmed is False
        assert sign_in("console:login", "ana", PASSWORD).status_code == 429


# Sessions that owe a code --------------------------------------------------------------


def test_a_session_from_before_the_device_was_set_up_is_signed_out():
    user = make_user(Role.ANALYST, username="ana")
    client = Client()
    client.force_login(user)  # signed in without a code
    enrolled(user)  # e.g. set up meanwhile in another browser

    response = client.get(reverse("home"))

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('console:login')}?next=/"
    assert "_auth_user_id" not in client.session
    [ended] = events("two_factor.session_ended")
    assert ended.actor_name == "ana"
    assert events("logout")[0].actor_name == "ana"


@pytest.mark.parametrize(
    ("scope", "role", "superuser", "sent_to_set_up"),
    [
        ("off", Role.LI_ADMIN, False, False),
        ("staff", Role.LI_ADMIN, False, True),
        ("staff", Role.AUDITOR, False, True),
        ("staff", Role.SYSADMIN, False, True),
        ("staff", None, True, True),
        ("staff", Role.ANALYST, False, False),
        ("all", Role.ANALYST, False, True),
    ],
)
def test_required_two_factor_sends_users_in_scope_to_set_it_up(
    settings: Any, scope: str, role: Role | None, superuser: bool, sent_to_set_up: bool
):
    settings.JMIRROR_REQUIRE_2FA = scope
    user = make_user(role, is_superuser=superuser)
    client = Client()
    client.force_login(user)

    for path in (reverse("home"), reverse("admin:index")):
        response = client.get(path)
        if sent_to_set_up:
            assert response.status_code == 302
            assert response["Location"] == f"{reverse('console:two_factor')}?next={path}"
        else:
            assert response.status_code == 200 or not response["Location"].startswith(
                reverse("console:two_factor")
            )


def test_a_user_sent_to_set_up_can_reach_the_set_up_page_and_sign_out(settings: Any):
    settings.JMIRROR_REQUIRE_2FA = "all"
    client = Client()
    client.force_login(make_user(Role.ANALYST))

    page = client.get(reverse("console:two_factor"))
    assert page.status_code == 200
    assert "must sign in with a code" in page.content.decode()
    assert client.get(reverse("console:two_factor_qr")).status_code == 200
    assert client.get(reverse("healthz")).status_code == 200
    assert client.post(reverse("console:logout")).status_code == 302
    assert "_auth_user_id" not in client.session


def test_once_set_up_the_user_goes_on_to_the_page_they_asked_for(settings: Any):
    settings.JMIRROR_REQUIRE_2FA = "staff"
    user = make_user(Role.AUDITOR)
    client = Client()
    client.force_login(user)
    client.get(f"{reverse('console:two_factor')}?next=/admin/")
    pending = TOTPDevice.objects.get(user=user)

    response = client.post(
        reverse("console:two_factor"),
        {"password": PASSWORD, "code": code(pending), "next": "/admin/"},
    )

    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_the_set_up_page_goes_nowhere_off_site(settings: Any):
    user = make_user(Role.AUDITOR)
    client = Client()
    client.force_login(user)
    client.get(reverse("console:two_factor"))
    pending = TOTPDevice.objects.get(user=user)
    response = client.post(
        reverse("console:two_factor"),
        {"password": PASSWORD, "code": code(pending), "next": "https://evil.example/"},
    )
    assert response["Location"] == reverse("console:two_factor")


@pytest.mark.django_db(transaction=True)
async def test_required_two_factor_is_enforced_under_asgi_too(settings: Any):
    """Daphne runs the middleware chain asynchronously."""
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    settings.JMIRROR_REQUIRE_2FA = "staff"
    user = await sync_to_async(make_user)(Role.LI_ADMIN)
    client = AsyncClient()
    await client.aforce_login(user)

    response = await client.get(reverse("home"))

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('console:two_factor')}?next=/"


# The API -------------------------------------------------------------------------------


def test_the_api_refuses_a_session_that_owes_a_code_but_not_a_token(settings: Any):
    settings.JMIRROR_REQUIRE_2FA = "staff"
    user = make_user(Role.LI_ADMIN)
    session = Client()
    session.force_login(user)
    token = Token.objects.create(user=user)

    refused = session.get("/api/cases/")
    answered = Client().get("/api/cases/", HTTP_AUTHORIZATION=f"Token {token.key}")

    assert refused.status_code == 403
    assert "two-factor" in refused.json()["detail"]
    assert answered.status_code == 200


def test_the_api_takes_a_session_signed_in_with_a_code(settings: Any):
    settings.JMIRROR_REQUIRE_2FA = "all"
    user = make_user(Role.LI_ADMIN)
    client = verified_client(user, enrolled(user))
    assert client.get("/api/cases/").status_code == 200


# manage.py two_factor ------------------------------------------------------------------


def test_reset_removes_the_devices_of_a_user_who_lost_their_phone():
    user = make_user(Role.LI_ADMIN, username="ana")
    device = enrolled(user)
    TOTPDevice.objects.create(user=user, name="half set up", confirmed=False)
    other = enrolled(make_user(Role.LI_ADMIN, username="bob"))
    out = StringIO()

    call_command("two_factor", "--reset", "ana", stdout=out)

    assert out.getvalue() == "removed 2 two-factor device(s) of ana\n"
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert TOTPDevice.objects.filter(pk=other.pk).exists()
    [event] = events("two_factor.reset")
    assert event.actor_name.startswith("os:")
    assert event.object_id == str(user.pk)
    assert device.persistent_id in event.details["devices"]
    # The password alone signs in again.
    assert signed_in(sign_in("console:login", "ana", PASSWORD))


def test_reset_of_an_unknown_user_fails_with_status_2():
    with pytest.raises(CommandError) as raised:
        call_command("two_factor", "--reset", "nobody")
    assert str(raised.value) == "no user 'nobody'"
    assert raised.value.returncode == 2
    assert events("two_factor.reset") == []


def test_without_reset_the_command_lists_who_has_two_factor():
    enrolled(make_user(Role.LI_ADMIN, username="bob"))
    enrolled(make_user(Role.AUDITOR, username="ana"))
    TOTPDevice.objects.create(user=make_user(username="cy"), name="x", confirmed=False)
    out = StringIO()

    call_command("two_factor", stdout=out)

    lines = out.getvalue().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["ana", "bob"]
    assert lines[0].endswith("last used never")


def test_devices_are_not_in_the_admin():
    superuser = make_user(username="root", is_superuser=True)
    client = Client()
    client.force_login(superuser)
    assert client.get("/admin/otp_totp/totpdevice/").status_code == 404


def test_django_otp_throttles_guessing_at_a_device():
    assert settings.OTP_TOTP_THROTTLE_FACTOR > 0
    device = enrolled(make_user(Role.ANALYST, username="ana"))
    assert not signed_in(sign_in("console:login", "ana", PASSWORD, wrong(device)))
    # Right at once after a wrong one: the device takes no code for a second.
    assert not signed_in(sign_in("console:login", "ana", PASSWORD, code(device)))
    time.sleep(1.1)
    assert signed_in(sign_in("console:login", "ana", PASSWORD, code(device)))
