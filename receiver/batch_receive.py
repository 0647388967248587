"""Many UDP datagrams per system call: Linux ``recvmmsg(2)`` through ctypes.

Why: draining a socket with ``socket.recvfrom_into`` costs one system call, one copy and
one freshly built ``(host, port)`` tuple with its address string per datagram, about a
third of the receiver's per-packet cost. ``recvmmsg`` fills up to ``batch`` preallocated
buffers in one call; the lengths come out with one ``struct`` unpack over the message
array, the source addresses with one unpack over the address array (their text cached,
so a router's address is formatted once), and each payload is copied out with one
``view[a:b].tobytes()``.

Measured on the reference machine (2 shared, loaded cores, x86_64 VM, loopback;
``benchmarks/batch_receive_benchmark.py``: a socket filled with up to 8,000 datagrams, then
drained; best of 30 rounds, thread CPU time, which matched wall time within 5%), in
microseconds per datagram for 128-byte / 1400-byte payloads:

- ``recvfrom_into`` + ``bytes(view[:n])`` + ``source[0]`` (receive_loop.py today): 2.39 / 2.75
- ``recvfrom``:                                                          2.16 / 2.47
- ``BatchReceiver(batch=16)``:                                          1.76 / 2.17
- ``BatchReceiver(batch=64)``:                                          1.59 / 2.09
- ``BatchReceiver(batch=256)``:                                         1.58 / 2.17

i.e. about 1.5x (128 bytes) and 1.3x (1400 bytes) faster to receive. The floor is the
kernel: ``recvmmsg`` alone, with no Python work per datagram, measured about 1.1-1.3 us per
128-byte datagram here; the Python side of a batch is about 0.4 us per datagram (the
payload copy being most of it: ``view[a:b].tobytes()`` measured 1.5x faster than
``bytes(view[a:b])``). Figures move with the machine's load; rerun the benchmark.

No compiled extension: libc is reached through ``ctypes``, so this is the receive path
where receiver._fastpath (C) could not be built. Where that fails (not Linux, no
``recvmmsg`` in the C library, ctypes unusable, a 32/64-bit layout that does not check
out) :meth:`BatchReceiver.available` is false and the constructor raises
:class:`BatchUnavailable`: the caller falls back to ``recvfrom_into``.

Truncation: a datagram longer than ``max_datagram`` is dropped and counted in
:attr:`BatchReceiver.truncated`, never handed out as if whole (the call passes
``MSG_TRUNC`` so the kernel reports each datagram's real length). With the default
``max_datagram`` of 65535 no UDP datagram over IPv4 or IPv6 (without jumbograms) can be
truncated.

Memory: one zero-filled buffer of ``batch * max_datagram`` bytes (64 x 64 KiB = 4 MiB by
default; 64 x 9216 for jumbo frames is 576 KiB), plus small fixed arrays. A smaller
``max_datagram`` measured no faster (within the noise of the shared machine).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Final

__all__ = ["BatchReceiver", "BatchUnavailable", "format_source", "remember_source"]

# Linux values (include/linux/socket.h); only used on Linux.
_MSG_TRUNC: Final = 0x20
_MSG_DONTWAIT: Final = 0x40
_RETRY_LATER: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
# Source address text cached per raw address: a deployment has a handful of routers, and
# the cache is cleared when full so spoofed sources cannot grow it without bound.
ADDRESS_CACHE_SIZE: Final = 4096
# Room for the largest sockaddr the two families give (sockaddr_in6, 28 bytes); IPv4
# sockets use 16-byte sockaddr_in slots.
_SOCKADDR_IN_SIZE: Final = 16
_SOCKADDR_IN6_SIZE: Final = 28


class BatchUnavailable(RuntimeError):
    """recvmmsg cannot be used here (not Linux, no usable libc through ctypes)."""


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    # glibc's layout; musl's int + padding for msg_iovlen / msg_controllen has the same
    # size and, little-endian with zero padding, the same bytes for the values used here.
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),  # socklen_t
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


# The ``msg_len`` of each entry, read with padding codes derived from the ctypes layout
# (56 + 4 + 4 bytes on 64-bit Linux) rather than hard-coded offsets.
_MMSG_SIZE: Final = ctypes.sizeof(_MMsgHdr)
_LEN_OFFSET: Final = _MMsgHdr.msg_len.offset
_LEN_SIZE: Final = ctypes.sizeof(ctypes.c_uint)
_LEN_ENTRY: Final = f"{_LEN_OFFSET}xI{_MMSG_SIZE - _LEN_OFFSET - _LEN_SIZE}x"
# With timestamps: each entry's msg_controllen (what the kernel put in the control buffer)
# and msg_len.
_CONTROLLEN_OFFSET: Final = _MsgHdr.msg_controllen.offset
_CONTROLLEN_SIZE: Final = ctypes.sizeof(ctypes.c_size_t)
_TIMED_LEN_ENTRY: Final = (
    f"{_CONTROLLEN_OFFSET}x{'Q' if _CONTROLLEN_SIZE == 8 else 'I'}"
    f"{_LEN_OFFSET - _CONTROLLEN_OFFSET - _CONTROLLEN_SIZE}xI"
    f"{_MMSG_SIZE - _LEN_OFFSET - _LEN_SIZE}x"
)
# Kernel receive timestamps (SO_TIMESTAMPNS, Linux's value; Python does not name it): one
# control message per datagram, a cmsghdr (length, level, type) then a timespec. Only the
# 64-bit layout is read (16-byte cmsghdr, 64-bit tv_sec and tv_nsec): 32 bytes in all.
_SO_TIMESTAMPNS: Final = 35
_TIMESTAMP_CMSG = struct.Struct("=QiiqQ")
_TIMESTAMP_SPACE: Final = _TIMESTAMP_CMSG.size
_NS: Final = 1_000_000_000


def _load_recvmmsg() -> Callable[..., int] | None:
    """libc's recvmmsg, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    # Sanity of the layout the kernel expects: msghdr is 7 machine words on 64-bit
    # (56 bytes) and 7 on 32-bit (28); mmsghdr adds an unsigned int and pads to the word.
    word = ctypes.sizeof(ctypes.c_void_p)
    if ctypes.sizeof(_MsgHdr) != 7 * word or 8 * word != _MMSG_SIZE:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.recvmmsg
    except (OSError, AttributeError):
        try:
            name = ctypes.util.find_library("c")
            if name is None:
                return None
            function = ctypes.CDLL(name, use_errno=True).recvmmsg
        except (OSError, AttributeError):
            return None
    # No argtypes: the fd, count and flags go as C ints, the array as a pointer to it and
    # None as NULL, which skips ctypes' per-argument conversion (measured a little faster).
    function.restype = ctypes.c_int
    return function


_recvmmsg: Final = _load_recvmmsg()


class BatchReceiver:
    """Drains a UDP socket ``batch`` datagrams per ``recvmmsg`` call.

    Not thread-safe: one receiver per socket, used by one thread. The socket may be
    blocking or not: every call passes ``MSG_DONTWAIT``. The receiver keeps a reference
    to the socket and asks it for its descriptor on every call, so a closed socket gives
    ``OSError`` (EBADF) rather than reading a reused descriptor.
    """

    __slots__ = (
        "_buffer",
        "_control",
        "_control_view",
        "_family",
        "_len_structs",
        "_messages",
        "_messages_view",
        "_name_entry",
        "_name_size",
        "_name_structs",
        "_names",
        "_names_view",
        "_offsets",
        "_readonly",
        "_sock",
        "_template",
        "_timed_structs",
        "_view",
        "address_cache_size",
        "addresses",
        "batch",
        "max_datagram",
        "timestamps",
        "truncated",
    )

    @staticmethod
    def available() -> bool:
        """Whether recvmmsg can be used on this platform."""
        return _recvmmsg is not None

    def __init__(
        self,
        sock: socket.socket,
        *,
        batch: int = 64,
        max_datagram: int = 65535,
        timestamps: bool = False,
    ) -> None:
        if _recvmmsg is None:
            raise BatchUnavailable("recvmmsg is not available (needs Linux and libc via ctypes)")
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError("BatchReceiver needs a datagram socket")
        if sock.family == socket.AF_INET:
            name_size, entry = _SOCKADDR_IN_SIZE, "4xI8x"  # sin_addr as one integer
        elif sock.family == socket.AF_INET6:
            name_size, entry = _SOCKADDR_IN6_SIZE, "8x20s"  # sin6_addr + sin6_scope_id
        else:
            raise ValueError(
                f"BatchReceiver needs an AF_INET or AF_INET6 socket, not {sock.family!r}"
            )
        if not 1 <= batch <= 1024:  # UIO_MAXIOV: the kernel caps vlen at 1024
            raise ValueError("batch must be between 1 and 1024")
        if not 1 <= max_datagram <= 65535:
            raise ValueError("max_datagram must be between 1 and 65535")
        self._sock = sock
        self._family = sock.family
        self.batch = batch
        self.max_datagram = max_datagram
        #: Datagrams dropped because they were longer than ``max_datagram``.
        self.truncated = 0
        #: Raw address -> text, cleared when it reaches ``address_cache_size`` entries.
        self.addresses: dict[bytes | int, str] = {}
        self.address_cache_size = ADDRESS_CACHE_SIZE

        # Plain bytearrays seen by ctypes through from_buffer, so that the memoryviews
        # over them are simple byte views (a ctypes array's own view has a struct format).
        self._buffer = bytearray(batch * max_datagram)
        self._names = bytearray(batch * name_size)
        message_bytes = bytearray(batch * _MMSG_SIZE)
        self._name_size = name_size
        self._name_entry = entry
        iovecs = (_IOVec * batch)()
        self._messages = (_MMsgHdr * batch).from_buffer(message_bytes)
        buffer_address = ctypes.addressof(
            (ctypes.c_char * len(self._buffer)).from_buffer(self._buffer)
        )
        names_address = ctypes.addressof(
            (ctypes.c_char * len(self._names)).from_buffer(self._names)
        )
        for index in range(batch):
            iovecs[index].iov_base = buffer_address + index * max_datagram
            iovecs[index].iov_len = max_datagram
            header = self._messages[index].msg_hdr
            header.msg_name = names_address + index * name_size
            header.msg_namelen = name_size
            header.msg_iov = ctypes.addressof(iovecs[index])
            header.msg_iovlen = 1
        #: Whether :meth:`receive_timed` gives the kernel's receive time of each datagram
        #: (asked with ``timestamps=True``; 64-bit Linux only) rather than the time of the
        #: call.
        self.timestamps = False
        self._control = bytearray(batch * _TIMESTAMP_SPACE)
        if timestamps and ctypes.sizeof(ctypes.c_void_p) == 8:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self.timestamps = True
            except OSError:
                pass
        if self.timestamps:
            control_address = ctypes.addressof(
                (ctypes.c_char * len(self._control)).from_buffer(self._control)
            )
            for index in range(batch):
                header = self._messages[index].msg_hdr
                header.msg_control = control_address + index * _TIMESTAMP_SPACE
                header.msg_controllen = _TIMESTAMP_SPACE
        self._control_view = memoryview(self._control)
        # The iovec array must live as long as the messages pointing into it.
        self._messages._iovecs = iovecs  # type: ignore[attr-defined]
        # The kernel overwrites msg_namelen, msg_flags and msg_len of every message it
        # fills: the filled part is restored from this pristine copy after each call.
        self._template = memoryview(bytes(message_bytes))
        self._messages_view = memoryview(message_bytes)
        self._names_view = memoryview(self._names)
        self._view = memoryview(self._buffer)
        # Handed out by receive_timed(views=True): read-only, so a caller cannot write
        # into the next batch, and hashable like bytes.
        self._readonly = self._view.toreadonly()
        self._offsets = [index * max_datagram for index in range(batch)]
        # Unpackers for a result of n messages, compiled on first use.
        self._len_structs: list[struct.Struct | None] = [None] * (batch + 1)
        self._name_structs: list[struct.Struct | None] = [None] * (batch + 1)
        self._timed_structs: list[tuple[struct.Struct, struct.Struct] | None] = [None] * (batch + 1)

    def receive(self) -> list[tuple[bytes, str]]:
        """Up to ``batch`` datagrams waiting on the socket, as (payload, source address
        text) in arrival order; [] when none is waiting (EAGAIN) or the call was
        interrupted (EINTR). Never blocks. Any other error raises OSError.

        The source text is what ``recvfrom`` gives as ``source[0]``: dotted quad on an
        IPv4 socket; on an IPv6 socket ``socket.inet_ntop`` form, IPv4-mapped senders as
        ``::ffff:a.b.c.d``, link-local ones with ``%scope``. Datagrams longer than
        ``max_datagram`` are dropped and counted in :attr:`truncated`.
        """
        got = self._call()
        if got is None:
            return []
        lengths, keys = got
        if max(lengths) > self.max_datagram:
            payloads, sources = self._without_truncated(lengths, keys)
            return list(zip(payloads, sources, strict=True))
        view = self._view
        get = self.addresses.get
        text = self._text
        # memoryview.tobytes() measured ~1.5x faster than bytes(memoryview) per payload.
        return [
            (view[offset : offset + length].tobytes(), get(key) or text(key))
            for offset, length, key in zip(self._offsets, lengths, keys, strict=False)
        ]

    def receive_lists(self) -> tuple[list[bytes], list[str]]:
        """:meth:`receive` as two parallel lists (payloads, source texts), for a caller
        that zips them itself; measured no faster than :meth:`receive` in a loop."""
        got = self._call()
        if got is None:
            return [], []
        lengths, keys = got
        if max(lengths) > self.max_datagram:
            return self._without_truncated(lengths, keys)
        view = self._view
        get = self.addresses.get
        text = self._text
        return (
            [
                view[offset : offset + length].tobytes()
                for offset, length in zip(self._offsets, lengths, strict=False)
            ],
            [get(key) or text(key) for key in keys],
        )

    def receive_timed(
        self, *, views: bool = False
    ) -> tuple[list[bytes] | list[memoryview], list[str], list[int]]:
        """:meth:`receive` as three parallel lists: payloads, source texts and receive
        times (ns since the epoch, UTC). With ``timestamps`` the times are the kernel's,
        taken when each datagram reached the socket (what tcpdump records), so a busy
        moment of the caller does not shift them; without, or for a datagram the kernel
        gave no timestamp, the time of this call.

        ``views=True`` gives each payload as a read-only memoryview into the receiver's
        buffer instead of a copy: valid only until the next receive call, so a caller
        that keeps one must copy it (``bytes(view)``). It saves a copy (and for large
        datagrams a malloc and free) per datagram."""
        if not self.timestamps:
            payloads, sources = self.receive_lists()
            now = time.time_ns()
            return payloads, sources, [now] * len(payloads)
        count: int = _recvmmsg(  # type: ignore[misc]
            self._sock.fileno(), self._messages, self.batch, _MSG_DONTWAIT | _MSG_TRUNC, None
        )
        if count <= 0:
            self._check(count)
            return [], [], []
        structs = self._timed_structs[count] or self._compile_timed(count)
        messages = self._messages_view
        controls_and_lengths = structs[0].unpack_from(messages)
        keys_of = self._name_structs[count] or self._compile(count)[1]
        keys = keys_of.unpack_from(self._names_view)
        stamps = structs[1].unpack_from(self._control_view)
        size = count * _MMSG_SIZE
        messages[:size] = self._template[:size]
        control_lengths = controls_and_lengths[0::2]
        lengths = controls_and_lengths[1::2]
        seconds = stamps[3::5]
        nanoseconds = stamps[4::5]
        times = [
            second * _NS + nanosecond
            for second, nanosecond in zip(seconds, nanoseconds, strict=True)
        ]
        if (
            control_lengths.count(_TIMESTAMP_SPACE) != count
            or stamps[2::5].count(_SO_TIMESTAMPNS) != count
        ):
            # Some datagram came without its timestamp: the control buffer holds an older
            # one, so that datagram gets the time of this call instead.
            now = time.time_ns()
            types = stamps[2::5]
            times = [
                stamp if control == _TIMESTAMP_SPACE and kind == _SO_TIMESTAMPNS else now
                for stamp, control, kind in zip(times, control_lengths, types, strict=True)
            ]
        if max(lengths) > self.max_datagram:
            limit = self.max_datagram
            kept_times = [
                stamp for stamp, length in zip(times, lengths, strict=True) if length <= limit
            ]
            payloads, sources = self._without_truncated(lengths, keys)
            return payloads, sources, kept_times
        view = self._view
        get = self.addresses.get
        text = self._text
        sources = [get(key) or text(key) for key in keys]
        if views:
            readonly = self._readonly
            return (
                [
                    readonly[offset : offset + length]
                    for offset, length in zip(self._offsets, lengths, strict=False)
                ],
                sources,
                times,
            )
        return (
            [
                view[offset : offset + length].tobytes()
                for offset, length in zip(self._offsets, lengths, strict=False)
            ],
            sources,
            times,
        )

    def _check(self, count: int) -> None:
        """Raise for a failed recvmmsg, unless it only means "nothing now"."""
        if count < 0:
            code = ctypes.get_errno()
            if code not in _RETRY_LATER:
                raise OSError(code, os.strerror(code))

    def _compile_timed(self, count: int) -> tuple[struct.Struct, struct.Struct]:
        structs = (
            struct.Struct("=" + _TIMED_LEN_ENTRY * count),
            struct.Struct("=" + "QiiqQ" * count),
        )
        self._timed_structs[count] = structs
        return structs

    def _call(self) -> tuple[tuple[int, ...], tuple[bytes | int, ...]] | None:
        """One recvmmsg: the lengths and raw source keys of what arrived, None if nothing."""
        count: int = _recvmmsg(  # type: ignore[misc]
            self._sock.fileno(), self._messages, self.batch, _MSG_DONTWAIT | _MSG_TRUNC, None
        )
        if count <= 0:
            if count == 0:
                return None
            code = ctypes.get_errno()
            if code in _RETRY_LATER:
                return None
            raise OSError(code, os.strerror(code))
        lengths_of = self._len_structs[count] or self._compile(count)[0]
        keys_of = self._name_structs[count] or self._compile(count)[1]
        messages = self._messages_view
        lengths = lengths_of.unpack_from(messages)
        keys = keys_of.unpack_from(self._names_view)
        # Put msg_namelen (and msg_len, msg_flags) back for the next call.
        size = count * _MMSG_SIZE
        messages[:size] = self._template[:size]
        return lengths, keys

    def _compile(self, count: int) -> tuple[struct.Struct, struct.Struct]:
        lengths = struct.Struct("=" + _LEN_ENTRY * count)
        names = struct.Struct("=" + self._name_entry * count)
        self._len_structs[count] = lengths
        self._name_structs[count] = names
        return lengths, names

    def _without_truncated(
        self, lengths: tuple[int, ...], keys: tuple[bytes | int, ...]
    ) -> tuple[list[bytes], list[str]]:
        view = self._view
        payloads: list[bytes] = []
        sources: list[str] = []
        limit = self.max_datagram
        for offset, length, key in zip(self._offsets, lengths, keys, strict=False):
            if length > limit:
                self.truncated += 1
                continue
            payloads.append(view[offset : offset + length].tobytes())
            sources.append(self.addresses.get(key) or self._text(key))
        return payloads, sources

    def _text(self, key: bytes | int) -> str:
        """Format a raw source address (cache miss) and remember it."""
        return remember_source(self.addresses, key, self.address_cache_size)


def format_source(key: bytes | int) -> str:
    """A raw source address as ``recvfrom`` gives it: ``key`` is an IPv4 address as a
    native-order integer, or an IPv6 address and its 4-byte scope id."""
    if isinstance(key, int):
        return socket.inet_ntoa(struct.pack("=I", key))
    text = socket.inet_ntop(socket.AF_INET6, key[:16])
    scope = int.from_bytes(key[16:20], sys.byteorder)
    if scope:
        # recvfrom formats with getnameinfo, which appends the interface.
        text = socket.getnameinfo((text, 0, 0, scope), socket.NI_NUMERICHOST)[0]
    return text


def remember_source(
    cache: dict[bytes | int, str], key: bytes | int, limit: int = ADDRESS_CACHE_SIZE
) -> str:
    """:func:`format_source`, kept in ``cache`` (cleared when it holds ``limit``)."""
    text = format_source(key)
    if len(cache) >= limit:
        cache.clear()
    cache[key] = text
    return text
