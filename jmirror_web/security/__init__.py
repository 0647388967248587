"""Sign-in hardening around django-axes: the lockout page and its audit event.

The throttling itself is django-axes, configured in the settings (``AXES_*``).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """The page a locked-out sign-in gets (``AXES_LOCKOUT_CALLABLE``)."""
    from jmirror_web.security.lockout import lockout_page

    return lockout_page(request, credentials)
