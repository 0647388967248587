"""Several capture hosts, one web tier (issue 18's multi-host acceptance), as processes.

Two ``manage.py receive`` with their own node names (``capture-a``, ``capture-b``) and data
directories, one PostgreSQL database of their own, one Redis, the S3 server (SeaweedFS:
``tests/s3_server.py``, a fresh Object Lock bucket) and one web process
(``manage.py serve --no-receiver``) whose data directory holds no capture file. The
routers' traffic is ``manage.py simulate``'s, and what was sent is what
``simulate --write`` writes for the same options.

- Sessions from both receivers are listed (the API) and live (the web process's websocket
  relays both receivers' summaries through Redis).
- Once their files close (``JMIRROR_SESSION_QUIET_SECONDS=2``) and are uploaded, every
  export downloaded from the web process holds exactly the packets that were sent, in
  order, and its manifest's hashes are those of the objects in the store.
- Then both receivers stop and their data directories are deleted: every closed file is
  still exported byte for byte as before, and ``verify_files --rehash`` verifies each.

Needs PostgreSQL (the receivers and the web process share a database, which SQLite
cannot do across hosts): it runs in the PostgreSQL pass of ``./test`` (``-m django_db``)
and skips, saying why, on SQLite. Its database is made on the test run's PostgreSQL
server and dropped afterwards; every process is stopped by its own process group id, and
every wait is bounded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import boto3
import psycopg
import pytest
from django.db import connection
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from receiver.pcap_reader import iter_frames
from tests.e2e_helpers import REPO, free_port

pytestmark = pytest.mark.django_db

NODES: Final = {"capture-a": 0x300, "capture-b": 0x301}  # node -> the mid its router sends
COUNT: Final = 60  # datagrams per node
RATE: Final = 30  # per second: two seconds of traffic, so that the live view sees it flow
QUIET: Final = 2  # JMIRROR_SESSION_QUIET_SECONDS
WAIT: Final = 90.0  # the longest any one wait may take
JMIRROR_HEADER: Final = 8  # what the receiver strips off a datagram before storing it

RECORDS: Final = f"""
import json
from datetime import timedelta
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case, Intercept, Router
from tests.factories import assign, make_user
now = timezone.now()
Router.objects.create(name="loopback", address="127.0.0.1", kind=Router.Kind.MX, port=30030)
case = Case.objects.create(
    reference="CASE-HOSTS", title="Several hosts", agency="Test agency",
    valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=30),
    status=Case.Status.ACTIVE,
)
for liid, mid in (("LIID-A", {NODES["capture-a"]}), ("LIID-B", {NODES["capture-b"]})):
    Intercept.objects.create(
        case=case, liid=liid, intercept_id=mid, valid_from=case.valid_from,
        valid_until=case.valid_until,
    )
user = make_user(Role.ANALYST)
assign(user, case)
client = Client()
client.force_login(user)
print(json.dumps({{
    "case": case.pk,
    "token": Token.objects.create(user=user).key,
    "cookie": client.cookies["sessionid"].value,
}}))
"""


# -- the shared services ------------------------------------------------------------------


def _server_url() -> str:
    """The test run's PostgreSQL server, as a URL without a database name."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: several hosts share one database (runs in ./test's PostgreSQL pass)"
        )
    params = connection.settings_dict
    user = params["USER"] or "postgres"
    password = f":{params['PASSWORD']}" if params["PASSWORD"] else ""
    return f"postgres://{user}{password}@{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}"


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database of its own on the test run's PostgreSQL server; its URL."""
    server = _server_url()
    name = f"jmirror_hosts_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as admin:
            # FORCE: a process killed mid-query may leave a backend behind for a moment.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        pytest.skip("needs Redis: the PostgreSQL pass of ./test sets REDIS_URL when it answers")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        pytest.skip(f"no Redis at {url}: {error}")
    return url


# -- the processes ----------------------------------------------------------------------


class Process:
    """A management command in its own process group, its output in a file."""

    def __init__(self, name: str, arguments: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("w") as output:
            self.popen = subprocess.Popen(
                [sys.executable, "manage.py", *arguments],
                cwd=REPO,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {text!r} in its output:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM to its process group (a receiver closes and hashes its files), then
        SIGKILL if it is still there after 30 s."""
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)


def wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {WAIT:.0f} s: {what}")


class Deployment:
    """The shared services' settings and the processes started on them."""

    def __init__(self, root: Path, database: str, redis_url: str, s3_server: Any) -> None:
        self.root = root
        self.database = database
        self.s3_server = s3_server
        self.bucket = s3_server.make_bucket(object_lock=True)
        self.common = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "JMIRROR_", "DJANGO_"))
            and key not in ("DATABASE_URL", "REDIS_URL")
        }
        self.common.update(
            DATABASE_URL=database,
            REDIS_URL=redis_url,
            # One site: one secret key, so the web process accepts the test's session.
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            JMIRROR_STORAGE_URL=f"s3://{self.bucket}",
            JMIRROR_S3_ENDPOINT=s3_server.endpoint,
            JMIRROR_SESSION_QUIET_SECONDS=str(QUIET),
            JMIRROR_LOCAL_KEEP_HOURS="24",
            JMIRROR_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            **s3_server.environment(),
        )
        self.processes: list[Process] = []

    def environment(self, node: str) -> dict[str, str]:
        return {
            **self.common,
            "JMIRROR_NODE_NAME": node,
            "JMIRROR_DATA_DIR": str(self.data_dir(node)),
        }

    def data_dir(self, node: str) -> Path:
        return self.root / node

    def manage(self, node: str, *arguments: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=REPO,
            env=self.environment(node),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (
            f"manage.py {' '.join(arguments)[:100]} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def start(self, node: str, *arguments: str) -> Process:
        process = Process(node, list(arguments), self.environment(node), self.root / f"{node}.log")
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database, autocommit=True, connect_timeout=5) as db:
            return db.execute(sql, params).fetchall()


@pytest.fixture
def deployment(
    tmp_path: Path, database: str, redis_url: str, s3_server: Any
) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path, database, redis_url, s3_server)
    try:
        yield deployed
    finally:
        deployed.stop_all()


# -- the web process, as a client sees it ------------------------------------------------


class Web:
    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def get(self, path: str) -> tuple[bytes, dict[str, str]]:
        request = urllib.request.Request(  # noqa: S310  (http to the test's own server)
            f"{self.base}{path}", headers={"Authorization": f"Token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:  # noqa: S310
            return response.read(), dict(response.headers)

    def json(self, path: str) -> Any:
        return json.loads(self.get(path)[0])

    def export(self, path: str) -> tuple[bytes, dict[str, Any]]:
        """A download and its export's manifest."""
        data, headers = self.get(path)
        return data, self.json(f"/api/exports/{headers['X-Export-Id']}")


def sent_payloads(deployment: Deployment, node: str) -> list[bytes]:
    """What ``simulate --to`` sent for ``node``: the same options with ``--write``."""
    written = deployment.root / f"{node}-sent.pcap"
    deployment.manage(
        node, "simulate", "--write", str(written), "--count", str(COUNT),
        "--mid", hex(NODES[node]),
    )  # fmt: skip
    return [bytes(packet[UDP].payload) for packet in rdpcap(str(written))]


def packets_of(export: bytes) -> list[bytes]:
    return [frame for _, _, _, frame in iter_frames(io.BytesIO(export))]


def live_mids(port: int, cookie: str, case_id: int, senders: list[Sender]) -> set[int]:
    """The mids of the sessions the web process's live view of the case shows while the
    ``senders`` run: subscribe as a case page does, ack each update, collect."""
    from websockets.sync.client import connect

    seen: set[int] = set()
    with connect(
        f"ws://127.0.0.1:{port}/ws/live/",
        origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={cookie}"},
        open_timeout=30,
    ) as websocket:
        websocket.send(json.dumps({"action": "subscribe", "stream": "case", "id": case_id}))
        assert json.loads(websocket.recv(timeout=30))["type"] == "subscribed"
        # The receivers pick the watch up within about half a second: send only now.
        time.sleep(1.5)
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + WAIT
        while len(seen) < len(NODES) and time.monotonic() < deadline:
            try:
                message = json.loads(websocket.recv(timeout=5))
            except TimeoutError:
                continue
            if message.get("type") != "updates":
                continue
            websocket.send(json.dumps({"action": "ack", "seq": message["seq"]}))
            seen |= {item["session"]["mid"] for item in message["items"] if "session" in item}
    return seen


class Sender:
    """``simulate --to`` for one node, started when the live view is listening."""

    def __init__(self, deployment: Deployment, node: str, port: int) -> None:
        self.arguments = [
            sys.executable, "manage.py", "simulate", "--to", f"127.0.0.1:{port}",
            "--count", str(COUNT), "--rate", str(RATE), "--mid", hex(NODES[node]),
        ]  # fmt: skip
        self.env = deployment.environment(node)
        self.popen: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.popen = subprocess.Popen(
            self.arguments, cwd=REPO, env=self.env, stdout=subprocess.PIPE, text=True
        )

    def finish(self) -> str:
        assert self.popen is not None, "never started"
        out, _ = self.popen.communicate(timeout=WAIT)
        assert self.popen.returncode == 0, out
        return out


# -- the test -----------------------------------------------------------------------------


def test_two_capture_hosts_and_a_web_tier_that_reads_the_store(deployment: Deployment) -> None:
    web_node = "web-1"
    deployment.manage(web_node, "migrate", "--verbosity", "0")
    records = json.loads(deployment.manage(web_node, "shell", "--no-imports", "-c", RECORDS))

    ports = {node: free_port(socket.SOCK_DGRAM) for node in NODES}
    receivers = {
        node: deployment.start(node, "receive", "--listen", f"127.0.0.1:{ports[node]}")
        for node in NODES
    }
    http_port = free_port(socket.SOCK_STREAM)
    server = deployment.start(web_node, "serve", "--no-receiver", "--port", str(http_port))
    for node, receiver in receivers.items():
        receiver.wait_for(f"receiving jmirror on 127.0.0.1:{ports[node]}")
    server.wait_for(f"serving http://127.0.0.1:{http_port}/")
    web = Web(http_port, records["token"])

    # Both receivers' sessions are live on the web process while the traffic flows.
    senders = [Sender(deployment, node, ports[node]) for node in NODES]
    seen = live_mids(http_port, records["cookie"], records["case"], senders)
    for sender in senders:
        sender.finish()
    assert seen == set(NODES.values())

    # Both are listed, with every packet counted.
    def listed() -> dict[int, dict[str, Any]]:
        page = web.json(f"/api/sessions/?case={records['case']}")
        return {row["mid"]: row for row in page["results"]}

    wait_until(
        "both sessions listed with every packet",
        lambda: (
            {mid: row["packets"] for mid, row in listed().items()}
            == dict.fromkeys(NODES.values(), COUNT)
        ),
    )
    sessions = {node: listed()[mid]["id"] for node, mid in NODES.items()}

    # Their files close once the sessions are quiet, and go up to the store.
    def files() -> list[tuple[Any, ...]]:
        return deployment.rows(
            "SELECT f.id, s.mid, f.node, f.closed, f.sha256, f.packets, f.object_bucket, "
            "f.object_key, f.object_version, f.uploaded_at FROM intercepts_capturefile f "
            "JOIN intercepts_session s ON s.id = f.session_id ORDER BY f.id"
        )

    wait_until(
        "every file closed, hashed and uploaded",
        lambda: (
            bool(rows := files())
            and all(row[3] and len(row[4]) == 64 and row[9] is not None for row in rows)
            and sum(row[5] for row in rows) == COUNT * len(NODES)
        ),
    )
    captured = files()
    assert {(row[1], row[2]) for row in captured} == {(mid, node) for node, mid in NODES.items()}
    s3 = deployment.s3_server.client(boto3)

    def object_sha256(row: tuple[Any, ...]) -> str:
        answer = s3.get_object(Bucket=row[6], Key=row[7], VersionId=row[8])
        return hashlib.sha256(answer["Body"].read()).hexdigest()

    by_id = {row[0]: row for row in captured}
    assert all(object_sha256(row) == row[4] for row in captured)

    # Every export from the web process holds what was sent, and names the objects' hashes.
    sent = {
        node: [each[JMIRROR_HEADER:] for each in sent_payloads(deployment, node)] for node in NODES
    }
    first: dict[str, bytes] = {}
    for node, session_id in sessions.items():
        data, manifest = web.export(f"/api/sessions/{session_id}/pcap?format=pcap")
        assert packets_of(data) == sent[node]
        assert manifest["state"] == "complete"
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
        (source,) = manifest["sessions"]
        assert source["not_included"] == []
        assert source["files"]
        for file in source["files"]:
            assert file["closed"]
            assert file["sha256"] == by_id[file["id"]][4] == object_sha256(by_id[file["id"]])
        first[node] = data
    case_data, case_manifest = web.export(f"/api/cases/{records['case']}/pcap?format=pcapng")
    assert sorted(packets_of(case_data)) == sorted(sent["capture-a"] + sent["capture-b"])
    assert sorted(f["id"] for s in case_manifest["sessions"] for f in s["files"]) == sorted(by_id)
    # The web process read none of it from a disk of its own.
    assert not (deployment.data_dir(web_node) / "sessions").exists()

    # Both capture hosts gone with their disks: every closed file is still served...
    for receiver in receivers.values():
        receiver.stop()
    for node in NODES:
        shutil.rmtree(deployment.data_dir(node))
    for node, session_id in sessions.items():
        data, manifest = web.export(f"/api/sessions/{session_id}/pcap?format=pcap")
        assert data == first[node]
        assert manifest["state"] == "complete"
    # ... and verifies, read back from the store.
    report = deployment.manage(web_node, "verify_files", "--rehash")
    assert f"{len(captured)} files checked, 0 altered or missing" in report
    assert report.count("ok ") == len(captured)
    assert server.popen.poll() is None, server.output()
