"""Middleware that may answer a signed-in request before its view, sync or async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse


class EarlyResponseMiddleware:
    """Calls :meth:`early` (which may read the database, so in a worker thread under
    ASGI) and returns its response instead of the view's when it gives one."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def early(request: HttpRequest) -> HttpResponse | None:
        raise NotImplementedError

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        response: HttpResponse = self.early(request) or self.get_response(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        early = await sync_to_async(self.early)(request)
        if early is not None:
            return early
        response: HttpResponse = await self.get_response(request)
        return response
