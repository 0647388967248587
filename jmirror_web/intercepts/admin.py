"""The admin site for intercept records (cases, intercepts, routers) and for what the
receiver captured (sessions, capture files).

Every permission here is asked of :mod:`jmirror_web.intercepts.access`, never of Django's
model permissions: LI administrators manage the records, auditors read them, analysts
and system administrators get nothing (they work in the case views, not here). What the
receiver captured is never editable, by anyone. The admin shows no packet content, so
no page here needs a case assignment.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import User
from django.db.models import Count, Field, ForeignKey, QuerySet
from django.forms import ModelChoiceField
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from jmirror_web.admin_site import SafeAutocompleteSelect
from jmirror_web.console.health import STALE_AFTER
from jmirror_web.environment import parse_listen
from jmirror_web.intercepts import provisioning
from jmirror_web.intercepts.access import Action, Role, cases_for, may
from jmirror_web.intercepts.models import (
    MAX_CLAIM_ENTRIES,
    MAX_INTERCEPT_ID,
    MAX_SESSION_ID,
    CaptureFile,
    Case,
    CaseAssignment,
    Intercept,
    Listener,
    Router,
    Session,
    UnclaimedStream,
)

if TYPE_CHECKING:
    # django-stubs makes the admin classes and ModelForm generic over their model; Django's
    # own classes cannot be subscripted, so only the type checker sees the parameters.
    CaseAdminBase = admin.ModelAdmin[Case]
    InterceptAdminBase = admin.ModelAdmin[Intercept]
    RouterAdminBase = admin.ModelAdmin[Router]
    SessionAdminBase = admin.ModelAdmin[Session]
    CaptureFileAdminBase = admin.ModelAdmin[CaptureFile]
    UnclaimedStreamAdminBase = admin.ModelAdmin[UnclaimedStream]
    AssignmentInlineBase = admin.TabularInline[CaseAssignment, Case]
    CaptureFileInlineBase = admin.TabularInline[CaptureFile, Session]
    InterceptFormBase = forms.ModelForm[Intercept]
    RouterFormBase = forms.ModelForm[Router]
else:
    CaseAdminBase = InterceptAdminBase = RouterAdminBase = admin.ModelAdmin
    SessionAdminBase = CaptureFileAdminBase = UnclaimedStreamAdminBase = admin.ModelAdmin
    AssignmentInlineBase = CaptureFileInlineBase = admin.TabularInline
    InterceptFormBase = RouterFormBase = forms.ModelForm


def _window(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"


class RecordsPermissions:
    """Cases, intercepts, routers and assignments: LI administrators (and superusers)
    manage them, auditors read them."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may(request.user, Action.VIEW_RECORDS)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may(request.user, Action.VIEW_RECORDS)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may(request.user, Action.MANAGE_RECORDS)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may(request.user, Action.MANAGE_RECORDS)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may(request.user, Action.MANAGE_RECORDS)


class CapturedPermissions:
    """Sessions and capture files: the metadata of the cases the user may see it for,
    shown to those who may read the records; written by the receiver alone."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            may(request.user, Action.VIEW_RECORDS)
            and cases_for(request.user, Action.VIEW_METADATA).exists()
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _assignable_users() -> QuerySet[User]:
    # Only these roles can use an assignment (access.py); assigning anyone else would
    # look like access that is not there.
    return (
        User.objects.filter(is_active=True, groups__name__in=[Role.ANALYST, Role.LI_ADMIN])
        .distinct()
        .order_by("username")
    )


class CaseAssignmentInline(RecordsPermissions, AssignmentInlineBase):
    model = CaseAssignment
    extra = 0
    fields = ("user", "assigned_at")
    readonly_fields = ("assigned_at",)
    verbose_name = "assigned user"
    verbose_name_plural = "assigned users (the only way to the case's content and downloads)"

    def formfield_for_foreignkey(
        self, db_field: ForeignKey[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField[Any] | None:
        if db_field.name == "user":
            kwargs["queryset"] = _assignable_users()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Case)
class CaseAdmin(RecordsPermissions, CaseAdminBase):
    list_display = (
        "reference",
        "title",
        "agency",
        "status",
        "window",
        "time_left",
        "legal_hold",
        "intercept_count",
    )
    list_filter = ("status", "legal_hold", "agency")
    search_fields = ("reference", "title", "agency")
    date_hierarchy = "valid_from"
    inlines = (CaseAssignmentInline,)
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("reference", "title", "agency", "legal_basis", "status")}),
        ("Validity", {"fields": ("valid_from", "valid_until")}),
        ("Retention", {"fields": ("retention_days", "legal_hold")}),
        (None, {"fields": ("notes", "created_at", "updated_at")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Case]:
        cases = cases_for(request.user, Action.VIEW_RECORD)
        return cases.annotate(intercept_total=Count("intercepts", distinct=True))

    @admin.display(description="window")
    def window(self, case: Case) -> str:
        return _window(case.valid_from, case.valid_until)

    @admin.display(description="time left", ordering="valid_until")
    def time_left(self, case: Case) -> str:
        now = timezone.now()
        if now >= case.valid_until:
            return "ended"
        if now < case.valid_from:
            return f"starts in {_duration(case.valid_from - now)}"
        return _duration(case.valid_until - now)

    @admin.display(description="intercepts", ordering="intercept_total")
    def intercept_count(self, case: Case) -> int:
        total: int = case.intercept_total  # type: ignore[attr-defined]
        return total


def _duration(span: timedelta) -> str:
    if span >= timedelta(days=1):
        return f"{span.days} d {span.seconds // 3600} h"
    hours, rest = divmod(span.seconds, 3600)
    return f"{hours} h {rest // 60} min"


class LinesField(forms.CharField):
    """A list of names or addresses, one a line; blank lines and the spaces around each
    are dropped. The model validates what the list holds."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 60})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]


class HexIdField(forms.Field):
    """A mirror id or session id, shown in hex as everywhere in the console (0x8000) and
    taken in hex (with its 0x) or in decimal; empty is None. The model's validators
    bound it again."""

    widget = forms.TextInput(attrs={"size": 14, "autocomplete": "off"})
    MAX_CHARS: Final = 20

    def __init__(self, *, maximum: int, **kwargs: Any) -> None:
        self.maximum = maximum
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = self.to_python(value)
            except forms.ValidationError:
                return value
        return f"{value:#x}" if isinstance(value, int) else value

    def to_python(self, value: Any) -> int | None:
        text = str(value if value is not None else "").strip()
        if not text:
            return None
        hexadecimal = text[:2].lower() == "0x"
        digits = text[2:] if hexadecimal else text
        base = 16 if hexadecimal else 10
        allowed = "0123456789abcdefABCDEF" if hexadecimal else "0123456789"
        if len(text) > self.MAX_CHARS or not digits or any(c not in allowed for c in digits):
            raise forms.ValidationError(
                f"Enter the id in hex (0x8000) or decimal (32768), from 0 to {self.maximum:#x}.",
                code="invalid",
            )
        number = int(digits, base)
        if number > self.maximum:
            raise forms.ValidationError(
                f"{number:#x} is past the largest id, {self.maximum:#x}.", code="max_value"
            )
        return number


# Mirror and session ids, edited in hex as the console shows them.
_HEX_IDS: Final = {"intercept_id": MAX_INTERCEPT_ID, "sid": MAX_SESSION_ID}


# The CN2 lists, edited one entry a line.
_LINES_HELP: Final = {
    "virtual_networks": "Claim the frames whose source or destination virtual network is "
    f"one of these, one name a line (at most {MAX_CLAIM_ENTRIES}).",
    "targets": "Claim the frames whose inner source or destination address lies in one of "
    f"these addresses or prefixes (10.0.0.7, 2001:db8::/48), one a line (at most "
    f"{MAX_CLAIM_ENTRIES}).",
}


class InterceptForm(InterceptFormBase):
    class Meta:
        model = Intercept
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "kind" in self.fields:
            # Left empty, an intercept is what it always was here: jmirror.
            self.fields["kind"].required = False

    def clean_kind(self) -> str:
        kind: str = self.cleaned_data.get("kind") or Intercept.Kind.JMIRROR
        return kind

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        assert cleaned is not None
        routers = cleaned.get("routers")
        if routers is not None:
            # The routers are saved after the row: hand the chosen ones to the model's
            # clean(), which checks the overlap rule (and names the intercept in the way).
            self.instance.pending_router_ids = frozenset(router.pk for router in routers)
        return cleaned


@admin.register(Intercept)
class InterceptAdmin(RecordsPermissions, InterceptAdminBase):
    form = InterceptForm
    list_display = (
        "liid",
        "case",
        "mirror_id",
        "session_id",
        "router_names",
        "window",
        "in_force_now",
        "keep_content",
    )
    list_filter = ("kind", "case__status", "keep_content", "routers")
    search_fields = ("liid", "case__reference", "target_description")
    list_select_related = ("case",)
    autocomplete_fields = ("case",)
    filter_horizontal = ("routers",)
    readonly_fields = ("provisioning", "created_at", "updated_at")

    def get_fieldsets(self, request: HttpRequest, obj: Intercept | None = None) -> Any:
        jmirror = ("jmirror (E Series, MX)", {"fields": ("intercept_id", "sid")})
        cn2 = (
            "CN2 / Contrail vRouter",
            {
                "fields": ("analyzer_port", "virtual_networks", "targets"),
                "description": "Every one given must match (at least one). Virtual "
                "networks and targets do not keep two intercepts apart: give each mirror "
                "destination its own analyzer port.",
            },
        )
        claims = [jmirror, cn2] if obj is None else [cn2 if obj.is_cn2 else jmirror]
        fieldsets: list[Any] = [
            (None, {"fields": ("case", "liid", "target_description")}),
            ("What is captured", {"fields": ("kind", "routers", "keep_content")}),
            *claims,
            ("Window", {"fields": ("valid_from", "valid_until")}),
            ("Countries", {"fields": ("authcc", "delivcc")}),
        ]
        if obj is not None:
            fieldsets.append(("Provisioning", {"fields": ("provisioning",), "classes": ("wide",)}))
            fieldsets.append((None, {"fields": ("created_at", "updated_at")}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Intercept | None = None) -> Any:
        # The kind is chosen once: the page shows only that kind's claims, and the
        # sessions already captured are of its format.
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, "kind") if obj is not None else fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Intercept]:
        return (
            super()
            .get_queryset(request)
            .filter(case__in=cases_for(request.user, Action.VIEW_RECORD))
            .prefetch_related("routers")
        )

    def formfield_for_dbfield(
        self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        if db_field.name in _LINES_HELP:
            return LinesField(required=False, help_text=_LINES_HELP[db_field.name])
        if db_field.name in _HEX_IDS:
            return HexIdField(
                maximum=_HEX_IDS[db_field.name],
                required=False,
                label=capfirst(db_field.verbose_name),
                help_text=f"{db_field.help_text} In hex (0x8000) or decimal.",
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def formfield_for_foreignkey(
        self, db_field: ForeignKey[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField[Any] | None:
        if db_field.name in self.autocomplete_fields and "widget" not in kwargs:
            kwargs["widget"] = SafeAutocompleteSelect(
                db_field, self.admin_site, using=kwargs.get("using")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="mirror id (CN2: claims)", ordering="intercept_id")
    def mirror_id(self, intercept: Intercept) -> str:
        if intercept.is_cn2 or intercept.intercept_id is None:
            return f"CN2: {intercept.claims_text()}"
        return f"{intercept.intercept_id:#x}"

    @admin.display(description="session id", ordering="sid")
    def session_id(self, intercept: Intercept) -> str:
        if intercept.is_cn2:
            return "-"
        return f"{intercept.sid:#x}" if intercept.sid is not None else "any"

    @admin.display(description="routers")
    def router_names(self, intercept: Intercept) -> str:
        return ", ".join(router.name for router in intercept.routers.all()) or "any"

    @admin.display(description="window")
    def window(self, intercept: Intercept) -> str:
        return _window(intercept.valid_from, intercept.valid_until)

    @admin.display(description="in force now", boolean=True)
    def in_force_now(self, intercept: Intercept) -> bool:
        return intercept.is_in_force(timezone.now())

    @admin.display(description="provisioning")
    def provisioning(self, intercept: Intercept) -> SafeString:
        return provisioning_html(intercept)


# Placeholders for what this host does not know; shown in angle brackets for the router
# team to fill in. The builders validate their input, so they get a stand-in address and
# the placeholder replaces it afterwards, by attribute or header name.
_STAND_IN_ADDRESS = "192.0.2.1"
_MEDIATION_PLACEHOLDER = "<mediation address: set JMIRROR_MEDIATION_ADDRESS>"
_ROUTER_PLACEHOLDER = "<router's radius-flow-tap source address>"


def _radius(action: provisioning.LiAction, handle: provisioning.MedDevHandle) -> str:
    address = settings.MEDIATION_ADDRESS
    attributes = provisioning.radius_mirroring_attributes(
        action, handle, address or _STAND_IN_ADDRESS, settings.MEDIATION_PORT
    )
    shown = [
        dataclasses.replace(attribute, value=_MEDIATION_PLACEHOLDER)
        if not address and attribute.vendor_type == provisioning.ErxAttribute.MED_IP_ADDRESS
        else attribute
        for attribute in attributes
    ]
    return "".join(
        f"{attribute.freeradius_line()}    # {attribute.number}\n" for attribute in shown
    )


def _dtcp_add(mirror_id: int, router: Router | None) -> str:
    address = settings.MEDIATION_ADDRESS
    message = provisioning.dtcp_add(
        csource_id="<dtcp-user>",
        cdest_id="<cdest-id>",
        mediation_address=address or _STAND_IN_ADDRESS,
        mediation_port=settings.MEDIATION_PORT,
        source_address=router.address if router is not None else _STAND_IN_ADDRESS,
        intercept_id=mirror_id,
        trigger=provisioning.DtcpTrigger.USER_NAME,
        trigger_value="<subscriber user name>",
        seq=1,
    )
    placeholders = {}
    if not address:
        placeholders["X-JTap-Cdest-Dest-Address"] = _MEDIATION_PLACEHOLDER
    if router is None:
        placeholders["X-JTap-Cdest-Source-Address"] = _ROUTER_PLACEHOLDER
    headers = tuple((name, placeholders.get(name, value)) for name, value in message.headers)
    return provisioning.DtcpMessage(message.method, message.version, headers).text()


def listened_ports(now: datetime) -> set[int]:
    """The UDP ports the running receivers listen on, as their Listener rows say (a
    receiver that has not reported within health.STALE_AFTER is not counted)."""
    ports = set()
    for address in Listener.objects.filter(
        receiver__stopped_at__isnull=True, receiver__reported_at__gte=now - STALE_AFTER
    ).values_list("address", flat=True):
        try:
            ports.add(parse_listen(address)[1])
        except ValueError:
            continue  # not HOST:PORT: says nothing of a port
    return ports


def port_note(port: int, setting: str, listened: set[int]) -> str:
    """Whether a running receiver listens on ``port``, the port a snippet names (from
    ``setting``): routers configured with a port nothing listens on send into the void."""
    if not listened:
        return (
            f"No receiver is running now, so it cannot be checked that this host listens "
            f"on UDP port {port} ({setting})."
        )
    if port in listened:
        return f"A running receiver listens on UDP port {port} ({setting})."
    shown = ", ".join(str(each) for each in sorted(listened))
    return (
        f"Port {port} ({setting}) differs from what the running receivers listen on: "
        f"UDP {shown}. A router given these lines would mirror to a port nothing "
        f"receives on; correct {setting}, or the receivers' JMIRROR_LISTEN."
    )


def _cn2_provisioning_html(intercept: Intercept) -> SafeString:
    """What a CN2 intercept needs of the vRouters: a mirror destination that sends to
    this host with the Juniper header, on the intercept's analyzer port."""
    address = settings.MEDIATION_ADDRESS or _MEDIATION_PLACEHOLDER
    port = (
        str(intercept.analyzer_port)
        if intercept.analyzer_port is not None
        else "<an analyzer port this host listens on>"
    )
    text = (
        f"analyzer IP address: {address}\n"
        f"analyzer UDP port:   {port}\n"
        "Juniper header:      on (juniperHeader: true, CN2's default; without it the "
        "vRouter sends VxLAN, which is not decoded here)\n"
    )
    blocks = [
        (
            "CN2 / Contrail: the mirror destination of the policy rule or interface that "
            "mirrors the target's traffic",
            text,
        )
    ]
    if intercept.virtual_networks or intercept.targets:
        blocks.append(
            (
                "Of what arrives there, this intercept keeps only the frames of",
                intercept.claims_text(),
            )
        )
    if intercept.analyzer_port is None:
        return _with_note(None, blocks)
    note = port_note(
        intercept.analyzer_port, "the intercept's analyzer port", listened_ports(timezone.now())
    )
    return _with_note(note, blocks)


def _with_note(note: str | None, blocks: list[tuple[str, str]]) -> SafeString:
    """The snippets, each titled, after the port check's note (when there is one)."""
    snippets = format_html_join("\n", "<p><strong>{}</strong></p><pre>{}</pre>", blocks)
    if note is None:
        return snippets
    return format_html("<p data-port-note>{}</p>\n{}", note, snippets)


def provisioning_html(intercept: Intercept) -> SafeString:
    """The RADIUS attributes that start and stop the mirror, and a DTCP ADD for each MX
    router of the intercept (one with a placeholder source when it names no router); for
    a CN2 intercept, the vRouters' mirror destination."""
    if intercept.is_cn2 or intercept.intercept_id is None:
        return _cn2_provisioning_html(intercept)
    handle = provisioning.MedDevHandle(intercept.intercept_id, intercept.sid)
    note = port_note(
        settings.MEDIATION_PORT, "JMIRROR_MEDIATION_PORT", listened_ports(timezone.now())
    )
    blocks: list[tuple[str, str]] = []
    try:
        blocks.append(
            (
                f"RADIUS, to start mirroring ({handle.describe()}), in an Access-Accept "
                "or CoA-Request; the RADIUS server salt-encrypts all four",
                _radius(provisioning.LiAction.START, handle),
            )
        )
        blocks.append(("RADIUS, to stop mirroring", _radius(provisioning.LiAction.STOP, handle)))
    except provisioning.ProvisioningError as error:
        blocks.append(("Cannot build the RADIUS attributes", str(error)))
    routers = list(intercept.routers.all())
    mx_routers: list[Router | None] = [
        router for router in routers if router.kind == Router.Kind.MX
    ]
    sid_note = (
        f"; DTCP cannot request the pinned session id {intercept.sid:#x}: the router picks "
        "a new one at each login"
        if intercept.sid is not None
        else "; the router picks a new session id at each login"
    )
    for router in mx_routers if routers else [None]:
        where = f" on {router.name}" if router is not None else ""
        try:
            blocks.append(
                (
                    f"DTCP ADD{where} (MX){sid_note}; the DTCP client sets Seq and "
                    "Authentication-Info",
                    _dtcp_add(intercept.intercept_id, router).replace("\r\n", "\n"),
                )
            )
        except provisioning.ProvisioningError as error:
            blocks.append((f"Cannot build the DTCP ADD{where}", str(error)))
    return _with_note(note, blocks)


class RouterForm(RouterFormBase):
    class Meta:
        model = Router
        fields = "__all__"

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        assert cleaned is not None
        kind = cleaned.get("kind")
        if kind is not None:
            # Left as they were, the format follows the kind, and a new vRouter's port
            # is Contrail's analyzer default.
            if "format" not in self.changed_data:
                cleaned["format"] = Router.format_of(kind)
            if "port" not in self.changed_data and self.instance._state.adding:
                cleaned["port"] = Router.default_port(kind)
        return cleaned


@admin.register(Router)
class RouterAdmin(RecordsPermissions, RouterAdminBase):
    form = RouterForm
    list_display = ("name", "address", "kind", "port", "format")
    list_filter = ("kind", "format", "port")
    search_fields = ("name", "address")
    readonly_fields = ("created_at", "updated_at")


def _sessions_for(request: HttpRequest) -> QuerySet[Session]:
    return Session.objects.filter(intercept__case__in=cases_for(request.user, Action.VIEW_METADATA))


class CaptureFileInline(CapturedPermissions, CaptureFileInlineBase):
    model = CaptureFile
    extra = 0
    fields = ("path", "first_packet", "last_packet", "packets", "bytes", "sha256", "closed")
    readonly_fields = fields
    show_change_link = True


@admin.register(Session)
class SessionAdmin(CapturedPermissions, SessionAdminBase):
    list_display = (
        "router",
        "intercept",
        "mid_hex",
        "sid_hex",
        "first_seen",
        "last_seen",
        "packets",
        "bytes",
        "stored_packets",
    )
    list_filter = ("router", "intercept__case")
    search_fields = ("intercept__liid", "intercept__case__reference", "router__name")
    list_select_related = ("router", "intercept")
    date_hierarchy = "last_seen"
    inlines = (CaptureFileInline,)
    # Read only for everyone: the page shows the stream as the list does (hex ids, or a
    # Contrail session's format and analyzer port), not the raw key columns.
    fields = (
        "router",
        "intercept",
        "mid_hex",
        "sid_hex",
        "first_seen",
        "last_seen",
        "packets",
        "bytes",
        "stored_packets",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Session]:
        return _sessions_for(request)

    # A Contrail session's mid and sid are its stream's key (CONTRAIL_MID, the analyzer
    # port), not ids a router sent: its format and port are shown instead.
    @admin.display(description="mid (CN2: format)", ordering="mid")
    def mid_hex(self, session: Session) -> str:
        return "Contrail (CN2)" if session.is_contrail else f"{session.mid:#x}"

    @admin.display(description="sid (CN2: analyzer port)", ordering="sid")
    def sid_hex(self, session: Session) -> str:
        if session.is_contrail:
            return f"analyzer port {session.analyzer_port}"
        return f"{session.sid:#x}"


@admin.register(CaptureFile)
class CaptureFileAdmin(CapturedPermissions, CaptureFileAdminBase):
    list_display = (
        "path",
        "session",
        "first_packet",
        "last_packet",
        "packets",
        "bytes",
        "sha256",
        "closed",
        "node",
        "where",
    )
    list_filter = ("closed", "node")
    search_fields = ("path", "sha256", "session__intercept__liid", "object_key")
    list_select_related = ("session__router",)

    @admin.display(description="stored")
    def where(self, capture: CaptureFile) -> str:
        """Where the evidence is: in the object store (since when, locked until when, held),
        waiting for upload (with the last failure), or on the capturing host only."""
        if capture.purged_at is not None:
            return "purged"
        if capture.uploaded_at is not None:
            parts = [f"in the store since {capture.uploaded_at:%Y-%m-%d %H:%M:%S} UTC"]
            if capture.object_retain_until is not None:
                parts.append(f"locked until {capture.object_retain_until:%Y-%m-%d}")
            if capture.object_legal_hold:
                parts.append("legal hold")
            if capture.local_removed_at is not None:
                parts.append("local copy removed")
            return "; ".join(parts)
        if capture.closed and capture.upload_error:
            return f"upload failing ({capture.upload_attempts}x): {capture.upload_error}"
        node = f" on {capture.node}" if capture.node else ""
        if not capture.closed:
            return f"being written{node}"
        if settings.STORAGE is not None:
            return f"waiting for upload{node}"
        return f"local{node}"

    def get_queryset(self, request: HttpRequest) -> QuerySet[CaptureFile]:
        return CaptureFile.objects.filter(session__in=_sessions_for(request))


@admin.register(UnclaimedStream)
class UnclaimedStreamAdmin(UnclaimedStreamAdminBase):
    """Streams whose packets were dropped, for LI administrators to map: register the
    router, or create the intercept (the link opens the form filled in). Counts only."""

    list_display = (
        "source",
        "router",
        "mid_hex",
        "sid_hex",
        "reason",
        "packets",
        "first_seen",
        "last_seen",
        "map_it",
    )
    list_filter = ("reason", "router")
    search_fields = ("source", "router__name")
    list_select_related = ("router",)
    date_hierarchy = "last_seen"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may(request.user, Action.VIEW_RECORDS)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may(request.user, Action.VIEW_RECORDS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Clearing a stream that has been dealt with is records management.
        return may(request.user, Action.MANAGE_RECORDS)

    def get_list_display(self, request: HttpRequest) -> Any:
        if may(request.user, Action.MANAGE_RECORDS):
            return self.list_display
        return self.list_display[:-1]

    # A Contrail stream's mid and sid are its key (CONTRAIL_MID, the analyzer port), an
    # aggregate row's mid is past any jmirror one: neither is shown as an id.
    @admin.display(description="mid (CN2: format)", ordering="mid")
    def mid_hex(self, stream: UnclaimedStream) -> str:
        if stream.is_aggregate:
            return "other streams"
        return "Contrail (CN2)" if stream.is_contrail else f"{stream.mid:#x}"

    @admin.display(description="sid (CN2: analyzer port)", ordering="sid")
    def sid_hex(self, stream: UnclaimedStream) -> str:
        if stream.is_aggregate:
            return "-"
        if stream.is_contrail:
            return f"analyzer port {stream.analyzer_port}"
        return f"{stream.sid:#x}"

    @admin.display(description="map it")
    def map_it(self, stream: UnclaimedStream) -> SafeString | str:
        """A link to the form that maps the stream, filled in: the router's (a Contrail
        stream's as a CN2 vRouter on its analyzer port), else the intercept's (a CN2
        intercept of the analyzer port for a Contrail stream)."""
        if stream.is_aggregate:
            return "-"
        if stream.router_id is None:
            address = stream.source.removeprefix("::ffff:")
            query: dict[str, str | int] = {"address": address}
            if stream.is_contrail:
                query |= {"kind": Router.Kind.CN2, "port": stream.sid}
            url = reverse("admin:intercepts_router_add") + "?" + urlencode(query)
            what = "CN2 vRouter" if stream.is_contrail else "router"
            return format_html('<a href="{}">register {} {}</a>', url, what, address)
        if stream.is_contrail:
            url = (
                reverse("admin:intercepts_intercept_add")
                + "?"
                + urlencode(
                    {
                        "kind": Intercept.Kind.CN2,
                        "analyzer_port": stream.sid,
                        "routers": stream.router_id,
                    }
                )
            )
            return format_html(
                '<a href="{}">create CN2 intercept for analyzer port {}</a>', url, stream.sid
            )
        url = reverse("admin:intercepts_intercept_add") + (
            f"?intercept_id={stream.mirror_id}&sid={stream.sid}&routers={stream.router_id}"
        )
        return format_html('<a href="{}">create intercept for mid {}</a>', url, f"{stream.mid:#x}")
