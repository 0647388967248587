"""Logging filters named by settings.LOGGING."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied


class ExpectedRefusalsOnOneLine(logging.Filter):
    """A 403 from ``PermissionDenied`` is the product working (a user without the role
    asked for a role-gated page): Django logs it with the exception's traceback, which
    buries real errors. Keep it as its one line ("Forbidden (Permission denied): /path")
    and drop the traceback; anything else passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied):
            record.exc_info = None
            record.exc_text = None
        return True
