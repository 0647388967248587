"""Request heads and bodies bounded inside Daphne, as they arrive, before anything is kept.

Twisted, under Daphne, receives a whole request body before the application is called
(into memory, or past 100 KB into a temporary file), then Daphne queues all of it for
the application at once, and Django spools it again. So every cap of Django's comes
after the memory or the disk has taken the body. :class:`BoundedWebRequest` decides the
body's cap from the request's head alone (:mod:`jmirror_web.server.body_policy`: by route, and
by who asks) and holds the body to it while it arrives:

- When the head is complete (``gotLength``), the cap is known at once for a request
  without a credential (the anonymous cap, a few KiB) or whose declared length is under
  the anonymous cap. Otherwise the credential is looked up in the session store or the
  token table in a worker thread, while the connection is paused (the transport stops
  reading, so the client's body waits in its own socket): no body byte is taken before
  the decision; the few that came in the same read as the head are held (at most
  :data:`HELD_MAX`). ``Expect: 100-continue`` is answered only once the body is allowed.
- A declared length over the cap is refused with 413 before a byte of the body is read;
  a chunked body as soon as the bytes received pass it. Nothing of a refused body is
  kept: the connection is answered and half-closed; what the client still sends is
  dropped unread, up to :data:`LINGER_BYTES`, then no longer read; after
  :data:`LINGER_SECONDS` the connection is aborted. (A client that goes on sending
  still finds the 413 in its socket, rather than only a reset.)
- An allowed body is kept in memory (it is at most ``DATA_UPLOAD_MAX_MEMORY_SIZE``, 2.5
  MB): never in a temporary file. The one large body, a signed-in user's verify upload,
  is not kept at all: its multipart form is parsed and its file hashed while it streams
  in (:class:`jmirror_web.exports.verification.StreamedVerifyUpload`); the application
  receives the form's small fields and, in the ASGI scope's extensions, the file's name,
  size and SHA-256 (``jmirror.hashed_upload``, set by :mod:`jmirror_web.server.flow_control`).
- Slow bodies are cut with 408 and logged (:class:`jmirror_web.server.body_policy.BodyWatch`):
  one that receives less than ``JMIRROR_BODY_MIN_BYTES_PER_SECOND`` over any 10 s, or takes
  longer than ``JMIRROR_BODY_TIMEOUT_SECONDS`` in all (a verify upload
  ``JMIRROR_VERIFY_UPLOAD_TIMEOUT_SECONDS``). A request line, and then the rest of a
  request's head, that takes longer than ``JMIRROR_BODY_TIMEOUT_SECONDS`` is cut the
  same way.
- A request line longer than Twisted's line limit (16 KiB) is answered 414, a longer
  header line 431, instead of Twisted's silently dropped connection
  (:class:`BoundedHTTPChannel`).

``gotLength``, ``handleContentChunk`` and ``requestReceived`` are what Twisted's
``HTTPChannel`` calls on its request objects for exactly this (it documents them as not
meant for users: they are for request classes such as this one and Daphne's own). The
request line is read from the channel's ``_command`` and ``_path`` (set before
``gotLength``); the channel class is put in through the factory's ``protocol``, as
Twisted's own ``HTTPFactory`` does.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any, Final
from urllib.parse import urlencode

from channels.db import database_sync_to_async
from daphne.http_protocol import HTTPFactory, WebRequest
from django.conf import settings
from python_multipart.multipart import parse_options_header
from twisted.web import http

from jmirror_web.exports.verification import StreamedVerifyUpload
from jmirror_web.server.body_policy import (
    BodyLimit,
    BodyWatch,
    Head,
    Who,
    limit_for,
    needs_lookup,
    who_asks,
)

logger = logging.getLogger(__name__)

REFUSAL: Final = "The request body is larger than {limit} bytes, the most this server accepts.\n"
# Body bytes that came with the head while the credential is looked up (a transport reads
# 64 KiB at a time, and is paused after the first read).
HELD_MAX: Final = 256 * 1024
LOOKUP_TIMEOUT_SECONDS: Final = 10.0
LINGER_SECONDS: Final = 1.0
LINGER_BYTES: Final = 1024 * 1024
WATCH_INTERVAL_SECONDS: Final = 0.5
FILE_MB: Final = 1024 * 1024


def _reactor() -> Any:
    # Imported late: Daphne installs its asyncio reactor before the server starts.
    from twisted.internet import reactor

    return reactor


def answer_and_close(channel: Any, status: bytes, text: str) -> None:
    """Answers ``status`` with ``text`` and closes: the answer is written, the sending
    side closed, and what the client still sends dropped unread until it closes too or
    :data:`LINGER_SECONDS` have passed."""
    if channel is None or channel.transport is None:
        return
    body = text.encode()
    channel.transport.write(
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )
    if isinstance(channel, BoundedHTTPChannel):
        channel.closing = True
        # Up to LINGER_BYTES more are read and dropped (a client that sends a little
        # more before it reads the answer gets a clean close); then reading stops.
        producer: Any = channel._networkProducer
        producer.resumeProducing()
        half_close = getattr(channel.transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
            channel.abort_call = _reactor().callLater(LINGER_SECONDS, channel.abort)
            return
    channel.loseConnection()


class BoundedWebRequest(WebRequest):  # type: ignore[misc]  # daphne has no type hints
    """Daphne's request, with its body's cap decided from its head and held to while it
    arrives (see the module's docstring)."""

    body_refused = False
    body_limit: BodyLimit | None = None
    hashed_upload: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_received = 0
        self.body_held: list[bytes] | None = None
        self.body_complete: tuple[bytes, bytes, bytes] | None = None
        self.expects_continue = False
        self.verify_upload: StreamedVerifyUpload | None = None
        self.watch: BodyWatch | None = None
        # Made when the request line is in: the rest of the head must follow in time.
        self.watch_call: Any = _reactor().callLater(
            settings.JMIRROR_BODY_TIMEOUT_SECONDS, self.head_too_slow
        )

    # The head -------------------------------------------------------------------------

    def head(self) -> Head:
        channel: Any = self.channel
        target = bytes(getattr(channel, "_path", b"") or b"")
        headers = self.requestHeaders

        def first(name: bytes) -> str:
            values = headers.getRawHeaders(name)
            return values[0].decode("latin-1") if values else ""

        return Head(
            method=bytes(getattr(channel, "_command", b"") or b"").decode("latin-1"),
            path=target.split(b"?", 1)[0].decode("latin-1"),
            content_type=first(b"content-type"),
            cookie="; ".join(v.decode("latin-1") for v in headers.getRawHeaders(b"cookie", [])),
            authorization=first(b"authorization"),
        )

    def head_too_slow(self) -> None:
        self.watch_call = None
        if self.channel is not None and self.watch is None and not self.body_refused:
            self.cut("its head", f"it took longer than {settings.JMIRROR_BODY_TIMEOUT_SECONDS} s")

    def gotLength(self, length: int | None) -> None:
        self.stop_watch()
        self.content = io.BytesIO()  # what Twisted writes into; an allowed body is small
        if length == 0:
            self.body_limit = BodyLimit(0, False, Who.ANONYMOUS)
            return
        head = self.head()
        self.watch = BodyWatch(
            time.monotonic(),
            settings.JMIRROR_BODY_MIN_BYTES_PER_SECOND,
            settings.JMIRROR_BODY_TIMEOUT_SECONDS,
        )
        self.watch_call = _reactor().callLater(WATCH_INTERVAL_SECONDS, self.check_pace)
        if not needs_lookup(head, length):
            self.decide(limit_for(head, Who.ANONYMOUS), length)
            return
        # Nothing of the body is read until the credential is looked up.
        self.body_held = []
        expect = self.requestHeaders.getRawHeaders(b"expect")
        if expect:
            # Answered once the body is allowed, as HTTPChannel would (HTTP/1.1 only).
            self.expects_continue = expect[0].lower() == b"100-continue" and (
                getattr(self.channel, "_version", b"") == b"HTTP/1.1"
            )
            self.requestHeaders.removeHeader(b"expect")
        self.channel._networkProducer.pauseProducing()
        lookup = database_sync_to_async(who_asks, thread_sensitive=False)
        task = asyncio.ensure_future(asyncio.wait_for(lookup(head), LOOKUP_TIMEOUT_SECONDS))
        task.add_done_callback(lambda done: self.looked_up(done, head, length))

    def looked_up(self, done: asyncio.Future[Who], head: Head, length: int | None) -> None:
        try:
            who = done.result()
        except Exception:
            logger.exception("cannot tell who sends a request body: taken as not signed in")
            who = Who.ANONYMOUS
        held, self.body_held = self.body_held or [], None
        if self.channel is None or self.body_refused:
            return  # the client has gone meanwhile, or sent too much
        self.channel._networkProducer.resumeProducing()
        if not self.decide(limit_for(head, who), length):
            return
        for data in held:
            self.handleContentChunk(data)
        if self.refused():  # by a held chunk
            return
        if self.body_complete is not None:
            self.requestReceived(*self.body_complete)
        elif self.expects_continue and self.channel is not None:
            self.channel._send100Continue()

    def decide(self, limit: BodyLimit, length: int | None) -> bool:
        """Takes ``limit``; False if the declared length is already over it."""
        self.body_limit = limit
        if limit.streamed_verify:
            _, options = parse_options_header(self.head().content_type)
            boundary = options.get(b"boundary")
            if boundary:
                self.verify_upload = StreamedVerifyUpload(
                    boundary, settings.JMIRROR_VERIFY_MAX_MB * FILE_MB
                )
                assert self.watch is not None
                self.watch.total = settings.JMIRROR_VERIFY_UPLOAD_TIMEOUT_SECONDS
            else:  # not a form it can hash: an ordinary signed-in body
                self.body_limit = limit_for(Head("POST", "/"), Who.SIGNED_IN)
        if length is not None and length > self.body_limit.limit:
            # Refused before a byte of it is read; no "100 Continue" must follow the 413.
            self.requestHeaders.removeHeader(b"expect")
            self.refuse_body()
            return False
        return True

    # The body -------------------------------------------------------------------------

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_refused:
            return
        if self.body_held is not None:
            self.body_held.append(data)
            if sum(map(len, self.body_held)) > HELD_MAX:
                self.body_limit = limit_for(self.head(), Who.ANONYMOUS)
                self.refuse_body()
            return
        assert self.body_limit is not None
        self.body_received += len(data)
        if self.watch is not None:
            self.watch.progress(len(data))
        if self.body_received > self.body_limit.limit:
            self.refuse_body()
            return
        if self.verify_upload is not None:
            self.verify_upload.feed(data)
            if self.verify_upload.too_large:
                self.refuse_body()
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body_refused:
            return
        if self.body_held is not None:
            # All of it came with the head: it is taken once the lookup has decided.
            self.body_complete = (command, path, version)
            return
        self.stop_watch()
        upload = self.verify_upload
        if upload is not None:
            upload.finish()
            self.hashed_upload = upload.outcome()
            # The application gets the form's small fields; the file's hash goes in the
            # scope (jmirror_web.server.flow_control), where a client cannot write.
            form = urlencode(upload.fields).encode()
            self.content = io.BytesIO(form)
            self.content.seek(0, io.SEEK_END)
            self.requestHeaders.setRawHeaders(
                b"content-type", [b"application/x-www-form-urlencoded"]
            )
            self.requestHeaders.setRawHeaders(b"content-length", [str(len(form)).encode()])
            self.requestHeaders.removeHeader(b"transfer-encoding")
        super().requestReceived(command, path, version)

    def refused(self) -> bool:
        return self.body_refused

    # An application that fails -----------------------------------------------------------

    def handle_exception(self, exception: BaseException) -> None:
        # Daphne's answers a 500 page; once the response has started, that raises
        # ("HTTP response has already been started") inside its application checker,
        # which then never runs again (no later application reaped, no later error
        # answered) and leaves this connection open with no further byte: a client
        # waits for a body that never ends. The response is cut instead.
        if self._response_started:
            self.abort_response()
            return
        super().handle_exception(exception)

    def abort_response(self) -> None:
        """Abort the connection of a response the application failed in after it had
        started: no terminating chunk, no Content-Length reached, so the client sees an
        incomplete download at once instead of waiting on an open connection. Aborted
        (reset), not closed: a close would first wait for a client that reads nothing
        to drain what is still buffered."""
        if self.finished or self.channel is None:
            return
        logger.warning(
            "aborted a response to %s: the application failed after it started", self.peer()
        )
        transport = self.channel.transport
        if transport is not None:
            transport.abortConnection()

    def process(self) -> None:
        # A refused request never reaches the application (a chunked body can still end
        # while the connection closes).
        if self.body_refused:
            return
        super().process()

    def connectionLost(self, reason: Any) -> None:
        self.stop_watch()
        super().connectionLost(reason)

    # Refusals -------------------------------------------------------------------------

    def check_pace(self) -> None:
        self.watch_call = None
        if self.watch is None or self.channel is None or self.body_refused:
            return
        verdict = self.watch.verdict(time.monotonic())
        if verdict is not None:
            self.cut("its body", verdict)
            return
        self.watch_call = _reactor().callLater(WATCH_INTERVAL_SECONDS, self.check_pace)

    def stop_watch(self) -> None:
        if self.watch_call is not None and self.watch_call.active():
            self.watch_call.cancel()
        self.watch_call = None

    def cut(self, what: str, verdict: str) -> None:
        """Drops a request whose head or body is too slow (408)."""
        self.stop_watch()
        self.body_refused = True
        self.body_held = None
        self.verify_upload = None
        self.content = io.BytesIO()
        logger.warning(
            "cut a request from %s: %s was too slow (%s; %d body bytes received)",
            self.peer(),
            what,
            verdict,
            self.body_received,
        )
        answer_and_close(
            self.channel,
            b"408 Request Timeout",
            f"The request was too slow: {verdict}. It was dropped.\n",
        )

    def refuse_body(self) -> None:
        self.stop_watch()
        self.body_refused = True
        self.body_held = None
        self.verify_upload = None
        self.content = io.BytesIO()  # what Twisted would write into: nothing is kept
        limit = self.body_limit.limit if self.body_limit is not None else 0
        who = self.body_limit.who.value if self.body_limit is not None else "unknown"
        logger.warning("refused a request body over %d bytes from %s (%s)", limit, self.peer(), who)
        answer_and_close(self.channel, b"413 Content Too Large", REFUSAL.format(limit=limit))

    def peer(self) -> str:
        try:
            address = self.channel.transport.getPeer()
            return f"{address.host}:{address.port}"
        except Exception:  # the connection is already gone
            return "a client that has gone"


class BoundedHTTPChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel, answering an over-long line instead of dropping the
    connection, and dropping what comes after an answer that closes it."""

    closing = False
    dropped = 0
    abort_call: Any = None
    line_call: Any = None

    def connectionMade(self) -> None:
        channel: Any = super()
        channel.connectionMade()
        self.wait_for_request_line()

    def requestDone(self, request: Any) -> None:
        channel: Any = super()
        channel.requestDone(request)
        self.wait_for_request_line()  # the next request's, on a kept-alive connection

    def wait_for_request_line(self) -> None:
        # Twisted's idle timeout restarts with every byte: a request line sent a byte at
        # a time would hold the connection for hours. Once the line is in, the request
        # watches its own head and body (BoundedWebRequest).
        if self.line_call is None or not self.line_call.active():
            self.line_call = _reactor().callLater(
                settings.JMIRROR_BODY_TIMEOUT_SECONDS, self.request_line_too_slow
            )

    def request_line_too_slow(self) -> None:
        self.line_call = None
        transport: Any = self.transport
        wrapper = getattr(transport, "protocol", None)
        upgraded = wrapper is not None and getattr(wrapper, "_channel", None) is not self
        if self.requests or self.closing or transport is None or upgraded:
            return  # a request is under way (or the connection is now a websocket's)
        if not self._buffer:
            # Not a byte of a next request: an idle connection, closed without a word.
            channel: Any = self
            channel.loseConnection()
            return
        logger.warning("cut a connection from %s: no request line in time", transport.getPeer())
        answer_and_close(
            self,
            b"408 Request Timeout",
            f"The request was too slow: no request line in "
            f"{settings.JMIRROR_BODY_TIMEOUT_SECONDS} s. It was dropped.\n",
        )

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                producer: Any = self._networkProducer
                producer.pauseProducing()
            return
        channel: Any = super()
        channel.dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.closing:
            return
        # No line of this request yet counted: it is the request line.
        if self._receivedHeaderSize == 0:
            answer_and_close(self, b"414 URI Too Long", "The request line is too long.\n")
        else:
            answer_and_close(
                self, b"431 Request Header Fields Too Large", "A request header is too long.\n"
            )

    def abort(self) -> None:
        self.abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        for call in (self.abort_call, self.line_call):
            if call is not None and call.active():
                call.cancel()
        self.abort_call = self.line_call = None
        channel: Any = super()
        channel.connectionLost(reason)


def _bounded_channel(factory: Any) -> Any:
    # As twisted.web.http._genericHTTPChannelProtocolFactory, with our channel.
    channel: Any = BoundedHTTPChannel
    return http._GenericHTTPChannelProtocol(channel())


class BoundedHTTPFactory(HTTPFactory):  # type: ignore[misc]
    """Daphne's HTTP factory, making :class:`BoundedWebRequest` requests on
    :class:`BoundedHTTPChannel` channels."""

    protocol = _bounded_channel

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedWebRequest
        return protocol
