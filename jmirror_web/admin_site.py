"""The admin site, entered by role rather than by Django's staff flag.

Who may use the admin is decided in :mod:`jmirror_web.intercepts.access` like
everything else: LI administrators (records), auditors (records read-only and the
audit log) and superusers. An li-admin needs no separate "staff" flag, and a staff flag
alone opens nothing.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from jmirror_web.intercepts.access import Action, may
from jmirror_web.security.two_factor import SignInForm


def may_use_admin(user: Any) -> bool:
    return bool(user.is_active and (may(user, Action.VIEW_RECORDS) or may(user, Action.VIEW_AUDIT)))


class AuditorsReadOnly:
    """A model admin mixin: the records of the chain of custody (the audit log, exports)
    are for auditors (and superusers) to read and for nobody to add, change or delete,
    so the admin offers no button, form or bulk action that could only fail."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may(request.user, Action.VIEW_AUDIT)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may(request.user, Action.VIEW_AUDIT)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RoleAuthenticationForm(SignInForm, AdminAuthenticationForm):
    """Django's admin sign-in refuses users without the staff flag; this one refuses
    users whose role gives them nothing in the admin, with the same message. It asks for
    the two-factor code as the console's sign-in does."""

    def confirm_login_allowed(self, user: Any) -> None:
        if not may_use_admin(user):
            raise ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            )


class JMirrorAdminSite(admin.AdminSite):
    site_header = "jmirror-web administration"
    site_title = "jmirror-web"
    index_title = "Intercept records and audit log"

    login_form = RoleAuthenticationForm
    login_template = "admin/jmirror_login.html"

    def has_permission(self, request: HttpRequest) -> bool:
        return may_use_admin(request.user)
