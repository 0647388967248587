"""``manage.py decode FILE [--port N ...]``: the jmirror packets of a capture as JSON lines."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from receiver.offline import decode_capture, json_line
from receiver.pcap_reader import FRAGMENTS_INCOMPLETE, CaptureError

# Lines are written in batches: one write per packet would cost more than decoding it.
_LINES_PER_WRITE = 2048


def udp_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a UDP port (1-65535)")
    return port


def summary(decoded: int, skipped: Counter[str]) -> str:
    """The closing line on stderr: frames read, packets decoded, frames skipped by
    reason, and datagrams whose fragments never all arrived (their frames are among
    the skipped ``fragment`` frames, so they are told apart)."""
    incomplete = skipped[FRAGMENTS_INCOMPLETE]
    frame_reasons = {
        reason: count
        for reason, count in sorted(skipped.items())
        if count and reason != FRAGMENTS_INCOMPLETE
    }
    skipped_frames = sum(frame_reasons.values())
    line = (
        f"{decoded + skipped_frames} frames read, {decoded} jmirror packets decoded, "
        f"{skipped_frames} skipped"
    )
    if frame_reasons:
        line += " (" + ", ".join(f"{reason}: {count}" for reason, count in frame_reasons.items())
        line += ")"
    if incomplete:
        line += f"; {incomplete} datagrams with missing fragments"
    return line


class Command(BaseCommand):
    help = (
        "Print the jmirror packets of a pcap or pcapng file as JSON lines (keys: frame, time, "
        "router, port, mid, intercept_id, version, sid, inner, ppp_protocol, src, dst, proto, "
        "sport, dport, length). Without --port, jmirror is detected on any UDP port."
    )
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="pcap or pcapng capture file")
        parser.add_argument(
            "--port",
            type=udp_port,
            action="append",
            default=[],
            metavar="N",
            help="decode UDP datagrams to this port as jmirror (repeatable); "
            "without it, jmirror is detected on any port",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: str = options["file"]
        ports: list[int] = options["port"]
        skipped: Counter[str] = Counter()
        decoded = 0
        failure: str | None = None
        lines: list[str] = []
        try:
            with open(path, "rb") as stream:
                for frame, time_ns, router, port, packet in decode_capture(stream, ports, skipped):
                    lines.append(json_line(frame, time_ns, router, port, packet))
                    if len(lines) == _LINES_PER_WRITE:
                        self.stdout.write("".join(lines), ending="")
                        decoded += len(lines)
                        lines.clear()
        except CaptureError as error:
            # Every complete record before the damage is still printed.
            failure = f"{path}: {error}"
        except BrokenPipeError:
            self._stop_writing()
            return
        except OSError as error:
            raise CommandError(f"{path}: {error.strerror or error}", returncode=2) from None
        try:
            self.stdout.write("".join(lines), ending="")
            decoded += len(lines)
            self.stdout.flush()
        except BrokenPipeError:
            self._stop_writing()
            return
        self.stderr.write(summary(decoded, skipped))
        if failure is not None:
            raise CommandError(failure, returncode=2)

    def _stop_writing(self) -> None:
        """The reader went away (``decode ... | head``): stop quietly as Unix tools do.
        Python would complain again when it flushes stdout at exit, so stdout now
        points at /dev/null."""
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
