"""The audit log in the admin site: for auditors (and superusers) to read, for nobody to
change. Adding, changing and deleting are refused here as well as by the model, so the
admin offers no button, form or bulk action that could only fail."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.actions import delete_selected
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from jmirror_web.admin_site import AuditorsReadOnly
from jmirror_web.audit.models import AuditEvent

if TYPE_CHECKING:
    # django-stubs makes ModelAdmin generic over its model; Django's cannot be subscripted.
    AuditEventAdminBase = admin.ModelAdmin[AuditEvent]
else:
    AuditEventAdminBase = admin.ModelAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(AuditorsReadOnly, AuditEventAdminBase):
    list_display = (
        "id",
        "created_at",
        "actor_name",
        "source_address",
        "action",
        "object_type",
        "object_repr",
    )
    list_display_links = ("id", "created_at")
    # By name rather than by the actor key: the log outlives deleted users.
    list_filter = ("action", "actor_name", "object_type")
    search_fields = ("actor_name", "action", "object_repr", "object_id", "source_address")
    date_hierarchy = "created_at"
    fields = (
        "id",
        "created_at",
        "actor_name",
        "actor",
        "source_address",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "details_json",
        "previous_hash",
        "hash",
    )
    readonly_fields = fields

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # Django already drops it without delete permission; say so where it matters.
        actions.pop(delete_selected.__name__, None)
        return actions

    @admin.display(description="details")
    def details_json(self, event: AuditEvent) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(event.details, indent=2, sort_keys=True))
