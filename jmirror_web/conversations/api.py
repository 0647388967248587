"""The API of the summaries: ``GET /api/sessions/<id>/conversations``,
``GET /api/sessions/<id>/names`` and ``GET /api/cases/<id>/search``.

The pages' rules, answered the API's way: 404 for a session or case the user may not
see metadata of (as for one that does not exist), 401 without credentials, both audited
as ``access.refused``; 400 naming a refused parameter; a search is audited as the pages'.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from jmirror_web.audit.log import record
from jmirror_web.conversations.models import Conversation, ObservedName, SessionSummary
from jmirror_web.conversations.queries import (
    CONVERSATION_SORTS,
    NAME_SORTS,
    Listing,
    QueryError,
    conversation_row,
    conversations_listed,
    name_row,
    names_listed,
    parse_search,
    search_case,
)
from jmirror_web.conversations.views import SEARCHED
from jmirror_web.intercepts.access import Action, may
from jmirror_web.intercepts.metadata_api import MetadataView


def _listing(request: Request, sorts: dict[str, tuple[str, ...]], default: str) -> Listing:
    try:
        return Listing.of(request.query_params, sorts, default)
    except QueryError as error:
        raise ValidationError({error.field: [str(error)]}) from None


def _page(listing: Listing, rows: list[dict[str, Any]], more: bool, **extra: Any) -> Response:
    return Response(
        {
            "page": listing.page,
            "page_size": listing.page_size,
            "sort": listing.sort,
            "q": listing.text,
            "more": more,
            **extra,
            "results": rows,
        }
    )


class SessionConversationsView(MetadataView):
    """``sort`` (bytes, packets, first_seen, last_seen), ``q`` (an address, a port, a
    protocol name or part of an address), ``page``, ``page_size`` (at most 1000)."""

    def get(self, request: Request, session_id: int) -> Response:
        session = self.session(request, session_id)
        assert session.intercept is not None
        listing = _listing(request, CONVERSATION_SORTS, "bytes")
        rows, more = listing.slice(
            conversations_listed(Conversation.objects.filter(session=session), listing)
        )
        export = may(request.user, Action.DOWNLOAD, session.intercept.case)
        summary = SessionSummary.objects.filter(session=session).first()
        return _page(
            listing,
            [conversation_row(row, export=export) for row in rows],
            more,
            left_out=summary.conversations_left_out if summary else 0,
        )


class SessionNamesView(MetadataView):
    """``sort`` (count, name, first_seen, last_seen), ``q`` (part of a name, a kind, an
    address), ``page``, ``page_size``."""

    def get(self, request: Request, session_id: int) -> Response:
        session = self.session(request, session_id)
        listing = _listing(request, NAME_SORTS, "count")
        rows, more = listing.slice(
            names_listed(ObservedName.objects.filter(session=session), listing)
        )
        summary = SessionSummary.objects.filter(session=session).first()
        return _page(
            listing,
            [name_row(row) for row in rows],
            more,
            left_out=summary.names_left_out if summary else 0,
        )


class CaseSearchView(MetadataView):
    """``q`` (addresses, ports, parts of names; all must match), ``start``, ``end``."""

    def get(self, request: Request, case_id: int) -> Response:
        case = self.case(request, case_id)
        try:
            wanted = parse_search(request.query_params)
        except QueryError as error:
            raise ValidationError({error.field: [str(error)]}) from None
        record(SEARCHED, case, request=request._request, details=wanted.shown)
        found = search_case(case, wanted)
        export = may(request.user, Action.DOWNLOAD, case)
        session_url = reverse("console:session", args=[0]).removesuffix("0/")
        return Response(
            {
                "query": wanted.shown,
                "sessions": [
                    {
                        "id": session.pk,
                        "liid": session.intercept.liid if session.intercept else "",
                        "router": session.router.name,
                        "first_seen": session.first_seen,
                        "last_seen": session.last_seen,
                        "url": f"{session_url}{session.pk}/",
                    }
                    for session in found.sessions
                ],
                "more_sessions": found.more_sessions,
                "conversations": [
                    conversation_row(row, export=export) for row in found.conversations
                ],
                "more_conversations": found.more_conversations,
                "names": [name_row(row) for row in found.names],
                "more_names": found.more_names,
            }
        )
