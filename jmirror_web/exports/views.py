"""Evidence leaving the system through the pages: session, intercept and case downloads, export
manifests, the case's export list, the verify page and stored-file re-verification.

A download needs the download right on the case (an assignment:
:mod:`jmirror_web.intercepts.access`). Anyone else gets the same 404 as for a session
that does not exist, and a signed-out visitor the sign-in page; every refusal is audited
as ``export.refused`` with its reason, every export as ``export.start`` then
``export.complete`` / ``aborted`` / ``failed`` (:mod:`jmirror_web.exports.service`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final, NoReturn

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from jmirror_web.audit import refusals
from jmirror_web.audit.log import record
from jmirror_web.exports import service
from jmirror_web.exports.forms import (
    MAX_FILTER_CHARS,
    ExportForm,
    InterceptExportForm,
    VerifyForm,
)
from jmirror_web.exports.models import Export
from jmirror_web.exports.service import ExportRefused
from jmirror_web.exports.verification import (
    HASHED_UPLOAD_EXTENSION,
    MALFORMED,
    ONE_FILE,
    HashedUpload,
    HashingUploadHandler,
    find,
    verify_capture_file,
    visible_exports,
)
from jmirror_web.intercepts.access import Action, cases_for, may, may_see_export
from jmirror_web.intercepts.models import Case, Intercept, Session

EXPORTS_LISTED: Final = 100

View = Callable[..., HttpResponseBase]


def signed_in_or_audited(what: str) -> Callable[[View], View]:
    """``login_required`` that also audits the refusal: every refused attempt at
    evidence is in the log, a signed-out one included."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                object_type, object_id = refusals.object_in(kwargs)
                refusals.audit_refusal(
                    request,
                    object_type,
                    object_id,
                    "not signed in",
                    action=service.REFUSED,
                    details={"what": what, **kwargs},
                )
                return redirect_to_login(request.get_full_path())
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def _refuse(request: HttpRequest, obj: Any, reason: str, details: dict[str, Any]) -> NoReturn:
    # Rate-limited per user, object and page (jmirror_web.audit.refusals); ``details``
    # names the object asked for, which may not exist.
    object_type, object_id = refusals.object_in(details)
    refusals.audit_refusal(
        request, object_type, object_id, reason, action=service.REFUSED, obj=obj, details=details
    )
    raise Http404


def _has_parameters(request: HttpRequest) -> bool:
    return bool(request.GET)


def _session_form(request: HttpRequest) -> ExportForm:
    """The session export's form: bound to the parameters given, which download; or,
    with ``prefill=1`` (a conversation's "export" link), showing them to be checked and
    submitted (what is refused is shown as typed, refused again on submission)."""
    if request.GET.get("prefill") == "1":
        fields = ExportForm.base_fields
        return ExportForm(
            initial={
                name: value[:MAX_FILTER_CHARS]
                for name, value in request.GET.items()
                if name in fields and name != "format"
            }
        )
    return ExportForm(request.GET if _has_parameters(request) else None)


# Downloads -----------------------------------------------------------------------------


@signed_in_or_audited("session export")
@require_GET
def session_download(request: HttpRequest, session_id: int) -> HttpResponseBase:
    """One session as pcap or pcapng; the form again (400) when the parameters are
    refused. Without parameters: the form."""
    session = (
        Session.objects.select_related("router", "intercept__case").filter(pk=session_id).first()
    )
    if (
        session is None
        or session.intercept is None
        or not may(request.user, Action.DOWNLOAD, session.intercept.case)
    ):
        _refuse(request, session, "no download right", {"session": session_id})
    assert session is not None
    assert session.intercept is not None
    form = _session_form(request)
    context = {
        "session": session,
        "intercept": session.intercept,
        "case": session.intercept.case,
        # The warning before a pcap is asked for: this session's files mix link types.
        "mixed": service.mixed_link_types(Session.objects.filter(pk=session.pk)).get(session, ""),
    }
    if not form.is_bound:
        return render(request, "exports/session_export.html", {**context, "form": form})
    if not form.is_valid():
        service.audit_refusal(
            request, session, "invalid parameters", {"errors": form.errors.get_json_data()}
        )
        return render(request, "exports/session_export.html", {**context, "form": form}, status=400)
    parameters = form.parameters()
    try:
        prepared = service.prepare_session_export(session, parameters)
    except ExportRefused as error:
        service.audit_refusal(request, session, str(error), parameters.audit_details())
        form.add_error(error.field, str(error))
        return render(request, "exports/session_export.html", {**context, "form": form}, status=400)
    return service.streaming_response(service.start(prepared, request), request)


@signed_in_or_audited("intercept export")
@require_GET
def intercept_export(request: HttpRequest, intercept_id: int) -> HttpResponseBase:
    """Every session of an intercept in a window: one pcapng or a zip."""
    intercept = Intercept.objects.select_related("case").filter(pk=intercept_id).first()
    if intercept is None or not may(request.user, Action.DOWNLOAD, intercept.case):
        _refuse(request, intercept, "no download right", {"intercept": intercept_id})
    assert intercept is not None
    form = InterceptExportForm(request.GET if _has_parameters(request) else None)
    context = {
        "intercept": intercept,
        "case": intercept.case,
        "mixed": service.mixed_link_types(intercept.sessions.all()),
    }
    if not form.is_bound:
        return render(request, "exports/intercept_export.html", {**context, "form": form})
    if not form.is_valid():
        service.audit_refusal(
            request, intercept, "invalid parameters", {"errors": form.errors.get_json_data()}
        )
        return render(
            request, "exports/intercept_export.html", {**context, "form": form}, status=400
        )
    parameters = form.parameters()
    try:
        prepared = service.prepare_intercept_export(intercept, parameters)
    except ExportRefused as error:
        service.audit_refusal(request, intercept, str(error), parameters.audit_details())
        form.add_error(error.field, str(error))
        return render(
            request, "exports/intercept_export.html", {**context, "form": form}, status=400
        )
    return service.streaming_response(service.start(prepared, request), request)


@signed_in_or_audited("case export")
@require_GET
def case_export(request: HttpRequest, case_id: int) -> HttpResponseBase:
    """Every session of every intercept of a case in a window: one pcapng or a zip."""
    case = Case.objects.filter(pk=case_id).first()
    if case is None or not may(request.user, Action.DOWNLOAD, case):
        _refuse(request, case, "no download right", {"case": case_id})
    assert case is not None
    form = InterceptExportForm(request.GET if _has_parameters(request) else None)
    context = {
        "case": case,
        "contents": service.case_contents(case),
        "mixed": service.mixed_link_types(Session.objects.filter(intercept__case=case)),
    }
    if not form.is_bound:
        return render(request, "exports/case_export.html", {**context, "form": form})
    if not form.is_valid():
        service.audit_refusal(
            request, case, "invalid parameters", {"errors": form.errors.get_json_data()}
        )
        return render(request, "exports/case_export.html", {**context, "form": form}, status=400)
    parameters = form.parameters()
    try:
        prepared = service.prepare_case_export(case, parameters)
    except ExportRefused as error:
        service.audit_refusal(request, case, str(error), parameters.audit_details())
        form.add_error(error.field, str(error))
        return render(request, "exports/case_export.html", {**context, "form": form}, status=400)
    return service.streaming_response(service.start(prepared, request), request)


# Manifests -----------------------------------------------------------------------------


def _visible_export(request: HttpRequest, export_id: int) -> Export:
    export = Export.objects.select_related("case", "intercept").filter(pk=export_id).first()
    if export is None or not may_see_export(request.user, export.case, export.requester_id):
        _refuse(request, export, "manifest not visible", {"export": export_id})
    assert export is not None
    record("export.manifest", export, request=request)
    return export


@signed_in_or_audited("export manifest")
@require_GET
def manifest_page(request: HttpRequest, export_id: int) -> HttpResponse:
    export = _visible_export(request, export_id)
    return render(
        request, "exports/manifest.html", {"export": export, "manifest": export.manifest()}
    )


@signed_in_or_audited("export manifest")
@require_GET
def manifest_json(request: HttpRequest, export_id: int) -> HttpResponse:
    export = _visible_export(request, export_id)
    response = JsonResponse(export.manifest(), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{export.file_name}.manifest.json"'
    return response


@signed_in_or_audited("export list")
@refusals.refusals_audited(Case, "case_id")
@require_GET
def case_exports(request: HttpRequest, case_id: int) -> HttpResponse:
    """The latest exports of a case the user may see manifests of."""
    case = get_object_or_404(cases_for(request.user, Action.VIEW_METADATA), pk=case_id)
    exports = list(
        visible_exports(request.user)
        .filter(case=case)
        .select_related("intercept", "session__router")[:EXPORTS_LISTED]
    )
    return render(request, "exports/case_exports.html", {"case": case, "exports": exports})


# Verification --------------------------------------------------------------------------


@csrf_exempt  # the upload handler must be set before the body is read; checked below
@signed_in_or_audited("verify")
@require_http_methods(["GET", "POST"])
def verify_page(request: HttpRequest) -> HttpResponse:
    """Which export (or stored file) a file or a SHA-256 is. The file is hashed from the
    upload's chunks and not kept. Under ``manage.py serve`` the server has hashed it while
    it arrived and hands over only the form's small fields and the file's name, size and
    hash (:data:`HASHED_UPLOAD_EXTENSION`); elsewhere :class:`HashingUploadHandler` hashes
    the chunks Django reads (under WSGI as they arrive; under ASGI from the temporary
    file Django spooled the body to, ``ASGIHandler.read_body``)."""
    limit = settings.JMIRROR_VERIFY_MAX_MB * 1024 * 1024
    handler = HashingUploadHandler(request, limit)
    if request.method == "POST":
        request.upload_handlers = [handler]
        try:
            files = request.FILES
        except TooManyFilesSent:
            return _verify_refused(request, ONE_FILE)
        except (TooManyFieldsSent, RequestDataTooBig):
            return _verify_refused(request, MALFORMED)
        streamed = getattr(request, "scope", {}).get("extensions", {})
        hashed = streamed.get(HASHED_UPLOAD_EXTENSION) if isinstance(streamed, dict) else None
        if hashed is not None and hashed.get("error"):
            return _verify_refused(request, hashed["error"])
        sent = sum(len(parts) for _, parts in files.lists())
        if sent + (1 if hashed is not None and hashed.get("file") else 0) > 1:
            return _verify_refused(request, ONE_FILE)
        if hashed is not None and hashed.get("file"):
            found = hashed["file"]
            files["file"] = HashedUpload(found["name"], found["size"], found["sha256"])
    return _verify(request, handler)


def _verify_refused(request: HttpRequest, error: str) -> HttpResponse:
    form = VerifyForm(data={})
    form.full_clean()
    form.errors.clear()  # only this error: the form's own ("choose a file") does not apply
    form.add_error(None, error)
    return render(request, "exports/verify.html", {"form": form}, status=400)


@csrf_protect
def _verify(request: HttpRequest, handler: HashingUploadHandler) -> HttpResponse:
    if request.method != "POST":
        return render(request, "exports/verify.html", {"form": VerifyForm()})
    form = VerifyForm(request.POST, request.FILES)
    valid = form.is_valid()
    if handler.too_large:
        form.errors.pop("file", None)
        form.add_error(
            None, f"The file is larger than {settings.JMIRROR_VERIFY_MAX_MB} MB: it was not read."
        )
        record("export.verify", request=request, details={"outcome": "file too large"})
        return render(request, "exports/verify.html", {"form": form}, status=400)
    if not valid:
        return render(request, "exports/verify.html", {"form": form}, status=400)
    upload = form.cleaned_data.get("file")
    if isinstance(upload, HashedUpload):
        sha256, source = upload.sha256, {"file_name": upload.name, "size": upload.size}
    else:
        sha256, source = form.cleaned_data["sha256"], {}
    matches = find(sha256, request.user)
    record(
        "export.verify",
        request=request,
        details={
            "sha256": sha256,
            **source,
            "exports": [export.pk for export in matches.exports],
            "capture_files": [capture.pk for capture in matches.captures],
            "not_shown": matches.hidden,
        },
    )
    return render(
        request,
        "exports/verify.html",
        {"form": VerifyForm(), "sha256": sha256, "source": source, "matches": matches},
    )


@signed_in_or_audited("capture file verification")
@require_POST
def verify_session_files(request: HttpRequest, session_id: int) -> HttpResponse:
    """Re-hash every closed file of a session against its recorded SHA-256."""
    session = Session.objects.select_related("intercept__case").filter(pk=session_id).first()
    if (
        session is None
        or session.intercept is None
        or not may(request.user, Action.VERIFY_FILES, session.intercept.case)
    ):
        _refuse(request, session, "no verification right", {"session": session_id})
    assert session is not None
    checks = [verify_capture_file(capture, request=request) for capture in session.files.all()]
    bad = [check for check in checks if check.ok is False]
    checked = [check for check in checks if check.ok is not None]
    if bad:
        messages.error(
            request,
            f"{len(bad)} of {len(checked)} file(s) do not match their recorded SHA-256: "
            + "; ".join(f"{check.capture.path}: {check.detail}" for check in bad),
        )
    else:
        messages.success(request, f"{len(checked)} file(s) match their recorded SHA-256.")
    return redirect("console:session", session_id=session.pk)
