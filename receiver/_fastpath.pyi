# Types of the C extension receiver/_fastpath.c (built by setup.py when it can be).
from collections.abc import Sequence
from typing import Any, Final

TABLE_LIMIT: Final[int]
RECENT: Final[int]
PENDING_LIMIT: Final[int]
LINKTYPE_RAW: Final[int]
LINKTYPE_PPP_HDLC: Final[int]
RECORD_HEADER: Final[int]
MAX_VLAN_TAGS: Final[int]
IPV6_HEADER_CHAIN: Final[frozenset[int]]

class FastReceiver:
    def __init__(
        self,
        fd: int,
        family: int,
        batch: int,
        max_datagram: int,
        rotate_bytes: int,
        buffer_bytes: int,
        timestamps: bool = True,
        contrail: bool = False,
    ) -> None: ...
    def receive(self) -> int: ...
    def store(self, start: int, /) -> int: ...
    def datagram(self, index: int, /) -> tuple[bytes, int | bytes, int]: ...
    def bind(
        self,
        index: int,
        linktype: int,
        low: int,
        high: int,
        delta: object,
        file: object,
        watched: bool = True,
        /,
    ) -> None: ...
    def bind_contrail(
        self,
        index: int,
        header_length: int,
        options: bytes,
        low: int,
        high: int,
        delta: object,
        file: object,
        watched: bool = True,
        /,
    ) -> None: ...
    def hand_over(self, replacements: dict[Any, Any], complete: bool = False, /) -> None: ...
    def clear(self, complete: bool = False, /) -> None: ...
    def take_counts(self) -> tuple[int, int, int, int]: ...
    def set_gate(self, claimed_ids: Sequence[int], streams_per_source: int, /) -> None: ...
    def refuse(self, index: int, reason: int, low: int, high: int, /) -> None: ...
    def take_dropped(
        self,
    ) -> tuple[int, int, int, int, list[tuple[int | bytes, int, int, int, int, int, int, int]]]: ...
    @property
    def pending(self) -> int: ...
    @property
    def truncated(self) -> int: ...
    @property
    def failed_at(self) -> int: ...
    @property
    def streams(self) -> int: ...
