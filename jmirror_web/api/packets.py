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

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from jmirror_web.audit.log import record
from jmirror_web.console import stored_packets
from jmirror_web.intercepts.access import Action, may
from jmirror_web.intercepts.metadata_api import MetadataView


class SessionPacketsView(MetadataView):
    def get(self, request: Request, session_id: int) -> Response:
        session = self.session(request, session_id)
        assert session.intercept is not None  # it is one of a case the user may see
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
