"""(Placeholder until the page is built: every view answers 404.)"""

from django.http import Http404, HttpRequest, HttpResponse


def packet_detail(request: HttpRequest, **kwargs: int) -> HttpResponse:
    raise Http404
