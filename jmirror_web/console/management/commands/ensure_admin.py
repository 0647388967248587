"""``manage.py ensure_admin``: the first administrator, made once (what ./run does).

If no superuser exists, creates ``admin`` (or ``JMIRROR_ADMIN_USER``) with the password
in ``JMIRROR_ADMIN_PASSWORD``, or a random one printed once. Does nothing when a superuser
exists, so running it at every start is safe and never resets anyone's password.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from jmirror_web.security.first_password import require_change


class Command(BaseCommand):
    help = "Create the first administrator if there is none (password printed once)."

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            return
        username = os.environ.get("JMIRROR_ADMIN_USER", "admin").strip() or "admin"
        given = os.environ.get("JMIRROR_ADMIN_PASSWORD", "")
        password = given or secrets.token_urlsafe(12)
        try:
            validate_password(password, users(username=username))
        except ValidationError as error:
            raise CommandError(
                "JMIRROR_ADMIN_PASSWORD is too weak: " + " ".join(error.messages)
            ) from None
        if users.objects.filter(username=username).exists():
            raise CommandError(
                f"a user {username!r} exists but is not a superuser; set JMIRROR_ADMIN_USER "
                "to another name, or run `manage.py createsuperuser`"
            )
        admin = users.objects.create_superuser(username=username, email="", password=password)
        if not given:
            # Printed once, so seen by whoever saw the terminal: changed at first sign-in.
            require_change(admin)
        if given:
            self.stdout.write(f"created administrator {username!r} (password from the environment)")
        else:
            self.stdout.write(
                f"created administrator {username!r} with password {password} "
                "(shown once; the first sign-in asks for a new one)"
            )
