"""What must exist in the data directory before jmirror-web uses it: the directory itself
(private) and, in the embedded default, the generated secret key.

Made at start by :class:`jmirror_web.apps.JMirrorConfig` (``ready``, so in every process
that sets Django up: each ``manage.py`` command and the ASGI application), never when the
settings are imported: importing them reads the environment and nothing else, so a tool
that only reads them (mypy's Django plugin, a test loading them afresh) leaves nothing on
disk.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from jmirror_web.environment import ConfigurationError
from jmirror_web.file_modes import DIRECTORY_MODE

# The generated key is this long at least; a shorter file is not ours (or was cut short).
MIN_SECRET_KEY_LENGTH = 32


def make_data_directory(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"JMIRROR_DATA_DIR={str(data_dir)!r} cannot be created: {error.strerror}"
        ) from None


def generated_secret_key(key_file: Path) -> str:
    """The embedded default: one random key per data directory, made on first start, so
    sessions survive restarts without the operator having to invent a secret."""
    try:
        if not key_file.exists():
            # Written aside and linked into place: two processes starting at once (web and
            # migrate) agree on one key, and none reads a half-written file.
            draft = key_file.with_name(f".{key_file.name}.{os.getpid()}")
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(secrets.token_urlsafe(50))
            try:
                os.link(draft, key_file)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        key = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigurationError(
            f"the generated secret key {str(key_file)!r} cannot be used: {reason}; "
            "make JMIRROR_DATA_DIR writable or set DJANGO_SECRET_KEY_FILE"
        ) from None
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigurationError(
            f"the generated secret key {str(key_file)!r} holds {len(key)} characters; "
            "delete the file to have a new one made"
        )
    return key


def prepare(settings: Any) -> None:
    """Make the data directory, and the secret key when the environment gives none
    (``settings.GENERATED_SECRET_KEY_FILE``), which then becomes ``settings.SECRET_KEY``."""
    make_data_directory(Path(settings.DATA_DIR))
    key_file = settings.GENERATED_SECRET_KEY_FILE
    if key_file is not None:
        settings.SECRET_KEY = generated_secret_key(Path(key_file))
