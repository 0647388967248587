"""A ``manage.py`` command run as the receiver's child process: started with the
receiver, started again if it exits, stopped with it, killed with it.

The receiver's background work that would stall its receive loop if run in a thread of
it (the interpreter lock: hashing and uploading files, parsing packets for their names)
runs so, in a process of its own at a lower CPU priority: the upload queue
(:class:`receiver.uploads.UploadProcess`) and the summariser of conversations and names
(``manage.py summarise``).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from django.conf import settings

logger = logging.getLogger(__name__)

# A child that exited is started again after this long.
RESTART_WAIT: Final = 5.0
# Linux's prctl(PR_SET_PDEATHSIG): the child is killed with its parent (a receiver killed
# with -9 leaves no child behind; the children keep their progress in the database, so
# the next start carries on where they were).
_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: stopped by the parent's shutdown only
        pass


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
            preexec_fn=_die_with_parent,
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
    """``manage.py summarise`` at nice 10 (see that command)."""
    return ChildCommand("summaries", ["summarise", "--nice", "10"])
