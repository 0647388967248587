"""Reading the summaries for the pages and the API: a session's or a case's
conversations and names, sorted, filtered by text and paged, and the case search (one
box: addresses, names, ports, with an optional time range).

Every input is bounded and refused with a message naming it (:class:`QueryError`); every
answer is bounded (a page, or :data:`SEARCH_LIMIT` rows saying when there are more)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from django.core.exceptions import ValidationError
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.urls import reverse

from jmirror_web.conversations.models import Conversation, ObservedName
from jmirror_web.exports.forms import parse_moment
from jmirror_web.intercepts.models import Case, Session
from jmirror_web.plain_text import first_control_character

PAGE_SIZE: Final = 200
MAX_PAGE_SIZE: Final = 1000
TEXT_LIMIT: Final = 253
QUERY_LIMIT: Final = 500
MAX_TERMS: Final = 8
SEARCH_LIMIT: Final = 200
CONVERSATION_SORTS: Final[dict[str, tuple[str, ...]]] = {
    "bytes": ("-total_bytes", "pk"),
    "packets": ("-total_packets", "pk"),
    "first_seen": ("first_seen", "pk"),
    "last_seen": ("-last_seen", "pk"),
}
NAME_SORTS: Final[dict[str, tuple[str, ...]]] = {
    "count": ("-count", "pk"),
    "name": ("name", "kind", "pk"),
    "first_seen": ("first_seen", "pk"),
    "last_seen": ("-last_seen", "pk"),
}
PROTOCOL_NAMES: Final = {1: "ICMP", 6: "TCP", 17: "UDP", 33: "DCCP", 58: "ICMPv6", 132: "SCTP"}
# Names whose address is a server of the name.
SERVER_NAME_KINDS: Final = (
    ObservedName.Kind.DNS_ANSWER,
    ObservedName.Kind.TLS_SNI,
    ObservedName.Kind.HTTP_HOST,
)
_SEPARATORS: Final = re.compile(r"[\s,]+")
_MICROSECOND: Final = timedelta(microseconds=1)


class QueryError(Exception):
    """A parameter that cannot be served; ``field`` names it."""

    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field = field_name


def _text(query: Any, name: str, limit: int = TEXT_LIMIT) -> str:
    text = str(query.get(name) or "").strip()
    if len(text) > limit:
        raise QueryError(f"{name} is longer than {limit} characters.", name)
    character = first_control_character(text)
    if character is not None:
        raise QueryError(f"{name} may not contain control characters.", name)
    return text


def _number(query: Any, name: str, default: int, high: int) -> int:
    text = str(query.get(name) or "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text[:10]) <= high:
        raise QueryError(f"{name} must be a number from 1 to {high}.", name)
    return int(text)


def _moment(query: Any, name: str) -> datetime | None:
    text = _text(query, name, 40)
    if not text:
        return None
    try:
        return parse_moment(text)
    except ValidationError as error:
        raise QueryError(f"{name}: {' '.join(error.messages)}", name) from None


def _address(text: str) -> str | None:
    if "%" in text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass(frozen=True)
class Listing:
    """A sort, a text filter and a page, as the list pages and the API take them."""

    sort: str
    text: str
    page: int
    page_size: int

    @classmethod
    def of(cls, query: Any, sorts: dict[str, tuple[str, ...]], default: str) -> Listing:
        sort = _text(query, "sort", 20) or default
        if sort not in sorts:
            raise QueryError(f"sort must be one of {', '.join(sorts)}.", "sort")
        return cls(
            sort=sort,
            text=_text(query, "q"),
            page=_number(query, "page", 1, 10**6),
            page_size=_number(query, "page_size", PAGE_SIZE, MAX_PAGE_SIZE),
        )

    def slice(self, rows: QuerySet[Any]) -> tuple[list[Any], bool]:
        """This page's rows, and whether a later page has any."""
        start = (self.page - 1) * self.page_size
        found = list(rows[start : start + self.page_size + 1])
        return found[: self.page_size], len(found) > self.page_size


def _text_filter(text: str, *, address_fields: tuple[str, ...], port_fields: tuple[str, ...]) -> Q:
    address = _address(text)
    if address is not None:
        found = Q()
        for name in address_fields:
            found |= Q(**{name: address})
        return found
    if text.isascii() and text.isdigit() and port_fields:
        found = Q()
        for name in port_fields:
            found |= Q(**{name: int(text[:6])})
        return found
    found = Q()
    for name in address_fields:
        found |= Q(**{f"{name}__icontains": text})
    return found


def conversations_listed(conversations: QuerySet[Conversation], listing: Listing) -> QuerySet[Any]:
    rows = conversations.annotate(
        total_bytes=F("bytes_ab") + F("bytes_ba"), total_packets=F("packets_ab") + F("packets_ba")
    )
    if listing.text:
        text = listing.text.lower()
        matched = _text_filter(
            text, address_fields=("address_a", "address_b"), port_fields=("port_a", "port_b")
        )
        protocols = [number for number, name in PROTOCOL_NAMES.items() if name.lower() == text]
        if protocols:
            matched |= Q(protocol__in=protocols)
        rows = rows.filter(matched)
    return rows.order_by(*CONVERSATION_SORTS[listing.sort])


def names_listed(names: QuerySet[ObservedName], listing: Listing) -> QuerySet[ObservedName]:
    if listing.text:
        text = listing.text.lower()
        address = _address(text)
        names = names.filter(
            Q(address=address)
            if address is not None
            else Q(name__contains=text) | Q(kind=text) | Q(address__contains=text)
        )
    return names.order_by(*NAME_SORTS[listing.sort])


# Rows ------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _stored_list(session_id: int, query: dict[str, str]) -> str:
    """The session page's stored packet list, filtered by ``query``."""
    page = reverse("console:session", args=[session_id])
    return f"{page}?{urlencode(query)}#stored"


def conversation_row(conversation: Conversation, *, export: bool) -> dict[str, Any]:
    """A conversation as the pages and the API show it, with the links to its stored
    packets and (with ``export``, for users who may download) to a filtered export."""
    session_id = conversation.session_id
    protocol = conversation.protocol
    ported = bool(conversation.port_a or conversation.port_b)
    span = {
        "start": _iso(conversation.first_seen),
        "end": _iso(conversation.last_seen + _MICROSECOND),
    }
    packets = {
        "address": conversation.address_a,
        **({"port": str(conversation.port_b)} if ported else {}),
        "protocol": str(protocol),
        **span,
    }
    row: dict[str, Any] = {
        "session": session_id,
        "protocol": PROTOCOL_NAMES.get(protocol, str(protocol)),
        "protocol_number": protocol,
        "address_a": conversation.address_a,
        "port_a": conversation.port_a if ported else None,
        "address_b": conversation.address_b,
        "port_b": conversation.port_b if ported else None,
        "first_seen": _iso(conversation.first_seen),
        "last_seen": _iso(conversation.last_seen),
        "packets_ab": conversation.packets_ab,
        "bytes_ab": conversation.bytes_ab,
        "packets_ba": conversation.packets_ba,
        "bytes_ba": conversation.bytes_ba,
        "packets": conversation.packets_ab + conversation.packets_ba,
        "bytes": conversation.bytes_ab + conversation.bytes_ba,
        "tcp_state": conversation.tcp_state,
        "packets_url": _stored_list(session_id, packets),
        "export_url": None,
    }
    if export:
        filtered = {
            "prefill": "1",
            "addresses": f"{conversation.address_a} {conversation.address_b}",
            "ports": f"{conversation.port_a} {conversation.port_b}" if ported else "",
            "protocols": str(protocol),
            **span,
        }
        row["export_url"] = (
            reverse("exports:session", args=[session_id]) + "?" + urlencode(filtered)
        )
    return row


def name_row(name: ObservedName) -> dict[str, Any]:
    session_id = name.session_id
    return {
        "session": session_id,
        "kind": name.kind,
        "name": name.name,
        "address": name.address,
        "first_seen": _iso(name.first_seen),
        "last_seen": _iso(name.last_seen),
        "count": name.count,
        "packets_url": _stored_list(
            session_id,
            {
                "address": name.address,
                "start": _iso(name.first_seen),
                "end": _iso(name.last_seen + _MICROSECOND),
            },
        ),
    }


# The case search ------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseQuery:
    """What the search box asked: every term must match (a name term as a substring)."""

    addresses: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    shown: dict[str, str] = field(default_factory=dict)


def parse_search(query: Any) -> CaseQuery:
    """The search of ``q`` (terms separated by spaces or commas: IP addresses, port
    numbers, parts of names), ``start`` and ``end`` (ISO 8601, UTC without an offset)."""
    text = _text(query, "q", QUERY_LIMIT)
    start, end = _moment(query, "start"), _moment(query, "end")
    if start is not None and end is not None and start >= end:
        raise QueryError("start must be before end.", "start")
    terms = [term for term in _SEPARATORS.split(text) if term]
    if len(terms) > MAX_TERMS:
        raise QueryError(f"Search for at most {MAX_TERMS} terms at once.", "q")
    if not terms and start is None and end is None:
        raise QueryError("Type an address, a name or a port, or give a time range.", "q")
    addresses, ports, names = [], [], []
    for term in terms:
        address = _address(term)
        if address is not None:
            addresses.append(address)
        elif term.isascii() and term.isdigit():
            if len(term) > 5 or int(term) > 65535:
                raise QueryError(f"{term[:20]} is not a port (0 to 65535).", "q")
            ports.append(int(term))
        elif len(term) > TEXT_LIMIT:
            raise QueryError(f"A name is at most {TEXT_LIMIT} characters.", "q")
        else:
            names.append(term.lower())
    shown = {"q": text}
    if start is not None:
        shown["start"] = _iso(start)
    if end is not None:
        shown["end"] = _iso(end)
    return CaseQuery(tuple(addresses), tuple(ports), tuple(names), start, end, shown)


@dataclass
class SearchResult:
    sessions: list[Session]
    conversations: list[Conversation]
    names: list[ObservedName]
    more_sessions: bool
    more_conversations: bool
    more_names: bool


def _during(rows: QuerySet[Any], wanted: CaseQuery) -> QuerySet[Any]:
    if wanted.start is not None:
        rows = rows.filter(last_seen__gte=wanted.start)
    if wanted.end is not None:
        rows = rows.filter(first_seen__lt=wanted.end)
    return rows


def search_case(case: Case, wanted: CaseQuery) -> SearchResult:
    """The case's sessions, conversations and names that match, each at most
    :data:`SEARCH_LIMIT`."""
    conversations = _during(Conversation.objects.filter(session__intercept__case=case), wanted)
    for address in wanted.addresses:
        conversations = conversations.filter(Q(address_a=address) | Q(address_b=address))
    for port in wanted.ports:
        conversations = conversations.filter(Q(port_a=port) | Q(port_b=port))
    for name in wanted.names:
        # The conversations with a server of the name (an address it resolved to, or one
        # a TLS handshake or HTTP request named it to) in the same session: not the
        # resolver a question went to.
        conversations = conversations.filter(
            Exists(
                ObservedName.objects.filter(
                    session=OuterRef("session"), name__contains=name, kind__in=SERVER_NAME_KINDS
                ).filter(Q(address=OuterRef("address_a")) | Q(address=OuterRef("address_b")))
            )
        )
    names = _during(ObservedName.objects.filter(session__intercept__case=case), wanted)
    if wanted.ports:
        names = names.none()  # a name has no port: the conversations answer

    for address in wanted.addresses:
        names = names.filter(address=address)
    for name in wanted.names:
        names = names.filter(name__contains=name)
    sessions = Session.objects.filter(intercept__case=case)
    if wanted.addresses or wanted.ports or wanted.names:
        sessions = sessions.filter(
            Q(pk__in=conversations.values("session")) | Q(pk__in=names.values("session"))
        )
    else:
        sessions = _during(sessions, wanted)
    found_sessions = list(
        sessions.select_related("intercept", "router").order_by("-last_seen", "-pk")[
            : SEARCH_LIMIT + 1
        ]
    )
    found_conversations = list(conversations.order_by("-first_seen", "pk")[: SEARCH_LIMIT + 1])
    found_names = list(names.order_by("-last_seen", "pk")[: SEARCH_LIMIT + 1])
    return SearchResult(
        sessions=found_sessions[:SEARCH_LIMIT],
        conversations=found_conversations[:SEARCH_LIMIT],
        names=found_names[:SEARCH_LIMIT],
        more_sessions=len(found_sessions) > SEARCH_LIMIT,
        more_conversations=len(found_conversations) > SEARCH_LIMIT,
        more_names=len(found_names) > SEARCH_LIMIT,
    )
