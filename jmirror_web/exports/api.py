"""The export API: ``GET /api/sessions/<id>/pcap``, ``GET /api/cases/<id>/pcap`` and
``GET /api/exports/<id>``.

The same rules as the pages (:mod:`jmirror_web.exports.views`), answered the API's way:
400 with the errors in JSON for parameters that cannot be served, 404 for a session the
user may not download (as for one that does not exist), 401 without credentials; every
refusal audited as ``export.refused``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from django.http import HttpRequest, HttpResponseBase
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from jmirror_web.audit import refusals
from jmirror_web.audit.log import record
from jmirror_web.exports import service
from jmirror_web.exports.forms import ExportForm, InterceptExportForm
from jmirror_web.exports.models import Export
from jmirror_web.exports.request import ExportFormat
from jmirror_web.exports.service import ExportParameters, ExportRefused, PreparedExport
from jmirror_web.intercepts.access import Action, may, may_see_export
from jmirror_web.intercepts.metadata_api import AuditedAPIView
from jmirror_web.intercepts.models import Case, Session

_Subject = TypeVar("_Subject", Session, Case)


class _AuditedView(AuditedAPIView):
    what = ""
    refusal_action = service.REFUSED

    def refusal_details(self) -> dict[str, Any]:
        return {"what": self.what, **self.kwargs}

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # A download client may ask for the file's own type (Accept: application/x-pcapng):
        # errors are still answered in JSON rather than refused with 406.
        return super().perform_content_negotiation(request, force=True)


def _refuse(
    request: HttpRequest,
    model: type[Session | Case | Export],
    object_id: int,
    reason: str,
    obj: Session | Case | Export | None,
    key: str,
) -> NoReturn:
    """A download or manifest the user may not have: audited as a refused export, and
    answered 404, as for one that does not exist."""
    refusals.audit_refusal(
        request, model, object_id, reason, action=service.REFUSED, obj=obj, details={key: object_id}
    )
    raise NotFound()


class SessionPcapView(_AuditedView):
    """One session as pcap or pcapng, or as pcap-ip (the IP packets alone, their PPP framing
    removed: a conversion its manifest states): ``start``, ``end`` (ISO 8601, UTC when no
    offset), ``format`` (pcapng unless given), ``addresses``, ``ports``, ``protocols``."""

    what = "session export"

    def get(self, request: Request, session_id: int) -> HttpResponseBase:
        session = (
            Session.objects.select_related("router", "intercept__case")
            .filter(pk=session_id)
            .first()
        )
        if (
            session is None
            or session.intercept is None
            or not may(request.user, Action.DOWNLOAD, session.intercept.case)
        ):
            _refuse(request._request, Session, session_id, "no download right", session, "session")
        return _export(request, session, ExportForm, service.prepare_session_export)


class CasePcapView(_AuditedView):
    """Every session of every intercept of a case, each intercept kept to its own
    warrant: the session endpoint's parameters, ``format`` pcapng (one file, an interface
    per session; the default) or zip (with ``member_format`` pcapng, pcap or pcap-ip)."""

    what = "case export"

    def get(self, request: Request, case_id: int) -> HttpResponseBase:
        case = Case.objects.filter(pk=case_id).first()
        if case is None or not may(request.user, Action.DOWNLOAD, case):
            _refuse(request._request, Case, case_id, "no download right", case, "case")
        return _export(request, case, InterceptExportForm, service.prepare_case_export)


def _export(
    request: Request,
    subject: _Subject,
    form_class: type[ExportForm],
    prepare: Callable[[_Subject, ExportParameters], PreparedExport],
) -> HttpResponseBase:
    """The download of ``subject``, which the user may download: its parameters read
    (pcapng unless ``format`` says otherwise), checked and prepared, or a 400 naming what
    cannot be served; either way audited."""
    http_request = request._request
    query = request.query_params.copy()
    query.setdefault("format", ExportFormat.PCAPNG)
    form = form_class(query)
    if not form.is_valid():
        errors = form.errors.get_json_data()
        service.audit_refusal(http_request, subject, "invalid parameters", {"errors": errors})
        raise ValidationError(
            {field: [error["message"] for error in each] for field, each in errors.items()}
        )
    parameters = form.parameters()
    try:
        prepared = prepare(subject, parameters)
    except ExportRefused as error:
        service.audit_refusal(http_request, subject, str(error), parameters.audit_details())
        raise ValidationError({error.field or "detail": [str(error)]}) from None
    return service.streaming_response(service.start(prepared, http_request), http_request)


class ExportManifestView(_AuditedView):
    """An export's manifest, for its requester, whoever may download from its case, and
    auditors."""

    what = "export manifest"

    def get(self, request: Request, export_id: int) -> Response:
        export = Export.objects.select_related("case", "intercept").filter(pk=export_id).first()
        if export is None or not may_see_export(request.user, export.case, export.requester_id):
            _refuse(request._request, Export, export_id, "manifest not visible", export, "export")
        record("export.manifest", export, request=request._request)
        return Response(export.manifest())
