"""Sign-in security records."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class PasswordChangeRequired(models.Model):
    """A user whose password was made for them and shown once (the first administrator's,
    printed by ``ensure_admin``): every page sends them to change it first. The row
    keeps the password hash it was made for, so a change by any path (the console, the
    admin, ``manage.py changepassword``) ends the requirement."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="password_change_required",
    )
    password_hash = models.CharField(max_length=256)
    since = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "password change required"

    def __str__(self) -> str:
        return f"{self.user} must change the password made for them"
