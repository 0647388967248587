"""Unclaimed streams for LI administrators: mirror streams that arrived and were dropped
(unknown router, no intercept, outside the warrant window), and a one-step action that
creates the intercept that claims one.

A jmirror stream is a (source, mid, sid): its intercept claims the mirror id in the mid.
A Contrail stream is a CN2 vRouter's frames to one analyzer port (mid
``receiver.contrail.CONTRAIL_MID``, sid the port): its intercept is of kind CN2 and
claims that analyzer port, and its router, when it has to be registered, is a CN2
vRouter whose port is that one.

The intercept is validated exactly as the admin site and the API validate it (the
model's ``full_clean``, with the routers it will have handed to the overlap check through
``pending_router_ids``), so this shortcut cannot store what they would refuse. Its
creation is audited by the model signals like any other; the mapping itself (which
stream it came from) is recorded on top.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from jmirror_web.audit.log import record
from jmirror_web.console.forms import InterceptFromStreamForm
from jmirror_web.intercepts.access import Action, may
from jmirror_web.intercepts.models import Case, Intercept, Router, UnclaimedStream
from receiver.gate import Gate
from receiver.gate_loader import load_gate
from receiver.pipeline import UNCLAIMED_STREAMS_PER_SOURCE

PER_PAGE: Final = 50
# Model fields the console form has under the same name; other model errors (window,
# overlap) are about the intercept as a whole and show above the form.
_FORM_FIELDS: Final = {"liid": "liid", "case": "case"}


@dataclass
class StreamRow:
    """One unclaimed stream as the page shows it."""

    stream: UnclaimedStream
    router: Router | None  # registered since the row was written, if so
    claimed_by: str | None  # LIID of an intercept that claims it now, if any
    form: InterceptFromStreamForm

    @property
    def address(self) -> str:
        """The router's address as the records hold it (a dual-stack socket reports an
        IPv4 router as ``::ffff:a.b.c.d``)."""
        return self.stream.source.removeprefix("::ffff:")

    @property
    def register_url(self) -> str:
        """The admin's new router form, filled in with the address (and, for a Contrail
        stream, as a CN2 vRouter whose port is the stream's analyzer port)."""
        query: dict[str, str | int] = {"address": self.address}
        if self.stream.is_contrail:
            query |= {"kind": Router.Kind.CN2, "port": self.stream.sid}
        return reverse("admin:intercepts_router_add") + "?" + urlencode(query)

    @property
    def kind_mismatch(self) -> str | None:
        """Why the stream's router cannot be an intercept's router for it, if so."""
        return _kind_mismatch(self.stream, self.router)

    @property
    def router_url(self) -> str | None:
        if self.router is None:
            return None
        return reverse("admin:intercepts_router_change", args=[self.router.pk])


def _kind_mismatch(stream: UnclaimedStream, router: Router | None) -> str | None:
    """A Contrail stream comes from a CN2 vRouter and a jmirror one from an E Series or
    MX router: the receiver gates each format by routers of its kind only, so a router
    registered as the other kind must be changed before an intercept can claim it."""
    if router is None or stream.is_aggregate:
        return None
    vrouter = router.kind == Router.Kind.CN2
    if stream.is_contrail and not vrouter:
        return (
            f"Router {router.name} is registered as {router.get_kind_display()}, but it "
            "sends Contrail (the Juniper header): change its kind to CN2 / Contrail vRouter."
        )
    if not stream.is_contrail and vrouter:
        return (
            f"Router {router.name} is registered as a CN2 / Contrail vRouter, but it sends "
            "jmirror: change its kind to E Series or MX."
        )
    return None


def _router_of(stream: UnclaimedStream, routers: dict[str, Router] | None = None) -> Router | None:
    """The stream's router: the one recorded with the row, else one registered with its
    address since (the receiver fills the link only when it creates the row)."""
    if stream.router is not None:
        return stream.router
    address = stream.source.removeprefix("::ffff:")
    if routers is not None:
        return routers.get(address)
    return Router.objects.filter(address=address).first()


def _claimed_by(gate: Gate, stream: UnclaimedStream, now_ns: int) -> str | None:
    if stream.is_contrail:
        # Claimed whole only by an intercept of the port alone: one that also asks for
        # VN names or targets claims some frames of the stream, and those are not here.
        claim, _low, _high, _whole = gate.claim_contrail_span(
            stream.source, stream.sid, None, None, None, None, now_ns
        )
    else:
        claim = gate.claim(stream.source, stream.mid, stream.sid, now_ns)
    return claim.intercept.liid if not isinstance(claim, str) else None


def _prefix(stream: UnclaimedStream) -> str:
    # One form per row: the prefix keeps the field names and ids of the rows apart.
    return f"stream{stream.pk}"


def _page_number(value: Any) -> int:
    try:
        return max(int(value), 1)
    except (TypeError, ValueError):
        return 1


def _render(
    request: HttpRequest,
    page_number: Any,
    failed: InterceptFromStreamForm | None = None,
    failed_stream: UnclaimedStream | None = None,
    status: int = 200,
) -> HttpResponse:
    streams = UnclaimedStream.objects.select_related("router").order_by("-last_seen", "-pk")
    page: Page[UnclaimedStream] = Paginator(streams, PER_PAGE).get_page(page_number)
    routers = {router.address: router for router in Router.objects.all()}
    gate = load_gate()
    now_ns = time.time_ns()
    rows = []
    for stream in page.object_list:
        if failed is not None and failed_stream is not None and stream.pk == failed_stream.pk:
            form = failed
        else:
            form = InterceptFromStreamForm(user=request.user, prefix=_prefix(stream))
        rows.append(
            StreamRow(stream, _router_of(stream, routers), _claimed_by(gate, stream, now_ns), form)
        )
    context = {
        "page": page,
        "rows": rows,
        "failed_stream": failed_stream,
        "streams_per_source": UNCLAIMED_STREAMS_PER_SOURCE,
    }
    return render(request, "console/unclaimed.html", context, status=status)


@login_required
@require_GET
def unclaimed_page(request: HttpRequest) -> HttpResponse:
    """Role-gated: records management (LI administrators); others get 403."""
    if not may(request.user, Action.MANAGE_RECORDS):
        raise PermissionDenied
    return _render(request, request.GET.get("page"))


def intercept_window(case: Case, now: datetime) -> tuple[datetime, datetime]:
    """From now (or the warrant's start, if later) to the warrant's end: packets before
    now were dropped already, and starting now avoids overlapping an earlier intercept
    of the same mirror id that has ended."""
    return max(case.valid_from, now.replace(microsecond=0)), case.valid_until


def _add_model_errors(form: InterceptFromStreamForm, error: ValidationError) -> None:
    if not hasattr(error, "error_dict"):
        for message in error.messages:
            form.add_error(None, message)
        return
    for name, messages_ in error.message_dict.items():
        field = _FORM_FIELDS.get(name)
        for message in messages_:
            if field is not None:
                form.add_error(field, message)
            elif name == NON_FIELD_ERRORS:
                form.add_error(None, message)
            else:
                model_field = Intercept._meta.get_field(name)
                label = getattr(model_field, "verbose_name", name)
                form.add_error(None, f"{label}: {message}")


@login_required
@require_POST
def create_intercept(request: HttpRequest, stream_id: int) -> HttpResponse:
    """Create the intercept that claims unclaimed stream ``stream_id`` (POST, with CSRF):
    its 30-bit intercept id, optionally its session id (for a Contrail stream: a CN2
    intercept of its analyzer port), optionally only from its router, under the chosen
    case, for the rest of the warrant."""
    if not may(request.user, Action.MANAGE_RECORDS):
        record(
            "unclaimed.map_refused",
            request=request,
            details={"stream": stream_id, "reason": "no right to manage records"},
        )
        raise PermissionDenied
    stream = get_object_or_404(UnclaimedStream.objects.select_related("router"), pk=stream_id)
    page_number = _page_number(request.POST.get("page"))
    form = InterceptFromStreamForm(request.POST, user=request.user, prefix=_prefix(stream))
    router = _router_of(stream)
    # The row of a stream that cannot be mapped shows no form, only its non-field
    # errors: those reasons come first, or the 400 would show no reason at all.
    valid = form.is_valid()
    if stream.is_aggregate:
        form.add_error(None, "This row counts many streams of one source: none to map.")
        return _render(request, page_number, form, stream, status=400)
    if router is None:
        form.add_error(
            None,
            f"No router is registered with address {stream.source.removeprefix('::ffff:')}: "
            "register it first; the receiver drops everything an unknown router sends.",
        )
        return _render(request, page_number, form, stream, status=400)
    mismatch = _kind_mismatch(stream, router)
    if mismatch is not None:
        form.add_error(None, mismatch)
        return _render(request, page_number, form, stream, status=400)
    if not valid:
        return _render(request, page_number, form, stream, status=400)

    case: Case = form.cleaned_data["case"]
    valid_from, valid_until = intercept_window(case, timezone.now())
    router_ids = frozenset({router.pk}) if form.cleaned_data["scope_router"] else frozenset()
    if stream.is_contrail:
        # A Contrail stream has no mirror or session id: the intercept claims its port.
        intercept = Intercept(
            case=case,
            liid=form.cleaned_data["liid"],
            kind=Intercept.Kind.CN2,
            intercept_id=None,
            analyzer_port=stream.sid,
            valid_from=valid_from,
            valid_until=valid_until,
        )
    else:
        intercept = Intercept(
            case=case,
            liid=form.cleaned_data["liid"],
            intercept_id=stream.mirror_id,
            sid=stream.sid if form.cleaned_data["pin_sid"] else None,
            valid_from=valid_from,
            valid_until=valid_until,
        )
    # The routers are saved after the row: the overlap check must see these ones.
    intercept.pending_router_ids = router_ids
    try:
        intercept.full_clean()
    except ValidationError as error:
        _add_model_errors(form, error)
        return _render(request, page_number, form, stream, status=400)
    with transaction.atomic():
        intercept.save()
        if router_ids:
            intercept.routers.set(router_ids)
        record(
            "unclaimed.mapped",
            intercept,
            request=request,
            details={"stream": stream.pk, "source": stream.source}
            | (
                {"format": "contrail", "analyzer_port": stream.sid}
                if stream.is_contrail
                else {"mid": stream.mid, "sid": stream.sid}
            ),
        )
    if stream.is_contrail:
        claims = f"Contrail frames to analyzer port {intercept.analyzer_port}"
        anywhere = ", from any registered vRouter"
    else:
        claims = f"mirror id {intercept.intercept_id:#x}" + (
            f", session {intercept.sid:#x}" if intercept.sid is not None else ", every session"
        )
        anywhere = ", from any registered router"
    messages.success(
        request,
        f"Intercept {intercept.liid} created under case {case.reference}: {claims}"
        + (f", from {router.name} only" if router_ids else anywhere)
        + (
            "."
            if case.status == Case.Status.ACTIVE
            else f". Case {case.reference} is {case.get_status_display().lower()}: "
            "nothing is captured until it is active."
        ),
    )
    url = reverse("console:unclaimed")
    if page_number > 1:
        url += f"?page={page_number}"
    return HttpResponseRedirect(url)
