"""Pages of at most :data:`MAX_PAGE_SIZE` records."""

from __future__ import annotations

import re
from typing import Final

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


class RecordPagination(PageNumberPagination):
    """``?page=N&page_size=M``: 50 records a page unless asked; a larger size than 200
    is served as 200, and a size that is not a positive whole number is refused (DRF
    would silently fall back to the default)."""

    page_size = PAGE_SIZE
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get("page_size")
        if raw is None:
            return PAGE_SIZE
        if not _WHOLE_NUMBER.fullmatch(raw) or int(raw) < 1:
            raise ValidationError(
                {"page_size": [f"A page size is a whole number from 1 to {MAX_PAGE_SIZE}."]}
            )
        return min(int(raw), MAX_PAGE_SIZE)
