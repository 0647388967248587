"""What the metadata API endpoints share (the packet list's, the summaries'): who may ask,
and how a refusal looks and is audited. Beside the rights it applies (access.py), below
every app that serves such an endpoint."""

from __future__ import annotations

from typing import Any, NoReturn

from rest_framework import permissions
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.views import APIView

from jmirror_web.audit import refusals
from jmirror_web.intercepts.access import Action, cases_for
from jmirror_web.intercepts.models import Case, Session


class AuditedAPIView(APIView):
    """An API endpoint of a case object for signed-in users, whose refusal of a request
    not signed in is audited as every case object's refusal is
    (:mod:`jmirror_web.audit.refusals`), with :attr:`refusal_action` and
    :meth:`refusal_details`."""

    permission_classes = [permissions.IsAuthenticated]
    refusal_action = refusals.ACCESS_REFUSED

    def refusal_details(self) -> dict[str, Any] | None:
        return None

    def permission_denied(
        self, request: Request, message: str | None = None, code: str | None = None
    ) -> NoReturn:
        object_type, object_id = refusals.object_in(self.kwargs)
        refusals.audit_refusal(
            request._request,
            object_type,
            object_id,
            "not signed in" if not request.user.is_authenticated else "permission denied",
            action=self.refusal_action,
            details=self.refusal_details(),
        )
        super().permission_denied(request, message, code)


class MetadataView(AuditedAPIView):
    """An endpoint of one session's or case's metadata: signed in, and the metadata right
    on the case; anything else is the 404 of a missing object, audited."""

    def session(self, request: Request, session_id: int) -> Session:
        session = (
            Session.objects.select_related("intercept__case")
            .filter(
                intercept__case__in=cases_for(request.user, Action.VIEW_METADATA).values("pk"),
                pk=session_id,
            )
            .first()
        )
        if session is None:
            refusals.audit_not_found(request._request, Session, session_id)
            raise NotFound()
        return session

    def case(self, request: Request, case_id: int) -> Case:
        case = cases_for(request.user, Action.VIEW_METADATA).filter(pk=case_id).first()
        if case is None:
            refusals.audit_not_found(request._request, Case, case_id)
            raise NotFound()
        return case
