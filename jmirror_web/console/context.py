"""What the navigation bar shows: each link only to the roles that can use it."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from jmirror_web.admin_site import may_use_admin
from jmirror_web.intercepts.access import Action, may


def navigation(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": {}}
    return {
        "nav": {
            "unclaimed": may(user, Action.MANAGE_RECORDS),
            "health": may(user, Action.VIEW_HEALTH),
            "admin": may_use_admin(user),
        }
    }
