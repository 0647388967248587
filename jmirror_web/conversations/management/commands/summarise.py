"""``manage.py summarise``: add the stored packets to their sessions' conversations and
names (:mod:`jmirror_web.conversations.summaries`) every few seconds until stopped.

The receiver runs it as its child process (:class:`receiver.child_process.ChildCommand`),
in the idle scheduling class (``--idle``): the capture comes first, and a summariser that
falls behind only shows the newest packets' conversations later. ``--once`` summarises what is
stored now and exits (after an import, or to catch up while the receiver is stopped).
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Final

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, connection

from jmirror_web.conversations.summaries import summarise
from receiver.child_process import add_priority_options, take_priority

INTERVAL_SECONDS: Final = 5.0
# Work per pass before the stop flag is looked at again.
PASS_SECONDS: Final = 2.0


class Command(BaseCommand):
    help = "Summarise stored packets into conversations and names, every few seconds."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="summarise what is stored now, then exit"
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=INTERVAL_SECONDS,
            help=f"seconds between passes when caught up (default {INTERVAL_SECONDS:g})",
        )
        add_priority_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        take_priority(options)
        if options["once"]:
            total = 0
            finished = False
            while not finished:
                done, finished = summarise(PASS_SECONDS)
                total += done
            self.stdout.write(f"summarised {total} packets")
            return
        stop = threading.Event()

        def stopping(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        interval = max(0.1, options["interval"])
        while not stop.is_set():
            try:
                _done, finished = summarise(PASS_SECONDS)
            except DatabaseError as error:
                # The database is away: tried again at the next pass, nothing counted.
                self.stderr.write(f"summaries: database error, trying again: {error}")
                connection.close()
                finished = True
            if finished:
                stop.wait(interval)
