"""The live websocket (docs/live-protocol.md): relays the receiver's summaries to the
streams a page subscribed to, after checking the user's rights.

Thin on purpose: parsing is :mod:`.protocol`, coalescing :mod:`.buffer`, when to send
and how often the page may ask :mod:`.flow`, and every rights decision :mod:`.rights`,
which asks :mod:`jmirror_web.intercepts.access` like the views do. The messages it relays
are :mod:`receiver.live_contract`'s. What lives here is the connection's state and its
two background tasks:

- the flusher sends the coalesced items as one ``updates`` message at most every
  :attr:`LiveConsumer.flush_interval`, and only while fewer than
  :attr:`LiveConsumer.max_unacked` of them wait for the page's ``ack``. Daphne buffers
  whatever a consumer sends to a client that does not read, without limit (docs/architecture.md,
  Measured constraints); the acks are the only way to learn that the page keeps up, so a frozen tab
  costs the server at most that many messages plus the bounded buffer;
- the re-check reloads the user from the session and re-decides every subscription each
  :attr:`LiveConsumer.recheck_interval`, so that a user signed out, deactivated or
  unassigned stops receiving within a minute.

The receivers summarise only what some page watches: the connection's granted
subscriptions are written to the watch registry (:mod:`.watching`) whenever they change,
refreshed every :attr:`LiveConsumer.watch_interval` by a third task so that they outlive
the connection by at most the registry's lifetime if this process dies, and deleted when
the connection ends. A registry write that fails is logged and left to the next refresh:
it decides what the receivers send, never what this connection may receive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from jmirror_web.live import history, rights, watching
from jmirror_web.live.buffer import SeenMessages, UpdateBuffer, summary_identity
from jmirror_web.live.flow import SendWindow, TokenBucket
from jmirror_web.live.protocol import (
    CLOSE_BAD_MESSAGES,
    CLOSE_INTERNAL_ERROR,
    CLOSE_UNAUTHENTICATED,
    MAX_BAD_MESSAGES,
    MAX_SUBSCRIBE_REQUESTS,
    MAX_SUBSCRIPTIONS,
    MESSAGE_BURST,
    MESSAGES_PER_SECOND,
    Ack,
    BadMessage,
    ErrorCode,
    Ping,
    Request,
    Stream,
    Subscribe,
    SubscriptionKey,
    Unsubscribe,
    parse,
)
from jmirror_web.live.rights import Grant
from receiver.live_contract import (
    CASE_MESSAGE,
    HEALTH_GROUP,
    HEALTH_MESSAGE,
    SESSION_MESSAGE,
    CaseCounts,
    HealthSummary,
    SessionSummary,
    case_group,
    intercept_group,
    session_group,
)

logger = logging.getLogger(__name__)


def groups_of(key: SubscriptionKey, grant: Grant) -> set[str]:
    """The channel-layer groups a subscription listens to."""
    stream, object_id = key
    if stream == Stream.HEALTH:
        return {HEALTH_GROUP}
    if stream == Stream.DASHBOARD:
        return {case_group(case_id) for case_id in grant.case_ids}
    assert object_id is not None  # object streams always have one (protocol.parse)
    if stream == Stream.SESSION:
        return {session_group(object_id)}
    if stream == Stream.INTERCEPT:
        return {intercept_group(object_id)}
    return {case_group(object_id)}


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    # Seconds between two re-checks of the user's rights: a feed stops within 60 s of a
    # lost right. Tests lower it.
    recheck_interval: ClassVar[float] = 30.0
    # At most 10 updates a second per connection, whatever the packet rate.
    flush_interval: ClassVar[float] = 0.1
    # Updates sent and not yet acknowledged by the page before sending pauses.
    max_unacked: ClassVar[int] = 4
    # Seconds between two refreshes of this connection's watches (watching.LIFETIME is
    # three of them, so a missed refresh does not make the receivers stop). Tests lower it.
    watch_interval: ClassVar[float] = watching.REFRESH_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session_key: str | None = None
        self._user_pk: Any = None
        self._address: str | None = None
        self._grants: dict[SubscriptionKey, Grant] = {}
        self._groups: set[str] = set()
        self._groups_lock = asyncio.Lock()
        self._buffer = UpdateBuffer()
        self._seen = SeenMessages()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._bad_messages = 0
        self._subscribe_requests = 0
        self._bucket = TokenBucket(
            burst=MESSAGE_BURST, rate=MESSAGES_PER_SECOND, now=time.monotonic()
        )
        self._window = SendWindow(size=self.max_unacked, interval=self.flush_interval)
        # The registry is written by one task at a time, and only once something was;
        # the rows last written, so that an unchanged set is only refreshed.
        self._watch_lock = asyncio.Lock()
        self._watch_written = False
        self._watch_rows: set[tuple[str, int]] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # The background tasks end with the connection however it ends (also when the
        # server cancels the application instead of sending a disconnect).
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stop_tasks()
            await self._forget_watches()

    # Connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        # Accepted before the check so that the page gets close code 4401: a refused
        # handshake reaches the browser as 1006 with no reason.
        await self.accept()
        user = self.scope.get("user")
        session_key = getattr(self.scope.get("session"), "session_key", None)
        self._address = rights.client_address(self.scope)
        if user is None or not user.is_authenticated or not user.is_active or not session_key:
            # Audited per address (rate-limited): a visitor trying the live feed.
            await database_sync_to_async(rights.refuse_connection)(
                None, self._address, "not_signed_in"
            )
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(rights.admit)(session_key, user.pk, self._address):
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        self._session_key, self._user_pk = session_key, user.pk
        self._tasks = [
            asyncio.create_task(self._guarded(self._flush_loop)),
            asyncio.create_task(self._guarded(self._recheck_loop)),
            asyncio.create_task(self._guarded(self._watch_loop)),
        ]

    async def disconnect(self, code: int) -> None:
        self._closed = True
        self._grants.clear()
        await self._stop_tasks()
        await self._sync_groups()
        await self._forget_watches()

    def _open(self) -> bool:
        # A method, not the attribute: mypy would otherwise keep a value it narrowed
        # before an await, when another task may have closed the connection.
        return not self._closed

    async def _close(self, code: int) -> None:
        if self._closed:
            return
        self._closed = True
        # Nothing more is relayed from here on, whatever was pending.
        self._grants.clear()
        self._buffer = UpdateBuffer()
        await self.close(code=code)

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    async def _send_json(self, content: dict[str, Any]) -> None:
        if not self._closed:
            await self.send(text_data=json.dumps(content, separators=(",", ":")))

    # Client messages ----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closed or self._user_pk is None:
            return
        try:
            if text_data is None:
                raise BadMessage(ErrorCode.BAD_REQUEST, "binary frames are not accepted")
            request = parse(text_data)
            if not isinstance(request, Ack):
                self._take_token()
            await self._handle(request)
        except BadMessage as error:
            await self._bad_message(error)

    def _take_token(self) -> None:
        if not self._bucket.take(time.monotonic()):
            raise BadMessage(ErrorCode.TOO_MANY, "too many messages; slow down")

    async def _bad_message(self, error: BadMessage) -> None:
        self._bad_messages += 1
        await self._send_json({"type": "error", "code": error.code.value, "message": error.message})
        if self._bad_messages >= MAX_BAD_MESSAGES:
            await self._close(CLOSE_BAD_MESSAGES)

    async def _handle(self, request: Request) -> None:
        if isinstance(request, Ping):
            await self._send_json({"type": "pong"})
        elif isinstance(request, Ack):
            if not self._window.ack(request.seq):
                raise BadMessage(
                    ErrorCode.BAD_REQUEST, "ack must name a seq sent and not yet acknowledged"
                )
            self._wake.set()
        elif isinstance(request, Subscribe):
            await self._subscribe(request.key)
        elif isinstance(request, Unsubscribe) and self._grants.pop(request.key, None) is not None:
            self._buffer.discard(request.key)
            await self._sync_groups()
            await self._sync_watches()

    async def _subscribe(self, key: SubscriptionKey) -> None:
        self._subscribe_requests += 1
        if self._subscribe_requests > MAX_SUBSCRIBE_REQUESTS:
            raise BadMessage(
                ErrorCode.TOO_MANY,
                f"at most {MAX_SUBSCRIBE_REQUESTS} subscription requests per connection",
            )
        if key not in self._grants and len(self._grants) >= MAX_SUBSCRIPTIONS:
            await database_sync_to_async(rights.refuse)(
                self._session_key, self._user_pk, key, self._address, "too_many"
            )
            raise BadMessage(
                ErrorCode.TOO_MANY, f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
            )
        signed_in, grant = await database_sync_to_async(rights.subscribe)(
            self._session_key, self._user_pk, key, self._address
        )
        if not signed_in:
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        stream, object_id = key
        if grant is None:
            await self._send_json(
                {
                    "type": "error",
                    "code": ErrorCode.FORBIDDEN.value,
                    "stream": stream.value,
                    "id": object_id,
                    "message": "no such stream, or no right to it",
                }
            )
            return
        if not self._open():
            return
        self._grants[key] = grant
        await self._sync_groups()
        await self._sync_watches()
        await self._send_json({"type": "subscribed", "stream": stream.value, "id": object_id})
        if stream == Stream.SESSION and object_id is not None:
            await self._send_history(object_id, grant)

    async def _send_history(self, session_id: int, grant: Grant) -> None:
        """The session's recent stored packets and per-second counts (:mod:`.history`),
        with the rights of the subscription just granted; none when nothing is stored.
        Not one of the acknowledged updates: one bounded message per subscription."""
        try:
            message = await database_sync_to_async(history.session_history)(
                session_id, content=grant.content, now_ns=time.time_ns()
            )
        except Exception:
            # The feed stands without it: the page fills from live summaries as before.
            logger.exception("history of live session %s not read", session_id)
            return
        if message is not None and self._grants.get((Stream.SESSION, session_id)) == grant:
            await self._send_json(message)

    async def _sync_groups(self) -> None:
        """Join and leave groups until they are those of the current subscriptions."""
        # One at a time: the re-check and a subscription may both change the groups, and
        # each must compute what is wanted after the other has finished.
        async with self._groups_lock:
            wanted: set[str] = set()
            for key, grant in self._grants.items():
                wanted |= groups_of(key, grant)
            for group in sorted(wanted - self._groups):
                await self.channel_layer.group_add(group, self.channel_name)
                self._groups.add(group)
            for group in sorted(self._groups - wanted):
                await self.channel_layer.group_discard(group, self.channel_name)
                self._groups.discard(group)

    async def _sync_watches(self) -> None:
        """Make the registry's rows of this connection those of its subscriptions, with
        their expiry pushed ahead."""
        async with self._watch_lock:
            keys = list(self._grants) if self._open() else []
            rows = watching.watched(keys)
            if not rows and not self._watch_written:
                return
            try:
                if rows and rows == self._watch_rows:
                    refreshed = await database_sync_to_async(watching.refresh)(self.channel_name)
                    if refreshed == len(rows):
                        return
                    # Some were deleted meanwhile (pruned after an outage): written again.
                await database_sync_to_async(watching.keep)(self.channel_name, keys)
            except Exception:
                # Not a right: the subscription stands, the next refresh tries again.
                logger.exception("live watches of a connection not written")
                self._watch_rows = set()
                return
            self._watch_rows = rows
            self._watch_written = bool(rows)

    async def _forget_watches(self) -> None:
        async with self._watch_lock:
            if not self._watch_written:
                return
            try:
                await database_sync_to_async(watching.forget)(self.channel_name)
            except Exception:
                logger.exception("live watches of an ended connection not deleted; they lapse")
                return
            self._watch_written = False
            self._watch_rows = set()

    # Channel-layer messages (receiver.live_contract) --------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels hops to a thread before every handler to close stale database
        # connections; summaries are handled in memory, arrive several times a second per
        # session, and must not queue behind the database thread.
        # The type names the contract's message; nothing checks its fields on the way, so
        # the handlers and the buffer still read them defensively.
        if message.get("type") == SESSION_MESSAGE:
            await self.live_session(cast(SessionSummary, message))
        elif message.get("type") == CASE_MESSAGE:
            await self.live_case(cast(CaseCounts, message))
        elif message.get("type") == HEALTH_MESSAGE:
            await self.live_health(cast(HealthSummary, message))
        else:
            await super().dispatch(message)

    async def live_session(self, message: SessionSummary) -> None:
        if not self._grants:
            return
        try:
            self._absorb_session(message)
        except (KeyError, TypeError, ValueError) as error:
            logger.warning("live summary not understood (%s: %s)", type(error).__name__, error)
            return
        self._wake.set()

    def _absorb_session(self, summary: SessionSummary) -> None:
        # The receiver sends each summary to its session, intercept and case groups: a
        # connection in several of them gets copies, and the first one is routed to every
        # subscription it belongs to.
        if not self._seen.first_time(summary_identity(summary)):
            return
        case_id = int(summary["case_id"])
        for key, grant in self._grants.items():
            # A summary reaches a subscription only for the case its right was checked on.
            if case_id not in grant.case_ids:
                continue
            stream, object_id = key
            if stream == Stream.DASHBOARD:
                self._buffer.add_case_counts(key, case_id, summary)
            elif (
                (stream == Stream.SESSION and summary["session_id"] == object_id)
                or (stream == Stream.INTERCEPT and summary["intercept_id"] == object_id)
                or stream == Stream.CASE
            ):
                self._buffer.add_session(key, summary)

    async def live_case(self, message: CaseCounts) -> None:
        """Per-case counts of the sessions no page covers: the dashboards' share; session
        summaries of the covered ones count as before."""
        if not self._grants:
            return
        try:
            case_id = int(message["case_id"])
            for key, grant in self._grants.items():
                if key[0] == Stream.DASHBOARD and case_id in grant.case_ids:
                    self._buffer.add_case_counts(key, case_id, message)
        except (KeyError, TypeError, ValueError) as error:
            logger.warning("live case counts not understood (%s: %s)", type(error).__name__, error)
            return
        self._wake.set()

    async def live_health(self, message: HealthSummary) -> None:
        key: SubscriptionKey = (Stream.HEALTH, None)
        if key in self._grants:
            self._buffer.add_health(key, message)
            self._wake.set()

    # Background tasks ---------------------------------------------------------------

    async def _guarded(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Rights that cannot be checked (or a bug) end the connection: fail closed.
            logger.exception("live connection closed after an error")
            await self._close(CLOSE_INTERNAL_ERROR)

    def _content(self, key: SubscriptionKey) -> bool | None:
        grant = self._grants.get(key)
        return None if grant is None else grant.content

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._open():
            await self._wake.wait()
            self._wake.clear()
            if not self._buffer or self._window.full():
                continue  # new items or an ack set the event again
            delay = self._window.delay(loop.time())
            if delay > 0:
                await asyncio.sleep(delay)
            if not self._open():
                return
            items, dropped = self._buffer.take(self._content)
            self._window.flushed(loop.time())
            if not items and not dropped:
                continue
            seq = self._window.next_seq()
            await self._send_json(
                {"type": "updates", "seq": seq, "items": items, "dropped": dropped}
            )

    async def _watch_loop(self) -> None:
        while self._open():
            await asyncio.sleep(self.watch_interval)
            await self._sync_watches()

    async def _recheck_loop(self) -> None:
        while self._open():
            await asyncio.sleep(self.recheck_interval)
            await self.recheck()

    async def recheck(self) -> None:
        """Re-decide every subscription; end those no longer allowed."""
        checked = dict(self._grants)
        signed_in, verdicts = await database_sync_to_async(rights.recheck)(
            self._session_key, self._user_pk, checked, self._address
        )
        if not signed_in:
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        revoked: list[SubscriptionKey] = []
        # Applied without awaiting, so no summary is routed on a half-updated state.
        for key, grant in verdicts.items():
            before = checked[key]
            if self._grants.get(key) is not before:
                continue  # unsubscribed or subscribed again meanwhile: decided then
            if grant is None:
                del self._grants[key]
                self._buffer.discard(key)
                revoked.append(key)
                continue
            for case_id in before.case_ids - grant.case_ids:
                self._buffer.discard_case(key, case_id)
            self._grants[key] = grant
        for stream, object_id in revoked:
            await self._send_json({"type": "revoked", "stream": stream.value, "id": object_id})
        await self._sync_groups()
        if revoked:
            await self._sync_watches()
