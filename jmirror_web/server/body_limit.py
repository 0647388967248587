"""A cap on request bodies, before Django reads them, for any ASGI server.

Under ASGI, Django copies the whole request body into a temporary file
(``ASGIHandler.read_body``) before any view runs, whatever its size: the verify page's
``JMIRROR_VERIFY_MAX_MB`` and ``DATA_UPLOAD_MAX_MEMORY_SIZE`` are checked only after
that. :class:`RequestBodyLimit` refuses a body over the request's cap with 413: from its
``Content-Length`` before the application is called, or, for a body without one
(chunked), as soon as the bytes received pass the cap. The cap is the route's and the
client's (:mod:`jmirror_web.server.body_policy`: a few KiB for a client that is not signed in).

Under ``manage.py serve`` the server has already held the body to the same cap while it
arrived (:mod:`jmirror_web.server.bounded_requests`) and says so in the scope
(:data:`DECIDED_EXTENSION`), so the credential is not looked up twice. Elsewhere (another
ASGI server) this is the only cap, and comes after the server has received the body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from channels.db import database_sync_to_async

from jmirror_web.server.body_policy import (
    MULTIPART_ENVELOPE,
    Who,
    head_of,
    largest_body,
    limit_for,
    needs_lookup,
    who_asks,
)

__all__ = ["MULTIPART_ENVELOPE", "RequestBodyLimit", "largest_body"]

# As Django's ASGIHandler (django-stubs) types them.
Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Set by the server (jmirror_web.server.flow_control) to the cap it held the body to.
DECIDED_EXTENSION: Final = "jmirror.body_limit"


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None without one (or with a malformed one, which
    Django answers itself)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def body_limit(scope: Scope, declared: int | None) -> int:
    """The request's cap: the one the server decided, or decided here from the head."""
    decided = scope.get("extensions", {}).get(DECIDED_EXTENSION)
    if isinstance(decided, int):
        return decided
    head = head_of(scope.get("headers", []), scope.get("method", ""), scope.get("path", ""))
    who = Who.ANONYMOUS
    if needs_lookup(head, declared):
        who = await database_sync_to_async(who_asks)(head)
    return limit_for(head, who).limit


async def refuse(send: Send, limit: int) -> None:
    body = f"The request body is larger than {limit} bytes, the most this server accepts.\n"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


class RequestBodyLimit:
    """ASGI middleware for HTTP: 413 for a request body over the request's cap."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        limit = await body_limit(scope, declared)
        if declared is not None and declared > limit:
            await refuse(send, limit)
            return
        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # To Django the client has gone: read_body stops (RequestAborted)
                    # and no view runs; the 413 is sent below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
        if too_large and not started:
            await refuse(send, limit)
