"""A cap on request bodies inside Daphne, before anything is stored.

Twisted, under Daphne, receives a whole request body before the application is called:
into memory, or past 100 KB into a temporary file, whatever its size. So the ASGI cap of
:mod:`jmirror_web.body_limit` comes after the disk has taken the body, and anyone who can
reach the port could fill it. :class:`BoundedWebRequest` refuses the body as it arrives:
at once with 413 when its ``Content-Length`` is over :func:`largest_body`, or as soon as
the bytes received pass it (chunked), keeping nothing and closing the connection.

``gotLength`` and ``handleContentChunk`` are what Twisted's ``HTTPChannel`` calls on its
request objects for exactly this (it documents them as not meant for users: they are
for request classes such as this one and Daphne's own).
"""

from __future__ import annotations

import io
import logging
from typing import Any, Final

from daphne.http_protocol import HTTPFactory, WebRequest

from jmirror_web.body_limit import largest_body

logger = logging.getLogger("jmirror_web.bounded_requests")

REFUSAL: Final = "The request body is larger than {limit} bytes, the most this server accepts.\n"


class BoundedWebRequest(WebRequest):  # type: ignore[misc]  # daphne has no type hints
    """Daphne's request, refusing a body over :func:`largest_body` while it arrives."""

    def gotLength(self, length: int | None) -> None:
        self.body_limit = largest_body()
        self.body_received = 0
        self.body_refused = False
        if length is not None and length > self.body_limit:
            # Refused before a byte of it is read; no "100 Continue" must follow the 413.
            self.requestHeaders.removeHeader(b"expect")
            self.refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_refused:
            return
        self.body_received += len(data)
        if self.body_received > self.body_limit:
            self.refuse_body()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        # A refused request never reaches the application (a chunked body can still end
        # while the connection closes).
        if getattr(self, "body_refused", False):
            return
        super().process()

    def refuse_body(self) -> None:
        self.body_refused = True
        self.content = io.BytesIO()  # what Twisted would write into: nothing is kept
        body = REFUSAL.format(limit=self.body_limit).encode()
        head = (
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        logger.warning(
            "refused a request body over %d bytes from %s", self.body_limit, self.client_addr
        )
        channel: Any = self.channel
        if channel is not None:
            channel.transport.write(head + body)
            channel.loseConnection()


class BoundedHTTPFactory(HTTPFactory):  # type: ignore[misc]
    """Daphne's HTTP factory, making :class:`BoundedWebRequest` requests."""

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedWebRequest
        return protocol
