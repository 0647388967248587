from django.contrib.auth.views import redirect_to_login
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from jmirror_web.console.views import dashboard


def home(request: HttpRequest) -> HttpResponse:
    """The dashboard for a signed-in user; everyone else is sent to sign in (the root
    says nothing about cases to an anonymous visitor)."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    return dashboard(request)


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and compose health checks: the app answers and the
    database takes a query. It says nothing about cases, so it needs no sign-in."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
