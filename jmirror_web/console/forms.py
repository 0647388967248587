"""Forms of the console pages."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import QuerySet
from django.utils import timezone

from jmirror_web.intercepts.access import Action, cases_for
from jmirror_web.intercepts.models import Case


def mappable_cases(user: Any) -> QuerySet[Case]:
    """Cases an intercept can still be added to: active or draft (a draft case's
    intercepts capture nothing until it is made active) and not yet ended."""
    return (
        cases_for(user, Action.VIEW_RECORD)
        .filter(status__in=[Case.Status.ACTIVE, Case.Status.DRAFT], valid_until__gt=timezone.now())
        .order_by("reference")
    )


class InterceptFromStreamForm(forms.Form):
    """What an LI administrator says to turn an unclaimed stream into an intercept; the
    mirror id comes from the stream itself, the window from the case."""

    case = forms.ModelChoiceField(queryset=Case.objects.none(), empty_label="choose a case")
    liid = forms.CharField(label="LIID", max_length=25)
    pin_sid = forms.BooleanField(
        label="only this session id",
        required=False,
        help_text="Unticked, every session of the mirror id is claimed (the session id "
        "changes at each subscriber login).",
    )
    scope_router = forms.BooleanField(label="only from this router", required=False, initial=True)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        case_field = self.fields["case"]
        assert isinstance(case_field, forms.ModelChoiceField)
        case_field.queryset = mappable_cases(user)
