"""Reads the JSON block a console page hands to its JavaScript."""

from __future__ import annotations

import json
import re
from typing import Any

from django.http import HttpResponse

_BLOCK = re.compile(r'<script id="live-config" type="application/json">(.*?)</script>', re.S)


def live_config(response: HttpResponse) -> Any:
    match = _BLOCK.search(response.content.decode())
    assert match, "the page has no live-config block"
    return json.loads(match.group(1))
