"""The embedded default end to end, started exactly as the README says (``./run``).

A fresh data directory, the real ``./run`` (install check, migrations, static files, first
administrator, then Daphne with the receiver inside it), a signed-in browser session over
HTTP, the live websocket, jmirror datagrams on UDP: the packets show on the websocket and
in the session's pcap, and Ctrl-C closes the files.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from receiver.management.commands.simulate import build_payloads
from receiver.pcap_reader import iter_frames
from tests.e2e_helpers import ServedProduct

REPO = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "embedded demo passphrase 7"
START_TIMEOUT = 180.0  # the first ./run may still be installing


class RunProduct(ServedProduct):
    """The product as ``./run`` starts it (install check, migrations, static files, first
    administrator, then ``manage.py serve``), on free ports in its own data directory."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.env.update(
            JMIRROR_HTTP_PORT=str(self.http_port),
            JMIRROR_LISTEN=f"127.0.0.1:{self.udp_port}",
            JMIRROR_ADMIN_PASSWORD=ADMIN_PASSWORD,
        )
        self.process = subprocess.Popen(
            [str(REPO / "run")],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


@pytest.fixture
def product(tmp_path: Path) -> Iterator[RunProduct]:
    running = RunProduct(tmp_path / "data")
    try:
        yield running
    finally:
        running.stop()


RECORDS = """
from datetime import timedelta
from django.contrib.auth.models import User
from django.utils import timezone
from jmirror_web.intercepts.models import Case, CaseAssignment, Intercept, Router
now = timezone.now()
router = Router.objects.create(name="lab-mx", address="127.0.0.1")
case = Case.objects.create(reference="DEMO-1", title="Demo", status="active",
    valid_from=now - timedelta(hours=1), valid_until=now + timedelta(days=1))
Intercept.objects.create(case=case, liid="DEMO-LIID", intercept_id=0x300,
    valid_from=case.valid_from, valid_until=case.valid_until)
CaseAssignment.objects.create(case=case, user=User.objects.get(username="admin"))
print(case.pk)
"""


def sign_in(base: str) -> str:
    """Sign in through the console's form; the Cookie header of the signed-in session."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/accounts/login/", timeout=10) as page:
        form = page.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token is not None
    body = urllib.parse.urlencode(
        {"username": "admin", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token[1]}
    ).encode()
    with opener.open(f"{base}/accounts/login/", data=body, timeout=10) as done:
        assert done.status == 200
        assert "Sign out" in done.read().decode()
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in jar)


def receive_json(websocket: Any, timeout: float) -> dict[str, Any]:
    message = json.loads(websocket.recv(timeout=timeout))
    assert isinstance(message, dict)
    return message


def test_run_serves_the_live_view_and_stores_the_packets(product: RunProduct, tmp_path: Path):
    product.wait_for_line(r"created administrator 'admin'", START_TIMEOUT)
    product.wait_for_line(rf"receiving jmirror on 127\.0\.0\.1:{product.udp_port}", 60)
    product.wait_for_line(rf"serving http://127\.0\.0\.1:{product.http_port}/", 60)
    case_id = int(product.shell(RECORDS).strip())
    base = f"http://127.0.0.1:{product.http_port}"
    cookie = sign_in(base)

    payloads = build_payloads([0x300], None)
    with connect(
        f"ws://127.0.0.1:{product.http_port}/ws/live/",
        origin=base,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
        open_timeout=10,
    ) as websocket:
        websocket.send(json.dumps({"action": "subscribe", "stream": "case", "id": case_id}))
        assert receive_json(websocket, 10) == {
            "type": "subscribed",
            "stream": "case",
            "id": case_id,
        }
        # The gate reloads the records within 2 s of a change; send once it has.
        time.sleep(2.5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for payload in payloads:
                sender.sendto(payload, ("127.0.0.1", product.udp_port))
        seen = 0
        rows = []
        deadline = time.monotonic() + 15
        while seen < len(payloads) and time.monotonic() < deadline:
            message = receive_json(websocket, max(deadline - time.monotonic(), 0.1))
            if message["type"] != "updates":
                continue
            websocket.send(json.dumps({"action": "ack", "seq": message["seq"]}))
            for item in message["items"]:
                seen += item["session"]["packets"]
                rows += item["session"]["recent"]
        assert seen == len(payloads)
        assert rows
        assert {row["inner"] for row in rows} <= {"ipv4", "ipv6", "ppp"}

    assert product.stop() == 0
    parts = list((tmp_path / "data" / "sessions").rglob("*.part"))
    assert parts == []
    stored = []
    for path in sorted((tmp_path / "data" / "sessions").rglob("*.pcap")):
        with path.open("rb") as stream:
            stored += [data for _, _, _, data in iter_frames(stream)]
    assert sorted(stored) == sorted(payload[8:] for payload in payloads)
    assert "DEMO-LIID" in " ".join(p.name for p in (tmp_path / "data" / "sessions").iterdir())
    print("".join(product.output), file=sys.stderr)
