"""``manage.py two_factor``: who has two-factor sign-in; ``--reset USERNAME`` removes a
user's devices (a lost phone), audited. The user then signs in with the password alone,
or, where ``JMIRROR_REQUIRE_2FA`` covers them, is asked to set up a new device at once."""

from __future__ import annotations

from typing import Any

import django_otp  # type: ignore[import-untyped,unused-ignore]
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_otp.plugins.otp_totp.models import (  # type: ignore[import-untyped,unused-ignore]
    TOTPDevice,
)

from jmirror_web.audit.actors import shell_actor
from jmirror_web.audit.log import acting_as, record

RESET = "two_factor.reset"


class Command(BaseCommand):
    help = (
        "List the users who sign in with a two-factor code, or remove a user's devices "
        "with --reset USERNAME (a lost phone); the reset is audited."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset", metavar="USERNAME", help="remove every two-factor device of this user"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["reset"] is None:
            self.list_users()
        else:
            self.reset(options["reset"])

    def list_users(self) -> None:
        devices = (
            TOTPDevice.objects.filter(confirmed=True)
            .select_related("user")
            .order_by("user__username", "pk")
        )
        for device in devices:
            name, since = device.user.get_username(), f"{device.created_at:%Y-%m-%d}"
            used = f"{device.last_used_at:%Y-%m-%d %H:%M}Z" if device.last_used_at else "never"
            self.stdout.write(f"{name}\tsince {since}\tlast used {used}")

    def reset(self, username: str) -> None:
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"no user {username!r}", returncode=2) from None
        with acting_as(shell_actor()), transaction.atomic():
            # Every kind of device django-otp knows, confirmed or not.
            devices = list(django_otp.devices_for_user(user, confirmed=None))
            removed = [device.persistent_id for device in devices]
            for device in devices:
                device.delete()
            record(RESET, user, details={"devices": removed})
        if removed:
            self.stdout.write(f"removed {len(removed)} two-factor device(s) of {username}")
        else:
            self.stdout.write(f"{username} had no two-factor device; recorded anyway")
