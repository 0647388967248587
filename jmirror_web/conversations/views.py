"""The conversations and names pages (a session's, a case's) and the case search:
metadata, for the holders of the case's metadata right. As the other console pages, a
session or case the user may not see answers 404 (audited as a refusal, as a visitor's
sign-in redirect is); a search is audited as what the analyst looked for."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from jmirror_web.audit.log import record
from jmirror_web.audit.refusals import refusals_audited
from jmirror_web.conversations.models import Conversation, ObservedName, SessionSummary
from jmirror_web.conversations.queries import (
    CONVERSATION_SORTS,
    NAME_SORTS,
    PAGE_SIZE,
    Listing,
    QueryError,
    conversation_row,
    conversations_listed,
    name_row,
    names_listed,
    parse_search,
    search_case,
)
from jmirror_web.intercepts.access import Action, cases_for, may
from jmirror_web.intercepts.models import Case, Session

SEARCHED: str = "case searched"


def visible_session(request: HttpRequest, session_id: int) -> Session:
    """The session, if the user may see its case's metadata; else 404."""
    return get_object_or_404(
        Session.objects.select_related("router", "intercept__case").filter(
            intercept__case__in=cases_for(request.user, Action.VIEW_METADATA).values("pk")
        ),
        pk=session_id,
    )


def visible_case(request: HttpRequest, case_id: int) -> Case:
    return get_object_or_404(cases_for(request.user, Action.VIEW_METADATA), pk=case_id)


def _tables(
    request: HttpRequest,
    conversations: QuerySet[Conversation],
    names: QuerySet[ObservedName],
    export: bool,
) -> tuple[dict[str, Any], int]:
    """The context of the two tables, filtered by one text (``q``), each sorted and paged
    by its own parameters (``sort``, ``page``; ``names_sort``, ``names_page``), and the
    status: 400 when a parameter is refused (the tables then unfiltered)."""
    errors: dict[str, str] = {}
    try:
        listing = Listing.of(request.GET, CONVERSATION_SORTS, "bytes")
    except QueryError as error:
        errors[error.field] = str(error)
        listing = Listing("bytes", "", 1, PAGE_SIZE)
    names_query = {
        "q": listing.text,
        "sort": request.GET.get("names_sort", ""),
        "page": request.GET.get("names_page", ""),
    }
    try:
        names_listing = Listing.of(names_query, NAME_SORTS, "count")
    except QueryError as error:
        errors["names_" + error.field] = str(error)
        names_listing = Listing("count", listing.text, 1, PAGE_SIZE)
    rows, more = listing.slice(conversations_listed(conversations, listing))
    name_rows, more_names = names_listing.slice(names_listed(names, names_listing))
    context = {
        "listing": listing,
        "names_listing": names_listing,
        "conversations": [conversation_row(row, export=export) for row in rows],
        "more_conversations": more,
        "names": [name_row(row) for row in name_rows],
        "more_names": more_names,
        "errors": errors,
        "conversation_sorts": list(CONVERSATION_SORTS),
        "name_sorts": list(NAME_SORTS),
    }
    return context, 400 if errors else 200


@refusals_audited(Session, "session_id")
@require_GET
def session_conversations(request: HttpRequest, session_id: int) -> HttpResponse:
    """A session's conversations and names, from the summaries."""
    session = visible_session(request, session_id)
    assert session.intercept is not None  # the filter went through it
    case = session.intercept.case
    context, status = _tables(
        request,
        Conversation.objects.filter(session=session),
        ObservedName.objects.filter(session=session),
        may(request.user, Action.DOWNLOAD, case),
    )
    summary = SessionSummary.objects.filter(session=session).first()
    return render(
        request,
        "conversations/conversations.html",
        {**context, "session": session, "case": case, "summary": summary},
        status=status,
    )


@refusals_audited(Case, "case_id")
@require_GET
def case_conversations(request: HttpRequest, case_id: int) -> HttpResponse:
    """The conversations and names of every session of a case."""
    case = visible_case(request, case_id)
    context, status = _tables(
        request,
        Conversation.objects.filter(session__intercept__case=case),
        ObservedName.objects.filter(session__intercept__case=case),
        may(request.user, Action.DOWNLOAD, case),
    )
    return render(
        request,
        "conversations/conversations.html",
        {**context, "case": case, "session": None, "summary": None},
        status=status,
    )


@refusals_audited(Case, "case_id")
@require_GET
def case_search(request: HttpRequest, case_id: int) -> HttpResponse:
    """The case page's search box: which sessions, conversations and names match."""
    case = visible_case(request, case_id)
    context: dict[str, Any] = {"case": case, "query": request.GET}
    try:
        wanted = parse_search(request.GET)
    except QueryError as error:
        return render(
            request, "conversations/search.html", {**context, "error": str(error)}, status=400
        )
    record(SEARCHED, case, request=request, details=wanted.shown)
    found = search_case(case, wanted)
    export = may(request.user, Action.DOWNLOAD, case)
    return render(
        request,
        "conversations/search.html",
        {
            **context,
            "found": found,
            "conversations": [conversation_row(row, export=export) for row in found.conversations],
            "names": [name_row(row) for row in found.names],
        },
    )
