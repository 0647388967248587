"""The browser's side of the live websocket protocol (docs/live-protocol.md): the limits,
and the parsing of client messages into :class:`Request` values (sans-I/O, no Django).

Everything a client sends is untrusted: a message is checked for size before it is
parsed, must be one JSON object with exactly the keys its action allows, and ids must be
plain positive integers. Anything else is a :class:`BadMessage`, which the consumer
answers with an ``error`` and counts towards closing the connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

MAX_MESSAGE_BYTES: Final = 4096
MAX_SUBSCRIPTIONS: Final = 20
MAX_BAD_MESSAGES: Final = 10
# Every subscription request writes an audit event; a page subscribes a few times, so a
# connection asking for more than this is misbehaving and must not flood the audit log.
MAX_SUBSCRIBE_REQUESTS: Final = 100
# Rate of client messages other than acks (token bucket): each may cause one reply, so
# this bounds what a client that sends but never reads can make the server buffer.
# The burst lets a page take all its subscriptions at once, with room to spare.
MESSAGE_BURST: Final = MAX_SUBSCRIPTIONS + 10
MESSAGES_PER_SECOND: Final = 5.0
# Largest database id accepted (a signed 64-bit primary key).
MAX_ID: Final = 2**63 - 1

CLOSE_UNAUTHENTICATED: Final = 4401
CLOSE_BAD_MESSAGES: Final = 4400
# The server could not check the user's rights (e.g. the database failed): fail closed.
CLOSE_INTERNAL_ERROR: Final = 1011


class Stream(StrEnum):
    SESSION = "session"
    INTERCEPT = "intercept"
    CASE = "case"
    DASHBOARD = "dashboard"
    HEALTH = "health"


OBJECT_STREAMS: Final = frozenset({Stream.SESSION, Stream.INTERCEPT, Stream.CASE})


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    TOO_MANY = "too_many"
    FORBIDDEN = "forbidden"


class BadMessage(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


SubscriptionKey = tuple[Stream, int | None]
"""A subscription: its stream and the id of its object (None for dashboard and health)."""


@dataclass(frozen=True)
class Subscribe:
    key: SubscriptionKey
    action: Literal["subscribe"] = "subscribe"


@dataclass(frozen=True)
class Unsubscribe:
    key: SubscriptionKey
    action: Literal["unsubscribe"] = "unsubscribe"


@dataclass(frozen=True)
class Ping:
    action: Literal["ping"] = "ping"


@dataclass(frozen=True)
class Ack:
    seq: int
    action: Literal["ack"] = "ack"


Request = Subscribe | Unsubscribe | Ping | Ack

_KEYS: Final[dict[str, frozenset[str]]] = {
    "subscribe": frozenset({"action", "stream", "id"}),
    "unsubscribe": frozenset({"action", "stream", "id"}),
    "ping": frozenset({"action"}),
    "ack": frozenset({"action", "seq"}),
}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"id": 1, "id": 2} would otherwise mean whichever the parser keeps: refuse it.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadMessage(ErrorCode.BAD_REQUEST, f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise BadMessage(ErrorCode.BAD_REQUEST, f"{name} is not JSON")


def _integer(value: Any, name: str, minimum: int) -> int:
    # bool is an int in Python, and 1.0 is a float: neither is an id.
    if type(value) is not int or not minimum <= value <= MAX_ID:
        raise BadMessage(ErrorCode.BAD_REQUEST, f"{name} must be an integer from {minimum}")
    return value


def parse(text: str) -> Request:
    """The request in one text frame, or :class:`BadMessage`."""
    # The character count is checked first so that a huge frame is not encoded to learn
    # its size; a character is at least one byte.
    if len(text) > MAX_MESSAGE_BYTES or len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise BadMessage(
            ErrorCode.TOO_LARGE, f"a message must be at most {MAX_MESSAGE_BYTES} bytes"
        )
    try:
        content = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
        )
    except (ValueError, RecursionError):
        # RecursionError: deeply nested arrays fit in 4096 bytes.
        raise BadMessage(ErrorCode.BAD_REQUEST, "a message must be one JSON object") from None
    if not isinstance(content, dict):
        raise BadMessage(ErrorCode.BAD_REQUEST, "a message must be one JSON object")
    action = content.get("action")
    if not isinstance(action, str) or action not in _KEYS:
        raise BadMessage(ErrorCode.BAD_REQUEST, f"action must be one of {', '.join(sorted(_KEYS))}")
    unknown = set(content) - _KEYS[action]
    if unknown:
        raise BadMessage(
            ErrorCode.BAD_REQUEST, f"unknown key(s) for {action}: {', '.join(sorted(unknown))}"
        )
    if action == "ping":
        return Ping()
    if action == "ack":
        return Ack(_integer(content.get("seq"), "seq", 1))
    key = _subscription_key(content)
    return Subscribe(key) if action == "subscribe" else Unsubscribe(key)


def _subscription_key(content: dict[str, Any]) -> SubscriptionKey:
    name = content.get("stream")
    try:
        stream = Stream(name) if isinstance(name, str) else None
    except ValueError:
        stream = None
    if stream is None:
        raise BadMessage(
            ErrorCode.BAD_REQUEST, f"stream must be one of {', '.join(s.value for s in Stream)}"
        )
    if stream in OBJECT_STREAMS:
        return stream, _integer(content.get("id"), "id", 1)
    # An explicit null is what a page's generic code sends for "no id"; accept it.
    if content.get("id") is not None:
        raise BadMessage(ErrorCode.BAD_REQUEST, f"the {stream} stream takes no id")
    return stream, None
