"""The JSON API: cases, intercepts, routers and sessions, scoped by the access rules.

Who may read what is decided by :mod:`jmirror_web.intercepts.access` alone: each view's
queryset holds exactly the records the user may read, so a record outside it answers
404, like one that does not exist. Writing needs the right to manage records. Changes
are audited by the model hooks of :mod:`jmirror_web.audit.log`.
"""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import models
from django.db.models import ProtectedError, Q, QuerySet
from django.http import Http404
from rest_framework import permissions, status, views, viewsets
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jmirror_web.api import serializers
from jmirror_web.audit import refusals
from jmirror_web.intercepts.access import Action, cases_for, may
from jmirror_web.intercepts.models import Case, Intercept, Router, Session

_M = TypeVar("_M", bound=models.Model)


class RequestBodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


def exception_handler(error: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, also answering a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` in JSON
    (Django would answer its HTML 400 page)."""
    if isinstance(error, RequestDataTooBig):
        error = RequestBodyTooLarge(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )
    return views.exception_handler(error, context)


class StillReferenced(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The record is still referred to by other records."
    default_code = "still_referenced"


class RecordPermission(permissions.BasePermission):
    """Reading needs the view's ``read_action`` when it has one (else only a sign-in:
    the queryset does the scoping); writing needs the right to manage records."""

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if request.method in permissions.SAFE_METHODS:
            read_action: Action | None = getattr(view, "read_action", None)
            if read_action is None:
                return bool(user and user.is_authenticated)
            return may(user, read_action)
        return may(user, Action.MANAGE_RECORDS)


def _id_filter(request: Request, name: str) -> int | None:
    """An optional ``?name=ID`` filter; anything but a whole number is refused."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ValidationError({name: ["An id is a whole number."]})
    return int(raw)


class RefusalsAudited(viewsets.GenericViewSet[_M]):
    """Audits the refusals of one case object (its 404, or a write or sign-in refused
    on it) as ``access.refused``, rate-limited (:mod:`jmirror_web.audit.refusals`).
    Lists are not refusals: they hold what the user may read."""

    audited_model: type[models.Model] | None = None

    def get_object(self) -> _M:
        try:
            return super().get_object()
        except Http404:
            if self.audited_model is not None:
                object_id = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, "")
                refusals.audit_not_found(self.request._request, self.audited_model, object_id)
            raise

    def permission_denied(
        self, request: Request, message: str | None = None, code: str | None = None
    ) -> NoReturn:
        object_id = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
        if self.audited_model is not None and object_id is not None:
            reason = "not signed in" if not request.user.is_authenticated else "permission denied"
            refusals.audit_refusal(request._request, self.audited_model, object_id, reason)
        super().permission_denied(request, message, code)


class RecordViewSet(RefusalsAudited[_M], viewsets.ModelViewSet[_M]):
    permission_classes = [permissions.IsAuthenticated, RecordPermission]
    read_action: Action | None = None

    def perform_destroy(self, instance: _M) -> None:
        try:
            instance.delete()
        except ProtectedError as error:
            count = len(error.protected_objects)
            raise StillReferenced(
                f"{instance} is still referred to by {count} "
                f"record{'s' if count != 1 else ''} (such as "
                f"{next(iter(error.protected_objects))}); delete those first."
            ) from None


class CaseViewSet(RecordViewSet[Case]):
    serializer_class = serializers.CaseSerializer
    audited_model = Case

    def get_queryset(self) -> QuerySet[Case]:
        return cases_for(self.request.user, Action.VIEW_RECORD).prefetch_related("analysts")


class InterceptViewSet(RecordViewSet[Intercept]):
    serializer_class = serializers.InterceptSerializer
    audited_model = Intercept

    def get_queryset(self) -> QuerySet[Intercept]:
        intercepts = (
            Intercept.objects.filter(case__in=cases_for(self.request.user, Action.VIEW_RECORD))
            .select_related("case")
            .prefetch_related("routers")
        )
        case = _id_filter(self.request, "case")
        if case is not None:
            intercepts = intercepts.filter(case=case)
        return intercepts


class RouterViewSet(RecordViewSet[Router]):
    serializer_class = serializers.RouterSerializer
    read_action = Action.VIEW_RECORDS
    queryset = Router.objects.all()


class SessionViewSet(RefusalsAudited[Session], viewsets.ReadOnlyModelViewSet[Session]):
    """Sessions the receiver recorded, for users who may see their case's metadata.
    Sessions no intercept claimed belong to no case: only record managers see them."""

    serializer_class = serializers.SessionSerializer
    audited_model = Session

    def get_queryset(self) -> QuerySet[Session]:
        user = self.request.user
        visible = Q(intercept__case__in=cases_for(user, Action.VIEW_METADATA))
        if may(user, Action.MANAGE_RECORDS):
            visible |= Q(intercept__isnull=True)
        sessions = (
            Session.objects.filter(visible)
            .select_related("router", "intercept")
            .order_by("-last_seen", "-pk")
        )
        intercept = _id_filter(self.request, "intercept")
        if intercept is not None:
            sessions = sessions.filter(intercept=intercept)
        case = _id_filter(self.request, "case")
        if case is not None:
            sessions = sessions.filter(intercept__case=case)
        return sessions
