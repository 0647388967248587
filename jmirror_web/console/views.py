"""(Placeholder until the page is built: every view answers 404.)"""

from django.http import Http404, HttpRequest, HttpResponse


def case_page(request: HttpRequest, **kwargs: int) -> HttpResponse:
    raise Http404


def session_page(request: HttpRequest, **kwargs: int) -> HttpResponse:
    raise Http404
