"""Export engine: stored capture files in, one pcap / pcapng / zip byte stream out.

Pure standard library (no Django): the web views and the benchmark both drive it. This
module checks a request and selects and orders its files (:func:`check`), and drives the
stream (:func:`stream_export`); the request's vocabulary is in
:mod:`~jmirror_web.exports.request`, which files and packets are kept in
:mod:`~jmirror_web.exports.filtering`, reading the stored files and merging them in time
order in :mod:`~jmirror_web.exports.reading`, and the pcap, pcapng and zip writers and
the digest in :mod:`~jmirror_web.exports.writers`.

Memory stays flat whatever the size: files are read in chunks and the output is yielded
in chunks of at most :data:`CHUNK_BYTES`. The SHA-256, byte count and packet count of
exactly the bytes yielded are computed on the way (:class:`ExportDigest`), so the chain
of custody records what the requester received, not a recomputation.

How it stays fast (``benchmarks/export_benchmark.py``): the common case, a file's records
all wanted, is found by walking record lengths alone and copied as one run per read;
files whose times do not overlap are read one after the other; pcapng blocks are joined
once per run; and SHA-256 runs on a worker thread (hashlib releases the GIL), one chunk
behind, so hashing overlaps reading and building.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from jmirror_web.exports.filtering import carries_ip, may_meet, narrowed
from jmirror_web.exports.reading import (
    SelectedFile,
    SessionPlan,
    StoredHeader,
    open_source,
    read_header,
    runs,
)
from jmirror_web.exports.request import (
    FILE_FORMATS,
    ExportError,
    ExportFormat,
    ExportRequest,
    SourceFile,
)
from jmirror_web.exports.writers import ExportDigest, Hasher, chunked, content_pieces, zip_pieces
from receiver.pcap import LinkType


def check(request: ExportRequest) -> None:
    """Raise :class:`ExportError` when the export cannot be made (no session, pcap over
    sessions or link types that differ, a member format that is not pcap/pcapng/pcap-ip,
    a missing file, an IP-only pcap with nothing to convert). Cheap: reads file headers,
    and for an IP-only pcap of sessions with no raw IP file, their PPP files up to the
    first IP packet. Call before answering 200.

    Which files count: those whose ``first_ns``/``last_ns`` (when given) meet the window;
    a pcap export of a session that mixes link types is therefore fine when the window
    keeps only one of them. A pcap export of several sessions with one link type is
    allowed (their packets merge by time in one file), but pcapng keeps each session as
    its own interface and is the better choice for an intercept.
    """
    _plan(request)


def stream_export(request: ExportRequest, digest: ExportDigest) -> Iterator[bytes]:
    """Yield the export's bytes in chunks of at most :data:`CHUNK_BYTES`, in time order
    across files and sessions, filling ``digest`` as it goes.

    Runs :func:`check` first (when the iterator is first advanced). Packets with equal
    times keep the order of the sessions in the request, then of their files. Files
    whose times do not overlap are chained and copied in bulk; only overlapping files
    are merged packet by packet. Each file is read in time order as the store writes it:
    reading a file stops at its first packet at or after the window's end.

    A stored path that no longer exists is looked for with ``.part`` appended (the file
    is still being written); such a file is read up to its last whole record as it
    stood when opened. A finished file that ends inside a record, or whose record
    headers are garbage, raises :class:`SourceError` naming the file and the offset,
    after every good byte before it was yielded.

    ``digest.first_ns``/``last_ns`` are the times of the first and last packets
    yielded (for a zip, the earliest and latest over its members).

    Stored pcapng files (a CN2 session's Ethernet frames) keep each packet's options
    (the Juniper header) in pcapng output, byte for byte; pcap output cannot hold them:
    their frames are written alone and ``digest.juniper_headers_dropped`` counts the
    packets whose options were left out, for the manifest to say so.

    An IP-only pcap (``ExportFormat.PCAP_IP``, also as zip members) is a conversion:
    raw IP packets are copied as stored, PPP frames carrying IPv4 or IPv6 are written
    without their PPP framing, PPP control packets are left out; ``digest`` counts each
    (``ppp_converted``, ``raw_ip_copied``, ``ppp_left_out``) for the manifest.
    """
    plan = _plan(request)
    with ThreadPoolExecutor(1, thread_name_prefix="export-sha256") as pool:
        sha = Hasher(pool)
        try:
            if request.format == ExportFormat.ZIP:
                pieces = zip_pieces(plan, request, digest, pool)
            else:
                pieces = content_pieces(plan, request, ExportFormat(request.format), digest)
            for chunk in chunked(pieces):
                sha.update(chunk)
                digest.size += len(chunk)
                yield chunk
        finally:
            digest.sha256 = sha.hexdigest()
    digest.complete = True


def _plan(request: ExportRequest) -> list[SessionPlan]:
    """Validate the request and select, order and describe its files (headers only)."""
    if not request.sessions:
        raise ExportError("There is nothing to export: choose at least one session.")
    # Plain strings are welcome too ("pcap" == ExportFormat.PCAP): compared with ==.
    if request.format not in tuple(ExportFormat):
        raise ExportError(f"Unknown export format {request.format!r}: choose pcap, pcapng or zip.")
    if request.format == ExportFormat.ZIP and request.member_format not in FILE_FORMATS:
        raise ExportError(
            f"A zip export holds pcap, pcapng or pcap-ip files, not {request.member_format}: "
            "choose pcap, pcapng or pcap-ip for its members."
        )
    plans: list[SessionPlan] = []
    order = 0
    for session in request.sessions:
        window = narrowed(request.window, session.window)
        selected: list[tuple[int, str, SourceFile, StoredHeader]] = []
        for source in session.files:
            if not may_meet(source, window):
                continue
            opened = open_source(source)
            try:
                header = read_header(opened.stream, source.path.name)
            finally:
                opened.stream.close()
            first = -1 if source.first_ns is None else source.first_ns
            selected.append((first, source.path.name, source, header))
        selected.sort(key=lambda item: (item[0], item[1]))
        linktypes = sorted({item[3].linktype for item in selected})
        inputs = []
        for _first, _name, source, header in selected:
            inputs.append(
                SelectedFile(
                    source, header.linktype, order, len(plans), window, pcapng=header.pcapng
                )
            )
            order += 1
        plans.append(SessionPlan(session, inputs, linktypes))
    member = request.member_format if request.format == ExportFormat.ZIP else request.format
    if member == ExportFormat.PCAP_IP:
        _check_conversion(plans)
    elif request.format == ExportFormat.PCAP:
        every = {linktype for plan in plans for linktype in plan.linktypes}
        if len(every) > 1:
            raise ExportError(
                f"These packets mix link types ({linktype_names(every)}), which one pcap "
                f"file cannot hold: export as pcapng instead{_conversion_hint(every)}."
            )
    elif member == ExportFormat.PCAP:
        for plan in plans:
            if len(plan.linktypes) > 1:
                raise ExportError(
                    f"Session {plan.session.name} mixes link types "
                    f"({linktype_names(plan.linktypes)}), which one pcap file cannot hold: "
                    f"choose pcapng for the zip's members{_conversion_hint(plan.linktypes)}."
                )
    return plans


# What an IP-only pcap (ExportFormat.PCAP_IP) converts: PPP frames to their IP packets;
# raw IP is copied as stored.
_CONVERTIBLE: Final = frozenset({int(LinkType.PPP_HDLC), int(LinkType.RAW)})


def _conversion_hint(linktypes: Iterable[int]) -> str:
    """The other way out of a pcap refused for mixed link types, when it applies."""
    if set(linktypes) <= _CONVERTIBLE:
        return (
            ", or as pcap-ip (pcap of the IP packets only, their PPP framing removed: a "
            "conversion, said so in its manifest)"
        )
    return ""


def _check_conversion(plans: list[SessionPlan]) -> None:
    """An IP-only pcap takes sessions of PPP and raw IP files only, and needs an IP
    packet to write: the sessions' files are read up to their first IP packet in the
    window (at once for a raw IP file; a PPP file holding only PPP control is small)."""
    for plan in plans:
        others = set(plan.linktypes) - _CONVERTIBLE
        if others:
            raise ExportError(
                f"Session {plan.session.name} holds {linktype_names(others)} frames, which "
                "the IP-only pcap does not convert (it converts PPP to raw IP): export as "
                "pcapng instead."
            )
    if not any(_carries_ip(plan) for plan in plans):
        names = ", ".join(plan.session.name for plan in plans)
        raise ExportError(
            f"There is no IP packet to convert: {'session' if len(plans) == 1 else 'sessions'} "
            f"{names} {'holds' if len(plans) == 1 else 'hold'} only PPP control packets (LCP, "
            "PAP, CHAP, IPCP...) in this window. Export as pcap or pcapng to have them as "
            "stored."
        )


def _carries_ip(plan: SessionPlan) -> bool:
    if any(item.linktype == LinkType.RAW for item in plan.inputs):
        return True
    # runs() closes the files it opened when the generator is dropped.
    return next(runs(plan.inputs, carries_ip), None) is not None


def linktype_names(linktypes: Iterable[int]) -> str:
    """Link types in words, for a sentence to the user: "PPP and raw IP"."""
    known = {
        int(LinkType.RAW): "raw IP",
        int(LinkType.PPP_HDLC): "PPP",
        int(LinkType.ETHERNET): "Ethernet",
    }
    return " and ".join(
        known.get(linktype, f"link type {linktype}") for linktype in sorted(linktypes)
    )
