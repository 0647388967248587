"""The admin site, entered by role rather than by Django's staff flag.

Who may use the admin is decided in :mod:`jmirror_web.intercepts.access` like
everything else: LI administrators (records), auditors (records read-only and the
audit log) and superusers. An li-admin needs no separate "staff" flag, and a staff flag
alone opens nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any, Final, TypeVar, cast

from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.views.main import SEARCH_VAR
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponseBase, HttpResponseRedirect, QueryDict
from django.template.response import SimpleTemplateResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import smart_split

from jmirror_web.intercepts.access import Action, may
from jmirror_web.security.two_factor import SignInForm

# The admin's search makes one OR of LIKEs per word and field: thousands of words made a
# query SQLite refuses (a 500), and a slow one on PostgreSQL.
MAX_SEARCH_CHARS: Final = 200
MAX_SEARCH_WORDS: Final = 10
_View = TypeVar("_View", bound=Callable[..., HttpResponseBase])


def search_refusal(text: str | None) -> str | None:
    """Why an admin search cannot be run, or None when it can."""
    if text is None:
        return None
    if len(text) > MAX_SEARCH_CHARS:
        return f"A search is at most {MAX_SEARCH_CHARS} characters; it was not run."
    if sum(1 for _ in smart_split(text)) > MAX_SEARCH_WORDS:
        return f"A search is at most {MAX_SEARCH_WORDS} words; it was not run."
    return None


# Django's date hierarchy adds a day, a month or a year to the date it is given: from
# 9999 that overflows (a 500), as does a year too long for a C long.
_DATE_PARTS: Final = {"__year": (1, 9998), "__month": (1, 12), "__day": (1, 31)}


def date_refusals(query: QueryDict) -> list[str]:
    """The parameters of ``query`` to drop: all three date-hierarchy parameters
    (``<field>__year``, ``__month``, ``__day``) of a field one of which is not a small
    whole number in range, and any time that overflows in UTC (date filters)."""
    fields = set()
    for name, values in query.lists():
        for suffix, (low, high) in _DATE_PARTS.items():
            if name.endswith(suffix) and not all(
                value.isascii() and value.isdigit() and low <= int(value[:5]) <= high
                for value in values
            ):
                fields.add(name.removesuffix(suffix))
    hierarchy = [field + suffix for field in sorted(fields) for suffix in _DATE_PARTS]
    return hierarchy + [
        name
        for name, values in query.lists()
        if name not in hierarchy and any(_overflows(value) for value in values)
    ]


def _overflows(value: str) -> bool:
    """Whether ``value`` is a time (as a date filter reads it) that cannot be put in UTC,
    such as 0001-01-01T00:00:00+14:00: the query would fail with OverflowError."""
    try:
        moment = parse_datetime(value[:64])
    except ValueError:
        return False
    if moment is None or moment.tzinfo is None:
        return False  # read in UTC as it is
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return True
    return False


class SafeAutocompleteSelect(AutocompleteSelect):
    """Django's autocomplete widget looks the submitted value up again to show the form
    once more: a value that is not an id of the related model (text, an id past 64
    bits) made that query fail, a 500 instead of the form with its error."""

    def optgroups(self, name: str, value: Sequence[str], attr: Any = None) -> Any:
        return super().optgroups(name, [each for each in value if self._is_id(each)], attr)

    def _is_id(self, value: Any) -> bool:
        target = self.field.remote_field.model._meta.get_field(
            getattr(self.field.remote_field, "field_name", None) or "pk"
        )
        try:
            parsed = target.to_python(value)
        except ValidationError:
            return False
        return not isinstance(parsed, int) or abs(parsed) < 2**63


def may_use_admin(user: Any) -> bool:
    return bool(user.is_active and (may(user, Action.VIEW_RECORDS) or may(user, Action.VIEW_AUDIT)))


class AuditorsReadOnly:
    """A model admin mixin: the records of the chain of custody (the audit log, exports)
    are for auditors (and superusers) to read and for nobody to add, change or delete,
    so the admin offers no button, form or bulk action that could only fail."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may(request.user, Action.VIEW_AUDIT)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may(request.user, Action.VIEW_AUDIT)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RoleAuthenticationForm(SignInForm, AdminAuthenticationForm):
    """Django's admin sign-in refuses users without the staff flag; this one refuses
    users whose role gives them nothing in the admin, with the same message. It asks for
    the two-factor code as the console's sign-in does."""

    def confirm_login_allowed(self, user: Any) -> None:
        if not may_use_admin(user):
            raise ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            )


class JMirrorAdminSite(admin.AdminSite):
    site_header = "jmirror-web administration"
    site_title = "jmirror-web"
    index_title = "Intercept records and audit log"

    login_form = RoleAuthenticationForm
    login_template = "admin/jmirror_login.html"

    def has_permission(self, request: HttpRequest) -> bool:
        return may_use_admin(request.user)

    def admin_view(self, view: _View, cacheable: bool = False) -> _View:
        """Every admin page, in UTC (:func:`in_utc`), with its search and date-hierarchy
        parameters bounded (:func:`search_refusal`, :func:`date_refusals`): a page asked
        with one refused is shown again without it, saying why."""

        @functools.wraps(view)
        def bounded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            query = request.GET.copy()
            refusal = search_refusal(query.get(SEARCH_VAR))
            if refusal is not None:
                messages.error(request, refusal)
                query.pop(SEARCH_VAR)
            dates = date_refusals(query)
            if dates:
                messages.error(
                    request,
                    f"Out of range, so not applied: {', '.join(dates)[:200]} (a year "
                    f"from 1 to 9998, a month from 1 to 12, a day from 1 to 31, a time "
                    f"that exists in UTC).",
                )
                for name in dates:
                    query.pop(name, None)
            if refusal is None and not dates:
                return view(request, *args, **kwargs)
            return HttpResponseRedirect(request.path + (f"?{query.urlencode()}" if query else ""))

        return cast(_View, super().admin_view(in_utc(bounded), cacheable))


def in_utc(view: _View) -> _View:
    """``view`` run and its page rendered in UTC whatever TIME_ZONE says: the admin's
    date and time inputs take UTC (as their help texts say) and its lists and read-only
    fields show UTC (formats.en: 2026-12-06 17:04:05 UTC), as the console does."""

    @functools.wraps(view)
    def utc(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        with timezone.override(UTC):
            response = view(request, *args, **kwargs)
            # A template response renders after the view returns: render it here, in UTC.
            if isinstance(response, SimpleTemplateResponse) and not response.is_rendered:
                response.render()
        return response

    return cast(_View, utc)
