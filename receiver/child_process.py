"""A ``manage.py`` command run as the receiver's child process: started with the
receiver, started again if it exits, stopped with it, killed with it.

The receiver's background work that would stall its receive loop if run in a thread of
it (the interpreter lock: hashing and uploading files, parsing packets for their names)
runs so, in a process of its own in the idle scheduling class (:func:`run_in_background`):
the upload queue (:class:`receiver.uploads.UploadProcess`) and the summariser of
conversations and names (``manage.py summarise``).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from django.conf import settings

logger = logging.getLogger(__name__)

# A child that exited is started again after this long.
RESTART_WAIT: Final = 5.0
# Linux's prctl(PR_SET_PDEATHSIG): the child is killed with its parent (a receiver killed
# with -9 leaves no child behind; the children keep their progress in the database, so
# the next start carries on where they were).
_PR_SET_PDEATHSIG: Final = 1
# The option of ``manage.py upload`` and ``manage.py summarise`` that runs them so when
# run by hand (the receiver starts them so).
IDLE_OPTION: Final = "--idle"
# Their priority where the idle class is missing (not Linux): this much below the
# receiver's (nice).
BACKGROUND_NICENESS: Final = 10


def run_in_background(niceness: int = BACKGROUND_NICENESS) -> bool:
    """Let this process run only on CPU time no other process wants: Linux's idle
    scheduling class (SCHED_IDLE), else ``niceness`` below the current priority. Returns
    whether the idle class was taken.

    Why the idle class and not only a nice value: a nice 10 child still gets its weight's
    share of a core the receive loop wants (about a tenth), and a receive loop woken by
    datagrams may wait for the child's slice to end. Measured with the upload queue on
    the receiver's core (benchmarks/lossless_search.py, receive-uploads, 1,400 bytes):
    at nice 10 the receiver kept 0.55 of its lossless rate alone; in the idle class, but
    taken only after the child's start-up, 0.53 (the start-up overflowed the socket
    buffer, see :func:`_start_as_child`); in the idle class from the fork, all of it, up
    to the sender's limit. A SCHED_IDLE task gives way at once to any normal task that
    wakes, so its work is only ever late (a backlog the health page and the metrics
    show), never in the capture's way; on a host with a free core the scheduler runs it
    there at full speed."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return True
    except (AttributeError, OSError):  # not Linux, or refused: the nice value only
        os.nice(niceness)
        return False


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: stopped by the parent's shutdown only
        pass


def _start_as_child() -> None:
    """Between fork and exec: killed with the receiver, and in the background from its
    first instruction. Taken only once the command had parsed its options, the child's
    start-up (the interpreter, Django, boto3: over a second of CPU) ran at the receiver's
    own priority, and a receiver started at 200,000 datagrams/s of 1,400 bytes overflowed
    its socket buffer for the first two seconds (lossless_search.py, receive-uploads)."""
    _die_with_parent()
    run_in_background()


def add_priority_options(parser: argparse.ArgumentParser) -> None:
    """``--idle`` and ``--nice N`` for a command the receiver runs as its child."""
    parser.add_argument(
        IDLE_OPTION,
        action="store_true",
        help="run only on CPU time no other process wants (Linux's SCHED_IDLE; "
        f"elsewhere nice {BACKGROUND_NICENESS}); the receiver starts it so",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="N",
        help="lower this process's CPU priority by N",
    )


def take_priority(options: Mapping[str, Any]) -> None:
    """Apply :func:`add_priority_options`' options to this process."""
    if options["idle"]:
        run_in_background()
    elif options["nice"]:
        os.nice(options["nice"])


class ChildCommand:
    """``manage.py <arguments>`` as a child process called ``name`` in the logs."""

    def __init__(
        self, name: str, arguments: Sequence[str], *, manage_py: Path | None = None
    ) -> None:
        self.name = name
        self.arguments = list(arguments)
        self.manage_py = manage_py or Path(settings.BASE_DIR) / "manage.py"
        self.child: subprocess.Popen[bytes] | None = None
        self._next_start = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.child = subprocess.Popen(
            [sys.executable, str(self.manage_py), *self.arguments],
            preexec_fn=_start_as_child,
        )
        logger.info("%s: process %d started", self.name, self.child.pid)

    def keep_running(self) -> None:
        """Called about once a second: a child that exited is logged and started again
        after :data:`RESTART_WAIT`."""
        with self._lock:
            child = self.child
            if child is None or child.poll() is None:
                return
            now = time.monotonic()
            if self._next_start == 0.0:
                logger.error(
                    "%s: process %d exited with %s; starting it again in %.0f s",
                    self.name,
                    child.pid,
                    child.returncode,
                    RESTART_WAIT,
                )
                self._next_start = now + RESTART_WAIT
            elif now >= self._next_start:
                self._next_start = 0.0
                self.start()

    def stop(self, wait: float) -> None:
        """SIGTERM, then SIGKILL after ``wait`` seconds (work in flight is done again by
        the next start)."""
        with self._lock:
            child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            logger.warning("shutdown: %s: work in flight is left to the next start", self.name)
            child.kill()
            child.wait(timeout=10)


def summarise_process() -> ChildCommand:
    """``manage.py summarise`` in the background (see that command)."""
    return ChildCommand("summaries", ["summarise"])
