"""Who acts when no one is signed in: the names the audit log gives to management
commands run from a shell."""

from __future__ import annotations

import getpass


def shell_actor() -> str:
    """Who runs the command, for the audit log: the operating-system user, marked as
    such so that it cannot be mistaken for an account of the web application."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary container uid
        name = "unknown"
    return f"os:{name}"
