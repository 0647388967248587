"""Exports in the admin site: the chain-of-custody records, for auditors (and superusers)
to read and nobody to change. No packet content is shown here, only what the manifest
holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from jmirror_web.admin_site import AuditorsReadOnly
from jmirror_web.exports.models import Export

if TYPE_CHECKING:
    ExportAdminBase = admin.ModelAdmin[Export]
else:
    ExportAdminBase = admin.ModelAdmin


@admin.register(Export)
class ExportAdmin(AuditorsReadOnly, ExportAdminBase):
    list_display = (
        "id",
        "created_at",
        "requester_name",
        "case",
        "file_name",
        "state",
        "packets",
        "size",
        "sha256",
    )
    list_filter = ("state", "kind", "format")
    search_fields = ("requester_name", "file_name", "sha256", "case__reference")
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in Export._meta.fields]
