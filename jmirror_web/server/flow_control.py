"""Backpressure for streamed responses under Daphne.

Daphne hands each ``http.response.body`` message to Twisted (``Request.write``), which
appends it to the transport's write buffer and returns at once; the application's
``send`` then returns and Django pulls the next chunk. A multi-gigabyte export to a slow
client would so pile up in the web process. :class:`FlowControlServer` makes ``send``
wait instead: it registers a streaming producer on the request, which Twisted pauses
when the transport holds more than its high-water mark (``FileDescriptor.bufferSize``,
64 KiB) and resumes when the client has drained it, and does not return from a
``more_body`` message while the producer is paused. A response so holds about one chunk
(at most 1 MiB for an export) in the process, whatever the client's speed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server

from jmirror_web.exports.verification import HASHED_UPLOAD_EXTENSION as HASHED
from jmirror_web.server.body_limit import DECIDED_EXTENSION as DECIDED
from jmirror_web.server.bounded_requests import BoundedHTTPFactory

logger = logging.getLogger(__name__)

# How often a paused response looks whether its connection is gone, in case Twisted's
# stopProducing never reaches the producer (it should, through the channel).
DISCONNECT_CHECK_SECONDS: Final = 1.0


class ResponseFlow:
    """One response's push producer (Twisted's ``IPushProducer``): whether the client has
    room for more of the response.

    Twisted calls these methods on its reactor, which is Daphne's asyncio loop, the loop
    the application's ``send`` runs on: the event needs no locking."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.stopped = False

    def pauseProducing(self) -> None:
        self.writable.clear()

    def resumeProducing(self) -> None:
        self.writable.set()

    def stopProducing(self) -> None:
        # The connection is gone: nothing will drain the buffer, so nobody may wait.
        self.stopped = True
        self.writable.set()


def gone(protocol: WebRequest) -> bool:
    """Whether the response is over: finished, or its connection lost."""
    return bool(protocol.finished) or protocol.channel is None


def release(protocol: WebRequest, flow: ResponseFlow) -> None:
    """Unregisters ``flow``: the channel allows one producer at a time, and the next
    request on a kept-alive connection registers its own."""
    if protocol.producer is flow:
        if protocol.channel is not None:
            protocol.unregisterProducer()
        else:
            protocol.producer = None


class FlowControlServer(Server):  # type: ignore[misc]  # daphne has no type hints
    """Daphne's server, with ``send`` of a streamed HTTP response waiting for the client,
    and request bodies bounded as they arrive (:mod:`jmirror_web.server.bounded_requests`)."""

    @property
    def http_factory(self) -> Any:
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory: Any) -> None:
        # Daphne's run() makes its HTTPFactory and listens with it at once: this is the one
        # place to put ours in its stead.
        if type(factory) is HTTPFactory:
            factory = BoundedHTTPFactory(factory.server)
        self._http_factory = factory

    @property
    def ws_factory(self) -> Any:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: Any) -> None:
        # Autobahn drops the TCP connection of a client that breaks a rule (by default
        # for servers); a frame or message over the size limit is closed with 1009
        # (message too big) instead, so the client learns why. Daphne's run() sets its
        # other options after this.
        factory.setProtocolOptions(failByDrop=False)
        self._ws_factory = factory

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        # A verify upload the request hashed while receiving it: the view reads the hash
        # from the scope, which only the server writes (jmirror_web.server.bounded_requests).
        extensions = dict(scope.get("extensions", {}))
        hashed = getattr(protocol, "hashed_upload", None)
        if hashed is not None:
            extensions[HASHED] = hashed
        # The cap the request held its body to: the ASGI cap need not look it up again.
        decided = getattr(protocol, "body_limit", None)
        if decided is not None:
            extensions[DECIDED] = decided.limit
        queue = super().create_application(protocol, {**scope, "extensions": extensions})
        instance = self.connections.get(protocol, {}).get("application_instance")
        if isinstance(protocol, WebRequest) and instance is not None:
            instance.add_done_callback(lambda done: application_ended(protocol, done))
        return queue

    async def handle_reply(self, protocol: Any, message: dict[str, Any]) -> None:
        streaming = (
            isinstance(protocol, WebRequest)
            and message.get("type") == "http.response.body"
            and bool(message.get("more_body", False))
        )
        flow = protocol.producer if isinstance(protocol, WebRequest) else None
        if streaming and flow is None and not gone(protocol):
            # Registered before the chunk is written, so that writing it past the
            # high-water mark pauses this producer.
            flow = ResponseFlow()
            try:
                protocol.registerProducer(flow, True)
            except RuntimeError:
                # The channel still holds another request's producer: Twisted allows
                # one. Rather a response without backpressure than no response.
                logger.warning("no backpressure for %s: a producer is registered", protocol)
                flow = None
        await super().handle_reply(protocol, message)
        if not isinstance(flow, ResponseFlow):
            return
        if not streaming or gone(protocol):
            release(protocol, flow)
            return
        await wait_for_room(protocol, flow)


def application_ended(protocol: WebRequest, done: asyncio.Future[Any]) -> None:
    """When an HTTP application fails after its response started (an export whose file
    could not be read mid-stream), its connection is aborted at once: Daphne would look
    only at its next application check, up to a second later, and then fail to end it
    (:meth:`~jmirror_web.server.bounded_requests.BoundedWebRequest.handle_exception`)."""
    if done.cancelled() or done.exception() is None:
        return
    abort = getattr(protocol, "abort_response", None)
    if abort is not None and protocol._response_started and not gone(protocol):
        abort()


async def wait_for_room(protocol: WebRequest, flow: ResponseFlow) -> None:
    """Returns once the client has drained the transport, or the response is over."""
    try:
        while not flow.writable.is_set():
            try:
                await asyncio.wait_for(flow.writable.wait(), DISCONNECT_CHECK_SECONDS)
            except TimeoutError:
                if gone(protocol):
                    break
    finally:
        if flow.stopped or gone(protocol):
            release(protocol, flow)
