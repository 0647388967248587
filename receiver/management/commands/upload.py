"""``manage.py upload``: this node's upload queue (:mod:`receiver.uploads`) in a process
of its own.

A receiver with an evidence store starts it as its child (:class:`receiver.uploads.
UploadProcess`): uploading 256 MiB files from a thread of the receiver measured stalls of
the receive loop of 77-131 ms (hashing and copying in the interpreter beside the loop),
longer than the socket buffer lasts at 150,000 datagrams/s. In its own process it has its
own interpreter lock, and the receiver starts it in the idle scheduling class
(:func:`receiver.child_process.run_in_background`; ``--idle`` does the same for a run by
hand), so that on a busy host the capture comes first and the queue takes the rest.
One upload process per node and host works the queue (a lock file in the data
directory, :func:`receiver.uploads.sole_worker`); those of a host's other receivers
stand by. It can also be run alone, for example to drain a
node's queue while its receiver is stopped.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.intercepts import evidence_store
from jmirror_web.object_store import StorageError
from receiver.child_process import add_priority_options, take_priority
from receiver.uploads import Uploader, queue_lock_path, sole_worker


class Command(BaseCommand):
    help = "Upload this node's closed capture files to the evidence store until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--receiver-process",
            type=int,
            default=None,
            metavar="ID",
            help="the receiver run (ReceiverProcess id) whose row shows the queue's backlog",
        )
        add_priority_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        store = evidence_store.store()
        if store is None:
            raise CommandError("no evidence store: JMIRROR_STORAGE_URL is empty")
        try:
            store.check()
        except StorageError as error:
            raise CommandError(str(error)) from None
        take_priority(options)
        stop = threading.Event()

        def stopping(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        uploader = Uploader(store, process_id=options["receiver_process"])
        with sole_worker(queue_lock_path(uploader.node), stop, uploader.node) as holding:
            if holding:
                uploader.run(stop)
