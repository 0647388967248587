"""``manage.py receive``: live capture of jmirror streams into per-session pcap files.

Argument parsing and process set-up only: the receiver's service is
:func:`receiver.service.serve` (the receive loop, the bookkeeping thread and the live
summaries), stopped by SIGTERM or SIGINT.
"""

from __future__ import annotations

import gc
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.environment import listen_addresses, parse_listen
from jmirror_web.file_modes import secure_installation
from jmirror_web.intercepts.evidence_store import reach_evidence_store
from receiver.receive_loop import DEFAULT_RCVBUF, STALL_NS, Receiver
from receiver.service import serve


class Command(BaseCommand):
    help = (
        "Receive jmirror mirror streams on UDP and store the packets of intercepts in force "
        "into per-session pcap files under the data directory; counters go to the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen",
            action="append",
            metavar="HOST:PORT",
            help="UDP address to listen on, repeatable (default: JMIRROR_LISTEN)",
        )
        parser.add_argument(
            "--contrail-listen",
            action="append",
            metavar="HOST:PORT",
            help="UDP address to receive CN2 / Contrail (the Juniper header) on, repeatable "
            "(default: each CN2 router's analyzer port on the hosts of --listen)",
        )
        parser.add_argument(
            "--rcvbuf",
            type=int,
            default=DEFAULT_RCVBUF,
            metavar="BYTES",
            help="socket receive buffer to ask for (default: 32 MiB)",
        )
        parser.add_argument(
            "--metrics",
            metavar="HOST:PORT",
            help="serve Prometheus metrics (counters only, no case data) on this address "
            "(default: JMIRROR_METRICS_LISTEN; none when empty)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            listen = listen_addresses(options["listen"], settings.JMIRROR_LISTEN)
        except ValueError as error:
            raise CommandError(str(error)) from None
        try:
            contrail_listen = (
                [parse_listen(text) for text in options["contrail_listen"]]
                if options["contrail_listen"]
                else None
            )
        except ValueError as error:
            raise CommandError(f"--contrail-listen: {error}") from None
        if contrail_listen is not None and set(contrail_listen) & set(listen):
            raise CommandError(
                "--contrail-listen: an address cannot receive both jmirror and Contrail"
            )
        metrics_text = options["metrics"] or settings.JMIRROR_METRICS_LISTEN
        try:
            metrics = parse_listen(metrics_text) if metrics_text else None
        except ValueError as error:
            raise CommandError(f"--metrics: {error}") from None
        if options["rcvbuf"] <= 0:
            raise CommandError("--rcvbuf must be a positive number of bytes")
        # A bad or unreachable evidence store stops the start (one line, exit 2), before
        # any packet: closed files would otherwise pile up here unnoticed.
        if settings.STORAGE is not None:
            self.stdout.write(reach_evidence_store("receiver"))
        stop = threading.Event()

        def on_signal(number: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        def ready(receiver: Receiver) -> None:
            contrail = {sock.getsockname()[:2] for sock in receiver.contrail_sockets}
            jmirror = [address for address in receiver.addresses if address not in contrail]
            where = ", ".join(f"{host}:{port}" for host, port in jmirror)
            self.stdout.write(f"receiving jmirror on {where}")
            if contrail:
                where = ", ".join(f"{host}:{port}" for host, port in sorted(contrail))
                self.stdout.write(f"receiving Contrail (CN2) on {where}")
            if not receiver.native:
                # Correct but about half as fast: say so, with what to do about it.
                self.stderr.write(
                    "note: receiver._fastpath (the receive loop's C part) is not built; "
                    "receiving through the pure-Python path. Install a C compiler and the "
                    "Python headers and reinstall (scripts/install-venv) to build it."
                )

        # An installation made before the data directory was kept private is made so now.
        secure_installation()
        # Django, the apps and their modules are loaded and live as long as the process:
        # out of the collector's sight, a full collection no longer walks them, which
        # otherwise held up the receive loop (it measured ~6% of the receiver's CPU at
        # 150,000 datagrams/s, in pauses the socket buffer has to absorb).
        gc.collect()
        gc.freeze()
        try:
            receiver = serve(
                listen,
                root=Path(settings.SESSIONS_DIR),
                stop=stop,
                rcvbuf=options["rcvbuf"],
                ready=ready,
                metrics=metrics,
                contrail_listen=contrail_listen,
                upload_process=True,
                summarise_process=True,
            )
        except OSError as error:
            raise CommandError(f"cannot listen: {error}") from None
        counters = receiver.counters
        self.stdout.write(
            f"stopped: {counters.datagrams} datagrams, {counters.malformed} malformed, "
            f"drops {dict(counters.drops)}, {len(receiver.final_closed)} files closed, "
            f"longest receive round {counters.longest_round_ns / 1e6:.1f} ms "
            f"({counters.stalls} over {STALL_NS // 1_000_000} ms), "
            f"{receiver.store.bound_closes} closed early by the open-file bound"
        )
