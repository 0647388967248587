"""The data directory is its owner's alone: directories 0700, files 0600.

It holds the SQLite database (API tokens, session keys, password hashes), the generated
secret key, and the session folders, whose names carry LIIDs, with the pcaps of the
intercepts. Other local users must read none of it. Three layers keep it so:

- :func:`restrict_umask`, called by the settings before anything is created: every file
  and directory a jmirror-web process makes (SQLite's database, its WAL, SHM and journal
  files, which SQLite creates itself, the collected static files, an exported file) is
  created without group or other bits;
- explicit modes where our own code creates files and directories (the pcap store, the
  secret key), so they hold wherever that code runs;
- :func:`secure_data_directory` at the start of ``serve`` and ``receive``: an installation
  made before this (0644 files in a 0755 directory) is tightened, with one log line.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

PRIVATE_UMASK: Final = 0o077
DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600
# The start-up walk looks at this many entries at most: about a second here when nothing
# is to fix (0.57 s per 100,000), so a data directory of a million pcaps (a year of hourly
# files of a hundred sessions) does not hold up the receiver's start. It goes breadth
# first, so the data directory's own files and every session folder come before the pcaps
# inside them; a pcap it does not reach is still behind its 0700 folder. The log line says
# when it stopped.
WALK_LIMIT: Final = 200_000
_TOO_OPEN: Final = 0o077
# A file or directory reached by name is opened with these, so a name swapped for a
# symbolic link (or a FIFO, which would block) between the look and the change is refused.
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def restrict_umask() -> None:
    """New files 0600 and directories 0700 in this process (and the processes it starts)."""
    os.umask(PRIVATE_UMASK)


@dataclass
class Tightened:
    """What :func:`tighten` did."""

    checked: int = 0
    fixed: int = 0
    failed: int = 0
    complete: bool = True


def tighten(
    root: Path,
    *,
    skip: Collection[Path] = (),
    extra_files: Collection[Path] = (),
    limit: int = WALK_LIMIT,
) -> Tightened:
    """Take group and other permissions off ``root``, every directory and regular file
    under it (not under ``skip``) and ``extra_files``. Symbolic links are neither followed
    nor changed; other kinds of file (sockets, FIFOs) are left alone. At most ``limit``
    entries are looked at; ``complete`` says whether that was all of them."""
    result = Tightened()
    skipped = {str(path) for path in skip}
    for path in extra_files:
        _tighten_one(str(path), result)
    if not _tighten_one(str(root), result, directory=True):
        return result
    pending = deque([str(root)])
    while pending:
        directory = pending.popleft()
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            logger.debug("cannot list %s: %s", directory, error)
            result.failed += 1
            continue
        for entry in entries:
            if result.checked >= limit:
                result.complete = False
                return result
            if entry.path in skipped:
                continue
            try:
                is_directory = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if _tighten_one(entry.path, result, directory=is_directory) and is_directory:
                pending.append(entry.path)
    return result


def _tighten_one(path: str, result: Tightened, *, directory: bool = False) -> bool:
    """Tighten one directory or regular file; True when it is one (and still there)."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        result.checked += 1
        result.failed += 1
        return False
    result.checked += 1
    wanted = stat.S_ISDIR if directory else stat.S_ISREG
    if not wanted(found.st_mode):
        return False
    if not found.st_mode & _TOO_OPEN:
        return True
    try:
        descriptor = os.open(path, _OPEN_FLAGS | (os.O_DIRECTORY if directory else 0))
    except OSError as error:
        logger.debug("cannot open %s to change its mode: %s", path, error)
        result.failed += 1
        return False
    try:
        now = os.fstat(descriptor)
        if (now.st_dev, now.st_ino) != (found.st_dev, found.st_ino):
            return False  # replaced meanwhile: the next start looks again
        os.fchmod(descriptor, stat.S_IMODE(now.st_mode) & ~_TOO_OPEN)
    except OSError as error:
        logger.debug("cannot change the mode of %s: %s", path, error)
        result.failed += 1
        return True
    finally:
        os.close(descriptor)
    result.fixed += 1
    return True


def sqlite_files(database: Path) -> list[Path]:
    """A SQLite database file and the files SQLite keeps beside it."""
    return [database] + [database.with_name(database.name + end) for end in _SQLITE_SIDE_FILES]


_SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def secure_data_directory(
    data_dir: Path, *, skip: Collection[Path] = (), database: Path | None = None
) -> Tightened:
    """The start-up repair of an installation made before the modes were kept: one log
    line when anything was too open, could not be changed, or was not reached."""
    extra = sqlite_files(database) if database is not None else []
    result = tighten(data_dir, skip=skip, extra_files=extra)
    if result.fixed or result.failed or not result.complete:
        logger.warning(
            "file modes: %d files and directories in %s were open to other local users and "
            "are now for the owner only (%d could not be changed, %d looked at%s)",
            result.fixed,
            data_dir,
            result.failed,
            result.checked,
            "" if result.complete else f"; stopped at the limit of {WALK_LIMIT:,}",
        )
    return result


def secure_installation() -> Tightened:
    """:func:`secure_data_directory` for this installation's settings: the data directory
    and, on SQLite, the database wherever it is. The collected static files are left as
    they are: every visitor downloads them, and the 0700 data directory keeps other local
    users out of them anyway."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    sqlite = str(database["ENGINE"]).endswith("sqlite3")
    return secure_data_directory(
        Path(settings.DATA_DIR),
        skip=[Path(settings.STATIC_ROOT)],
        database=Path(database["NAME"]) if sqlite else None,
    )
