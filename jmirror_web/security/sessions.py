"""Session expiry after inactivity without a database write on every request.

A session's expiry is moved on only when it is saved, and Django's
SESSION_SAVE_EVERY_REQUEST would save it on every request: a write per page view and per
poll, which on the embedded default's SQLite contends with the receiver's counters for
the one write lock. Here the session is saved again only once REFRESH_SECONDS have
passed since it last was, so it ends between IDLE and IDLE + REFRESH_SECONDS after the
last request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

REFRESH_SECONDS: Final = 60
KEY: Final = "_jmirror_refreshed_at"


def mark_refreshed(session: Any) -> None:
    session[KEY] = int(time.time())


def _refresh(request: HttpRequest) -> None:
    session = getattr(request, "session", None)
    # No session cookie (anonymous visitors): nothing to keep alive, nothing to create.
    if session is None or session.session_key is None or session.is_empty():
        return
    refreshed = session.get(KEY)
    if not isinstance(refreshed, int) or time.time() - refreshed >= REFRESH_SECONDS:
        # Changing the session makes SessionMiddleware save it, with a new expiry.
        mark_refreshed(session)


def signed_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """A new session starts refreshed, so the first pages after sign-in write nothing."""
    if request is not None and hasattr(request, "session"):
        mark_refreshed(request.session)


class IdleSessionMiddleware:
    """Placed after SessionMiddleware, so that it runs before the session is saved."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        response: HttpResponse = self.get_response(request)
        _refresh(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = await self.get_response(request)
        # The session may need loading from the database, which is synchronous.
        from asgiref.sync import sync_to_async

        await sync_to_async(_refresh)(request)
        return response
