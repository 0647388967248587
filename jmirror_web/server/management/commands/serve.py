"""``manage.py serve``: the web app under Daphne, with the receiver inside it by default.

The embedded default (no Redis) has only the in-process channel layer, which does not
cross processes, so the receiver's live summaries can reach the browsers only if the
receiver runs in the web server's process: its capture loop in a thread of its own, its
summaries handed to the server's event loop (:class:`receiver.live.LoopSender`). With
Redis (production), ``JMIRROR_EMBEDDED_RECEIVER`` is off by default and receivers run as
``manage.py receive`` processes.

Ctrl-C or SIGTERM stops Daphne, then the receiver closes and hashes its files.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Final

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.audit.checkpoints import start_periodic_checkpoints
from jmirror_web.environment import listen_addresses
from jmirror_web.file_modes import secure_installation
from jmirror_web.intercepts.evidence_store import reach_evidence_store
from receiver.live import LoopSender
from receiver.receive_loop import Receiver
from receiver.service import serve as serve_receiver

logger = logging.getLogger(__name__)

# Daphne's default is 1 MiB; the live consumer accepts messages of 4 KiB at most, so a
# bigger frame is refused by the server before any of it is buffered.
WEBSOCKET_MAX_MESSAGE: Final = 64 * 1024
RECEIVER_START_TIMEOUT: Final = 30.0
RECEIVER_STOP_TIMEOUT: Final = 10.0


def proxy_options(behind_proxy: bool) -> dict[str, str]:
    """Daphne's options for a reverse proxy in front (``JMIRROR_BEHIND_PROXY``).

    Behind a proxy every request comes from the proxy's address, so the audit log and the
    sign-in lockout (by user and address) would see one address for everybody: one
    attacker could lock a user out everywhere. Daphne then takes the client's address from
    X-Real-IP, a single value the proxy sets, replacing whatever a client sent (nginx:
    ``proxy_set_header X-Real-IP $remote_addr``), and not from X-Forwarded-For, whose
    first entry a client can write. Only with the proxy as the one way in (the compose
    file publishes the port on 127.0.0.1) is either header worth trusting.
    """
    if not behind_proxy:
        return {}
    return {
        "proxy_forwarded_address_header": "X-Real-IP",
        "proxy_forwarded_proto_header": "X-Forwarded-Proto",
    }


class EmbeddedReceiver:
    """The receiver on a thread of the web process."""

    def __init__(self, listen: list[tuple[str, int]], root: Path, loop: Any) -> None:
        self.stop = threading.Event()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.receiver: Receiver | None = None
        layer = get_channel_layer()
        self._live = LoopSender(layer, loop) if layer is not None else None
        self._listen = listen
        self._root = root
        self.thread = threading.Thread(target=self._run, name="embedded-receiver", daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        if not self.started.wait(RECEIVER_START_TIMEOUT):
            raise CommandError("the receiver did not start in time")
        if self.error is not None or self.receiver is None:
            raise CommandError(f"cannot start the receiver: {self.error}")
        return self.receiver

    def close(self) -> None:
        self.stop.set()
        self.thread.join(RECEIVER_STOP_TIMEOUT)
        if self.thread.is_alive():
            logger.error("the receiver did not stop in %.0f s", RECEIVER_STOP_TIMEOUT)

    def _ready(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.started.set()

    def _run(self) -> None:
        from django.db import connection

        try:
            serve_receiver(
                self._listen,
                root=self._root,
                stop=self.stop,
                ready=self._ready,
                live=self._live,
                upload_process=True,
                summarise_process=True,
            )
        except BaseException as error:  # reported by start(), which the main thread waits in
            self.error = error
            self.started.set()
            if not isinstance(error, OSError):
                logger.exception("the embedded receiver failed")
        finally:
            connection.close()


class _StoppedWhileStarting(Exception):
    """A SIGTERM came before the web server took over the signals."""


def _stop_starting(signum: int, frame: FrameType | None) -> None:
    raise _StoppedWhileStarting


class Command(BaseCommand):
    help = (
        "Serve jmirror-web with Daphne; unless JMIRROR_EMBEDDED_RECEIVER is off (it is off "
        "when REDIS_URL is set), the receiver runs in the same process on JMIRROR_LISTEN."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
        parser.add_argument(
            "--no-receiver", action="store_true", help="do not run the embedded receiver"
        )
        parser.add_argument(
            "--listen",
            action="append",
            metavar="HOST:PORT",
            help="UDP address for the embedded receiver, repeatable (default: JMIRROR_LISTEN)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Imported here: daphne.server installs Twisted's asyncio reactor when imported.
        from daphne.server import twisted_loop

        from jmirror_web.asgi import application
        from jmirror_web.server.flow_control import FlowControlServer

        if not 1 <= options["port"] <= 65535:
            raise CommandError("--port must be between 1 and 65535")
        # An installation made before the data directory was kept private is made so now.
        secure_installation()
        try:
            listen = listen_addresses(options["listen"], settings.JMIRROR_LISTEN)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if settings.STORAGE is not None:
            # The web process reads closed files from the store, the embedded receiver
            # uploads to it: one out of reach stops the start (one line, exit 2).
            self.stdout.write(reach_evidence_store("web server"))
        embedded = None
        # Until Daphne installs its own handlers (in run()), a SIGTERM ends the start
        # cleanly: the receiver, if started, still closes and hashes its files below.
        previous = signal.signal(signal.SIGTERM, _stop_starting)
        try:
            if settings.EMBEDDED_RECEIVER and not options["no_receiver"]:
                embedded = EmbeddedReceiver(listen, Path(settings.SESSIONS_DIR), twisted_loop)
                receiver = embedded.start()
                # The CN2 routers' analyzer ports are sockets of the same receiver.
                contrail = {tuple(sock.getsockname()[:2]) for sock in receiver.contrail_sockets}
                for name, addresses in (
                    ("jmirror", [each for each in receiver.addresses if each not in contrail]),
                    ("Contrail (CN2)", [each for each in receiver.addresses if each in contrail]),
                ):
                    if addresses:
                        where = ", ".join(f"{host}:{port}" for host, port in addresses)
                        self.stdout.write(f"receiving {name} on {where} (UDP)")
            bind = options["bind"]
            host = f"[{bind}]" if ":" in bind else bind
            self.stdout.write(f"serving http://{host}:{options['port']}/ (Ctrl-C stops it)")
            self.stdout.flush()
            start_periodic_checkpoints()  # every JMIRROR_AUDIT_CHECKPOINT_MINUTES
            endpoint = f"tcp:port={options['port']}:interface={bind.replace(':', chr(92) + ':')}"
            # Daphne's Server, but a streamed response waits for a slow client rather
            # than piling up in this process (jmirror_web.server.flow_control).
            FlowControlServer(
                application=application,
                endpoints=[endpoint],
                signal_handlers=True,
                websocket_max_message_size=WEBSOCKET_MAX_MESSAGE,
                websocket_max_frame_size=WEBSOCKET_MAX_MESSAGE,
                **proxy_options(settings.BEHIND_PROXY),
            ).run()
        except _StoppedWhileStarting:
            self.stdout.write("stopped while starting")
        finally:
            signal.signal(signal.SIGTERM, previous)
            if embedded is not None:
                self.stdout.write("stopping the receiver: closing and hashing its files")
                embedded.close()
