"""Users in the admin: their roles and case assignments, which are what decides what they
may do (:mod:`jmirror_web.intercepts.access`), in place of Django's staff flag and
per-user model permissions, which the form no longer offers. Superusers change users; LI
administrators read them (to see whom to assign). Roles are read-only. Every change is
audited like any other (:mod:`jmirror_web.audit.log`: users, their groups, the groups)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import ManyToManyField, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django_otp.plugins.otp_totp.models import (  # type: ignore[import-untyped,unused-ignore]
    TOTPDevice,
)

from jmirror_web.intercepts.access import Role

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic over their model.
    UserAdminBase = UserAdmin[User]
    GroupAdminBase = GroupAdmin
else:
    UserAdminBase = UserAdmin
    GroupAdminBase = GroupAdmin

# Two-factor devices are set up and removed by their owner (the "Two-factor sign-in" page)
# or reset from the shell (`manage.py two_factor --reset`), each audited. django-otp's
# admin would show a device's secret key and delete devices without an audit event.
admin.site.unregister(TOTPDevice)

# What each role gives (access.py decides; README "Roles" says the same).
ROLE_RIGHTS: Final = {
    Role.LI_ADMIN: "manages cases, intercepts, routers and case assignments; sees every "
    "case's sessions; packet content and downloads only of the cases assigned to them",
    Role.ANALYST: "the cases assigned to them: sessions, packets and downloads",
    Role.AUDITOR: "reads the records and the audit log; no packet content",
    Role.SYSADMIN: "the service's health pages; no case data",
}


def _roles_help() -> SafeString:
    return format_html(
        "{}<ul>{}</ul>",
        "A user may do what their roles give, nothing more; packet content and downloads "
        "also need an assignment to the case, made on the case's page.",
        format_html_join("", "<li><strong>{}</strong>: {}</li>", ROLE_RIGHTS.items()),
    )


admin.site.unregister(User)


@admin.register(User)
class RolesUserAdmin(UserAdminBase):
    """Django's user admin, showing roles and assignments: no staff flag (entry to the
    admin is by role) and no per-user model permissions (they would grant nothing, and
    look as if they did)."""

    list_display = (
        "username",
        "full_name",
        "roles",
        "cases",
        "is_active",
        "is_superuser",
        "last_login",
    )
    list_filter = ("groups", "is_active", "is_superuser")
    filter_horizontal = ()
    readonly_fields = ("case_links", "last_login", "date_joined")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        (
            "Roles and cases",
            {"fields": ("is_active", "groups", "is_superuser", "case_links")},
        ),
        ("Dates (UTC)", {"fields": ("last_login", "date_joined")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return super().get_queryset(request).prefetch_related("groups", "case_assignments__case")

    def formfield_for_manytomany(
        self, db_field: ManyToManyField[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.ModelMultipleChoiceField[Any] | None:
        if db_field.name == "groups":
            # Only the roles mean anything (access.py): another group would look like a
            # right that is not there.
            kwargs["queryset"] = Group.objects.filter(name__in=list(Role)).order_by("name")
            kwargs["widget"] = forms.CheckboxSelectMultiple
            kwargs["label"] = "Roles"
            kwargs["help_text"] = _roles_help()
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "is_superuser" and field is not None:
            field.label = "Superuser"
            field.help_text = (
                "Every right of every role, and these user pages; packet content and "
                "downloads still only of the cases assigned to them."
            )
        elif db_field.name == "is_active" and field is not None:
            field.help_text = "Unticked, the user cannot sign in; the audit log keeps their name."
        return field

    @admin.display(description="name")
    def full_name(self, user: User) -> str:
        return user.get_full_name()

    @admin.display(description="roles")
    def roles(self, user: User) -> str:
        names = sorted(group.name for group in user.groups.all())
        return ", ".join(names) or "none"

    @admin.display(description="assigned cases")
    def cases(self, user: User) -> str:
        references = sorted(each.case.reference for each in user.case_assignments.all())
        return ", ".join(references) or "none"

    @admin.display(description="case assignments")
    def case_links(self, user: User) -> SafeString:
        """The user's cases, each linking to the case's page, where assignments are made
        (and audited)."""
        links = format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            (
                (reverse("admin:intercepts_case_change", args=[each.case_id]), each.case.reference)
                for each in sorted(user.case_assignments.all(), key=lambda a: a.case.reference)
            ),
        )
        return format_html(
            "{}<div class='help'>Assign a user to a case on the case's page (assigned "
            "users). Only analysts and LI administrators can be assigned.</div>",
            links or "none",
        )


admin.site.unregister(Group)


@admin.register(Group)
class RolesAdmin(GroupAdminBase):
    """The roles, read-only: the migrations make them (with the few model permissions the
    admin checks) and access.py gives them their rights. A new group, or a group's
    permissions changed here, would be a way to rights that bypasses both. A user's roles
    are given on their user page."""

    list_display = ("name", "rights", "members")
    fields = ("name", "rights", "members")
    readonly_fields = fields
    filter_horizontal = ()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Group]:
        return super().get_queryset(request).prefetch_related("user_set")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="what it gives")
    def rights(self, group: Group) -> str:
        rights = {str(role): text for role, text in ROLE_RIGHTS.items()}
        return rights.get(group.name, "nothing: not a role")

    @admin.display(description="members")
    def members(self, group: Group) -> str:
        return ", ".join(sorted(user.username for user in group.user_set.all())) or "none"
