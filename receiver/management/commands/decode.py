"""``manage.py decode FILE [--port N ...] [--contrail-port N ...]``: the jmirror and
Contrail packets of a capture as JSON lines."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from receiver.detection import FlowJudge, MirrorFormat
from receiver.offline import decode_lines
from receiver.pcap_reader import FRAGMENTS_INCOMPLETE, CaptureError

# How the summary names a format's port option.
_PORT_OPTION = {"jmirror": "--port", "contrail": "--contrail-port"}

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


def summary(
    decoded: Counter[str],
    skipped: Counter[str],
    suggestions: Mapping[tuple[MirrorFormat, int], int] | None = None,
) -> str:
    """The closing line on stderr: frames read, packets decoded by format, frames
    skipped by reason, datagrams whose fragments never all arrived (their frames are
    among the skipped ``fragment`` frames, so they are told apart), and the ports whose
    datagrams looked like mirror traffic but were skipped, with the option that would
    decode them."""
    incomplete = skipped[FRAGMENTS_INCOMPLETE]
    frame_reasons = {
        reason: count
        for reason, count in sorted(skipped.items())
        if count and reason != FRAGMENTS_INCOMPLETE
    }
    skipped_frames = sum(frame_reasons.values())
    total = sum(decoded.values())
    line = f"{total + skipped_frames} frames read, {total} packets decoded"
    formats = {name: count for name, count in sorted(decoded.items()) if count}
    if formats:
        line += " (" + ", ".join(f"{name}: {count}" for name, count in formats.items()) + ")"
    line += f", {skipped_frames} skipped"
    if frame_reasons:
        line += " (" + ", ".join(f"{reason}: {count}" for reason, count in frame_reasons.items())
        line += ")"
    if incomplete:
        line += f"; {incomplete} datagrams with missing fragments"
    for (format, port), count in sorted((suggestions or {}).items()):
        if count:
            line += (
                f"; port {port} looks like {format} ({count} datagrams skipped): "
                f"try {_PORT_OPTION[format]} {port}"
            )
    return line


class Command(BaseCommand):
    help = (
        "Print the jmirror and CN2/Contrail mirror packets of a pcap or pcapng file as JSON "
        "lines (jmirror keys: frame, time, router, port, format, mid, intercept_id, version, "
        "sid, inner, ppp_protocol, src, dst, proto, sport, dport, length; Contrail adds "
        "capture_host, flags, actions, direction, source_vn, dest_vn). Without --port or "
        "--contrail-port, both are detected on any UDP port."
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
            "without it or --contrail-port, mirror traffic is detected on any port",
        )
        parser.add_argument(
            "--contrail-port",
            type=udp_port,
            action="append",
            default=[],
            metavar="N",
            help="decode UDP datagrams to this port as CN2/Contrail with the Juniper "
            "header, as Wireshark's -d udp.port==N,juniper (repeatable; CN2's default "
            "analyzer port is 8099)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: str = options["file"]
        ports: list[int] = options["port"]
        contrail_ports: list[int] = options["contrail_port"]
        both = set(ports) & set(contrail_ports)
        if both:
            raise CommandError(
                f"port {min(both)} is given as both jmirror and Contrail", returncode=2
            )
        skipped: Counter[str] = Counter()
        decoded: Counter[str] = Counter()
        judge = FlowJudge(skipped)
        failure: str | None = None
        lines: list[str] = []
        try:
            with open(path, "rb") as stream:
                for line in decode_lines(stream, ports, skipped, decoded, contrail_ports, judge):
                    lines.append(line)
                    if len(lines) == _LINES_PER_WRITE:
                        self.stdout.write("".join(lines), ending="")
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
            self.stdout.flush()
        except BrokenPipeError:
            self._stop_writing()
            return
        self.stderr.write(summary(decoded, skipped, judge.suggestions))
        if failure is not None:
            raise CommandError(failure, returncode=2)

    def _stop_writing(self) -> None:
        """The reader went away (``decode ... | head``): stop quietly as Unix tools do.
        Python would complain again when it flushes stdout at exit, so stdout now
        points at /dev/null."""
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
