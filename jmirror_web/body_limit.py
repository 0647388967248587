"""A cap on request bodies, before Django reads them.

Under ASGI, Django copies the whole request body into a temporary file
(``ASGIHandler.read_body``) before any view runs, whatever its size: the verify page's
``JMIRROR_VERIFY_MAX_MB`` and ``DATA_UPLOAD_MAX_MEMORY_SIZE`` are checked only after
that. :class:`RequestBodyLimit` refuses a body larger than the largest the product
accepts anywhere with 413: from its ``Content-Length`` before the application is called,
or, for a body without one (chunked), as soon as the bytes received pass the cap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from django.conf import settings

# As Django's ASGIHandler (django-stubs) types them.
Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Room for what a multipart upload carries besides the file: its boundaries, the part
# headers (file name, type), the SHA-256 field and the CSRF token.
MULTIPART_ENVELOPE: Final = 64 * 1024


def largest_body() -> int:
    """The largest request body the product accepts, in bytes: the verify page's upload,
    or any other request, which ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bounds."""
    verify = settings.JMIRROR_VERIFY_MAX_MB * 1024 * 1024 + MULTIPART_ENVELOPE
    return max(verify, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


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
    """ASGI middleware for HTTP: 413 for a request body over :func:`largest_body`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = largest_body()
        declared = declared_length(scope)
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
