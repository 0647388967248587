"""With real processes (as tests/receiver/test_receive_faults.py, whose sites and
receiver processes these reuse; SQLite pass only): ``manage.py receive`` with an evidence
store refuses a bad or unreachable one at start with one line, and a receiver killed
with -9 in the middle of an upload finishes it after its restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jmirror_web.object_store import ObjectStore, StoredObject
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey
from tests.receiver import test_receive_faults as faults
from tests.receiver.test_receive_faults import (
    LIID,
    MID,
    REPO,
    ROUTER,
    ReceiverProcess,
    Site,
    wait_until,
)
from tests.receiver.test_store import die

# The fault tests' fixtures: a migrated SQLite database with the records, a site per
# test, receiver processes stopped by pid whatever happens.
migrated = faults.migrated
site = faults.site
start_receiver = faults.start_receiver

# Seconds of upload here, long enough to be killed in the middle of.
BIG_FILE_BYTES = 200 * 2**20


def storage_environment(store: ObjectStore, node: str = "node-a") -> dict[str, str]:
    assert store.config.endpoint is not None
    return {
        "JMIRROR_STORAGE_URL": f"s3://{store.bucket}",
        "JMIRROR_S3_ENDPOINT": store.config.endpoint,
        "JMIRROR_NODE_NAME": node,
    }


def start_failure(site: Site, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "receive", "--listen", f"{ROUTER}:0"],
        cwd=REPO,
        env=site.environment(**environment),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (
            {"JMIRROR_STORAGE_URL": "s3://Not_A_Bucket"},
            "jmirror-web: configuration error: JMIRROR_STORAGE_URL: 'Not_A_Bucket' is not an "
            "S3 bucket name",
        ),
        (
            {"JMIRROR_STORAGE_URL": "s3://evidence", "JMIRROR_S3_ENDPOINT": "ftp://store:9000"},
            "jmirror-web: configuration error: JMIRROR_S3_ENDPOINT='ftp://store:9000' is not "
            "http(s)://HOST[:PORT] (credentials go in the AWS variables, not here)",
        ),
        (
            {"JMIRROR_STORAGE_URL": "s3://evidence", "JMIRROR_S3_ENDPOINT": "http://127.0.0.1:9"},
            "CommandError: cannot start: object store s3://evidence at http://127.0.0.1:9: "
            "reaching the bucket failed (",
        ),
    ],
    ids=["bad-url", "bad-endpoint", "unreachable"],
)
def test_a_bad_or_unreachable_store_stops_the_start_with_one_line(
    site: Site, environment: dict[str, str], expected: str
) -> None:
    result = start_failure(
        site, AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="s3cr3t-value", **environment
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected)
    assert "s3cr3t-value" not in result.stderr + result.stdout
    assert "receiving" not in result.stdout
    assert not site.rows("SELECT id FROM intercepts_receiverprocess")


def test_serve_refuses_an_unreachable_store_at_start_with_one_line(site: Site) -> None:
    (site.data_dir / "staticfiles").mkdir(parents=True, exist_ok=True)  # as collectstatic
    result = subprocess.run(
        [sys.executable, "manage.py", "serve", "--port", "8", "--no-receiver"],
        cwd=REPO,
        env=site.environment(
            AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
            AWS_SECRET_ACCESS_KEY="s3cr3t-value",
            JMIRROR_STORAGE_URL="s3://evidence/site-a",
            JMIRROR_S3_ENDPOINT="http://127.0.0.1:9",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "CommandError: cannot start: object store s3://evidence/site-a at http://127.0.0.1:9: "
        "reaching the bucket failed ("
    )
    assert "serving" not in result.stdout
    assert "s3cr3t-value" not in result.stderr + result.stdout


def test_a_receiver_killed_during_an_upload_finishes_it_after_restart(
    site: Site, start_receiver: Callable[..., ReceiverProcess], object_storage: ObjectStore
) -> None:
    # A big file a crashed receiver left open: the start's repair closes and queues it.
    crashed = PcapStore(site.sessions)
    key = SessionKey(LIID, ROUTER, MID, 0x44)
    block = bytes(range(256)) * 250
    for _ in range(BIG_FILE_BYTES // (len(block) + 16)):
        crashed.write(key, time.time_ns(), block, LINKTYPE_RAW)
    crashed.flush()
    die(crashed)
    environment = storage_environment(object_storage)

    first = start_receiver(**environment)
    wait_until(lambda: "uploading sessions/" in first.log(), 30, "the upload started")
    time.sleep(0.1)  # into the upload: 200 MiB take seconds here, and well over 0.1 s anywhere
    first.kill()
    row = site.rows(
        "SELECT id, path, sha256, uploaded_at, node, closed_at FROM intercepts_capturefile"
    )
    assert len(row) == 1
    pk, path, sha256, uploaded_at, node, closed_at = row[0]
    assert (uploaded_at, node) == (None, "node-a")
    assert closed_at is not None
    listed = object_storage.client.list_objects_v2(Bucket=object_storage.bucket)
    assert not listed.get("Contents")  # the killed upload left no object

    second = start_receiver(**environment)
    wait_until(
        lambda: (
            site.value("SELECT uploaded_at FROM intercepts_capturefile WHERE id = ?", pk)
            is not None
        ),
        60,
        "the upload finished after the restart",
    )
    status, _ = second.terminate()
    assert status == 0
    bucket, object_key, version = site.rows(
        "SELECT object_bucket, object_key, object_version FROM intercepts_capturefile"
    )[0]
    assert object_key == f"node-a/{path}"
    stored = StoredObject(bucket, object_key, version)
    assert object_storage.facts(stored).size > BIG_FILE_BYTES // 2
    assert object_storage.sha256(stored) == sha256
    assert re.search(r"uploading sessions/\S+ \(\d+ bytes, attempt 1\)", second.log())
    audited: Any = site.value(
        "SELECT COUNT(*) FROM audit_auditevent WHERE action = 'capture_file.uploaded'"
    )
    assert audited == 1


def _upload_children(parent: int) -> list[int]:
    """The ``manage.py upload`` children of process ``parent``."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"upload" in command:
                found.append(int(child))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped by its parent


def test_the_upload_queue_runs_as_the_receivers_child_restarted_and_dying_with_it(
    start_receiver: Callable[..., ReceiverProcess], object_storage: ObjectStore
) -> None:
    """Uploads run in a process of their own (not a thread of the receive loop): a child
    that dies is started again, and a receiver killed with -9 leaves no uploader."""
    receiver = start_receiver(**storage_environment(object_storage))
    pid = receiver.process.pid
    wait_until(lambda: len(_upload_children(pid)) == 1, 30, "the upload process started")
    [first] = _upload_children(pid)
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: [child for child in _upload_children(pid) if child != first and not _gone(child)],
        30,
        "the upload process started again",
    )
    [second] = [child for child in _upload_children(pid) if child != first]
    assert "upload queue: process" in receiver.log()
    assert re.search(r"exited with -9; starting it again", receiver.log())
    receiver.kill()
    wait_until(lambda: _gone(second), 10, "the upload process died with its receiver")
