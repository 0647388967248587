"""JSON shapes of the intercept records, and the model validation every write passes.

Writes run the model's ``full_clean`` (field validators, ``clean``, unique checks and
constraints) on the record as it would be saved, so the API cannot store what the
admin site would refuse. Mirror ids and session ids are integers; ``*_hex`` fields
repeat them in hex, read-only, as routers and Wireshark show them. An intercept's
``kind`` is ``jmirror`` (the default) or ``cn2``; a CN2 intercept has a null mirror id
and claims by ``analyzer_port``, ``virtual_networks`` and ``targets`` (lists, stored
normalized), as :class:`~jmirror_web.intercepts.models.Intercept` describes. A router
created with a ``kind`` and no ``format`` or ``port`` gets its kind's.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from django.contrib.auth.models import User
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import serializers
from rest_framework.settings import api_settings

from jmirror_web.intercepts.access import Action, cases_for
from jmirror_web.intercepts.models import Case, Intercept, Router, Session

_M = TypeVar("_M", bound=models.Model)


def _as_api_error(error: DjangoValidationError) -> serializers.ValidationError:
    detail = serializers.as_serializer_error(error)
    if NON_FIELD_ERRORS in detail:
        detail[api_settings.NON_FIELD_ERRORS_KEY] = detail.pop(NON_FIELD_ERRORS)
    return serializers.ValidationError(detail)


class CleanModelSerializer(serializers.ModelSerializer[_M]):
    """A model serializer that validates the would-be record with ``full_clean``."""

    def candidate(self, attrs: dict[str, Any]) -> _M:
        """The record as it would be saved, without its many-to-many relations."""
        model: type[_M] = self.Meta.model
        instance = copy.copy(self.instance) if self.instance is not None else model()
        many_to_many = {field.name for field in model._meta.many_to_many}
        for name, value in attrs.items():
            if name not in many_to_many:
                setattr(instance, name, value)
        return instance

    def full_clean(self, instance: _M, attrs: dict[str, Any]) -> None:
        instance.full_clean()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            self.full_clean(self.candidate(attrs), attrs)
        except DjangoValidationError as error:
            raise _as_api_error(error) from None
        return attrs


class CaseSerializer(CleanModelSerializer[Case]):
    analysts = serializers.SlugRelatedField[User](many=True, read_only=True, slug_field="username")

    class Meta:
        model = Case
        fields = [
            "id",
            "reference",
            "title",
            "agency",
            "legal_basis",
            "valid_from",
            "valid_until",
            "status",
            "retention_days",
            "legal_hold",
            "notes",
            "analysts",
            "created_at",
            "updated_at",
        ]


class RouterSerializer(CleanModelSerializer[Router]):
    class Meta:
        model = Router
        fields = ["id", "name", "address", "kind", "port", "format", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        kind = attrs.get("kind")
        if kind is not None:
            # Left out, the format follows the kind (also when an update changes it), and
            # a new vRouter's port is Contrail's analyzer default.
            changed = self.instance is None or self.instance.kind != kind
            if "format" not in attrs and changed:
                attrs["format"] = Router.format_of(kind)
            if "port" not in attrs and self.instance is None:
                attrs["port"] = Router.default_port(kind)
        return super().validate(attrs)


class InterceptSerializer(CleanModelSerializer[Intercept]):
    case = serializers.PrimaryKeyRelatedField[Case](queryset=Case.objects.none())
    case_reference = serializers.CharField(source="case.reference", read_only=True)
    intercept_id_hex = serializers.SerializerMethodField()
    sid_hex = serializers.SerializerMethodField()

    class Meta:
        model = Intercept
        fields = [
            "id",
            "case",
            "case_reference",
            "liid",
            "kind",
            "intercept_id",
            "intercept_id_hex",
            "sid",
            "sid_hex",
            "analyzer_port",
            "virtual_networks",
            "targets",
            "routers",
            "valid_from",
            "valid_until",
            "authcc",
            "delivcc",
            "target_description",
            "keep_content",
            "created_at",
            "updated_at",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        case_field = self.fields["case"]
        assert isinstance(case_field, serializers.PrimaryKeyRelatedField)
        # A case the user may not see is answered like one that does not exist.
        case_field.queryset = cases_for(
            getattr(request, "user", None), Action.VIEW_RECORD
        ).order_by("pk")

    def get_intercept_id_hex(self, intercept: Intercept) -> str | None:
        return None if intercept.intercept_id is None else f"{intercept.intercept_id:#x}"

    def get_sid_hex(self, intercept: Intercept) -> str | None:
        return None if intercept.sid is None else f"{intercept.sid:#x}"

    def full_clean(self, instance: Intercept, attrs: dict[str, Any]) -> None:
        # The routers are saved after the row, so the model's overlap check is told
        # the ones in the request (absent: the routers already saved).
        if "routers" in attrs:
            instance.pending_router_ids = frozenset(router.pk for router in attrs["routers"])
        instance.full_clean()
        # full_clean normalizes a CN2 intercept's lists; the row is saved from attrs.
        for name in ("virtual_networks", "targets"):
            if name in attrs:
                attrs[name] = getattr(instance, name)


class SessionSerializer(serializers.ModelSerializer[Session]):
    router_address = serializers.CharField(source="router.address", read_only=True)
    liid = serializers.CharField(source="intercept.liid", read_only=True, allow_null=True)
    case = serializers.IntegerField(source="intercept.case_id", read_only=True, allow_null=True)
    format = serializers.SerializerMethodField()
    mid_hex = serializers.SerializerMethodField()
    intercept_id = serializers.SerializerMethodField()
    sid_hex = serializers.SerializerMethodField()
    analyzer_port = serializers.SerializerMethodField()

    class Meta:
        model = Session
        fields = [
            "id",
            "router",
            "router_address",
            "intercept",
            "liid",
            "case",
            "format",
            "mid",
            "mid_hex",
            "intercept_id",
            "sid",
            "sid_hex",
            "analyzer_port",
            "first_seen",
            "last_seen",
            "packets",
            "bytes",
            "stored_packets",
        ]
        read_only_fields = fields

    # A Contrail session's mid and sid are its stream's key (CONTRAIL_MID, the analyzer
    # port), not ids a router sent: its hex ids and intercept id are null, and
    # ``analyzer_port`` says the port (null for jmirror).

    def get_format(self, session: Session) -> str:
        """``"contrail"`` for a CN2 vRouter's session, else ``"jmirror"``."""
        return Router.Format.CONTRAIL if session.is_contrail else Router.Format.JMIRROR

    def get_mid_hex(self, session: Session) -> str | None:
        return None if session.is_contrail else f"{session.mid:#x}"

    def get_intercept_id(self, session: Session) -> int | None:
        """The 30-bit intercept id in the mid (the top two bits are the version)."""
        return None if session.is_contrail else session.mid & 0x3FFFFFFF

    def get_sid_hex(self, session: Session) -> str | None:
        return None if session.is_contrail else f"{session.sid:#x}"

    def get_analyzer_port(self, session: Session) -> int | None:
        return session.analyzer_port
