"""``GET /api/sessions/<id>/packets``: a page of a session's stored packets.

The session page's stored packet list (:mod:`jmirror_web.console.stored_packets`) the
API's way: ``page``, ``page_size``, ``start``, ``end`` (ISO 8601, UTC without a zone),
``address``, ``port``, ``protocol`` and, with the content right, ``info``. Rows carry
``number`` (the packet's number in the session: its frame number in the whole-session
export and the number in its page's URL), ``time``, ``src``, ``dst``, ``protocol``,
``sport``, ``dport``, ``length`` and ``info`` (null without the content right).

Metadata holders of the session's case may list; anyone else gets the 404 of a session
that does not exist, audited. A page shown with its packets' info is audited as the
session page's is.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

from rest_framework import permissions
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jmirror_web.audit import refusals
from jmirror_web.audit.log import record
from jmirror_web.console import stored_packets
from jmirror_web.intercepts.access import Action, may
from jmirror_web.intercepts.models import Session

# Refused as every case object's page and endpoint is (audit.refusals.ACCESS_REFUSED).
REFUSED: Final = refusals.ACCESS_REFUSED


class SessionPacketsView(APIView):
    permission_classes = [permissions.IsAuthenticated]

    def permission_denied(
        self, request: Request, message: str | None = None, code: str | None = None
    ) -> NoReturn:
        refusals.audit_refusal(
            request._request,
            Session,
            self.kwargs.get("session_id", ""),
            "not signed in" if not request.user.is_authenticated else "permission denied",
            action=REFUSED,
            details=dict(self.kwargs),
        )
        super().permission_denied(request, message, code)

    def get(self, request: Request, session_id: int) -> Response:
        sessions = Session.objects.select_related("router", "intercept__case")
        session = sessions.filter(pk=session_id).first()
        if (
            session is None
            or session.intercept is None
            or not may(request.user, Action.VIEW_METADATA, session.intercept.case)
        ):
            refusals.audit_refusal(
                request._request,
                Session,
                session_id,
                "no metadata right",
                action=REFUSED,
                obj=session,
                details={"session": session_id},
            )
            raise NotFound()
        content = may(request.user, Action.VIEW_CONTENT, session.intercept.case)
        query = {name: str(value) for name, value in request.query_params.items()}
        listing = stored_packets.list_packets(session, query, content=content)
        if listing.page is None:
            raise ValidationError({listing.error_field or "detail": [listing.error]})
        found = listing.page
        if content and stored_packets.shows_content(listing):
            details = stored_packets.audit_details(listing)
            record(stored_packets.LISTED, session, request=request._request, details=details)
        body: dict[str, Any] = {
            "session": session.pk,
            "stored": found.stored,
            "count": found.matched,
            "searched_all": found.searched_all,
            "unsearched": found.unsearched,
            "page": found.page,
            "page_size": found.page_size,
            "pages": found.pages,
            "filter": listing.wanted.shown,
            "results": [_public(row) for row in found.rows],
        }
        return Response(body)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": row["number"],
        "time": row["time"],
        "src": row["src"],
        "dst": row["dst"],
        "protocol": row["protocol"],
        "sport": row["sport"],
        "dport": row["dport"],
        "length": row["length"],
        "info": row["info"],
        "unavailable": bool(row.get("unavailable")),
    }
