# Types of the C extension receiver/_packet_index.c (built by setup.py when it can be).
from typing import Final

RECORD_SIZE: Final[int]

def index_records(
    buffer: bytes | bytearray, offset: int, linktype: int, pcapng: bool, /
) -> bytes: ...
def index_prefix(
    buffer: bytes | bytearray, offset: int, linktype: int, pcapng: bool, /
) -> tuple[bytes, int]: ...
def select_records(
    index: bytes | memoryview,
    first: int,
    last: int,
    start_ns: int,
    end_ns: int,
    version: int,
    address: bytes,
    port: int,
    protocol: int,
    names_only: bool,
    /,
) -> bytes: ...
def index_times(index: bytes | memoryview, /) -> tuple[bytes, bool]: ...
