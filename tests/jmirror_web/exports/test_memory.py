"""Memory stays flat whatever the size: a download many times the chunk size is read
through the page with a peak far below its size."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from jmirror_web.exports.models import Export
from jmirror_web.exports.request import CHUNK_BYTES
from jmirror_web.intercepts.access import Role
from tests.factories import assign, make_user
from tests.jmirror_web.exports.evidence import stored_session

pytestmark = pytest.mark.django_db

PACKETS = 24_000
PAYLOAD = 1400  # about 34 MB stored


def test_a_large_download_never_holds_more_than_a_few_chunks(
    client: Client, data_dir: Path
) -> None:
    payloads = [bytes([0x45]) + bytes(PAYLOAD - 1)] * PACKETS
    big = stored_session(data_dir, count=PACKETS, rotate_seconds=3 * 3600, payloads=payloads)
    user = make_user(Role.ANALYST)
    assign(user, big.case)
    client.force_login(user)
    response = client.get(reverse("exports:session", args=[big.session.pk]), {"format": "pcap"})
    assert response.status_code == 200
    size = 0
    tracemalloc.start()
    try:
        for chunk in response.streaming_content:
            size += len(chunk)
            del chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 30 * 2**20
    assert Export.objects.get().size == size
    assert peak < 6 * CHUNK_BYTES, f"peak {peak} bytes for a {size}-byte download"
