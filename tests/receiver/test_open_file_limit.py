"""With a real process: a ``manage.py receive`` whose open-file
limit is far below the number of sessions it receives stores every datagram, counts
exactly what it stored, and says that its open-file bound bit.

Uses the fault tests' world (tests/receiver/test_receive_faults.py).
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time

from receiver.store import LINKTYPE_RAW
from tests.receiver.test_receive_faults import (  # noqa: F401 (fixtures used by name)
    REPO,
    ROUTER,
    SETTLE,
    START_TIMEOUT,
    Site,
    from_router,
    jmirror,
    migrated,
    numbered_ipv4,
    of_session,
    packets_in,
    send_all,
    site,
    stop_process,
)

OPEN_FILE_LIMIT = 256
SESSIONS = 600  # more than the limit: each session's file cannot stay open
ROUNDS = 4
RATE = 4000  # datagrams/s


def _low_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, OPEN_FILE_LIMIT))


def test_more_sessions_than_the_open_file_limit_lose_nothing_and_count_exactly(
    site: Site,  # noqa: F811
) -> None:
    out_path, err_path = site.directory / "receive.out", site.directory / "receive.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "receive", "--listen", f"{ROUTER}:0"],
            cwd=REPO,
            env=site.environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=_low_open_file_limit,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        port = None
        while port is None:
            found = re.search(r"receiving jmirror on 127\.0\.0\.1:(\d+)", out_path.read_text())
            if found:
                port = int(found[1])
                break
            assert process.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        # Round robin over the sessions: every session's next datagram finds its file
        # closed by the bound since.
        sent = [
            jmirror(numbered_ipv4(round_ * SESSIONS + sid), sid=sid)
            for round_ in range(ROUNDS)
            for sid in range(1, SESSIONS + 1)
        ]
        assert send_all(port, from_router(sent), RATE) == len(sent)
        time.sleep(SETTLE)
        process.terminate()
        assert process.wait(30) == 0, err_path.read_text()
    finally:
        stop_process(process)
    log, output = err_path.read_text(), out_path.read_text()
    assert f"open-file limit: {OPEN_FILE_LIMIT}" in log
    assert "open-file bound of" in log
    closed_early = re.search(r"(\d+) closed early by the open-file bound", output)
    assert closed_early is not None, output
    assert int(closed_early[1]) > 0
    assert "EMFILE" not in log
    assert "cannot open a pcap file" not in log
    assert not site.parts()
    # Every datagram sent is in its session's files, in order; the rows count just that.
    on_disk = {}
    for sid in range(1, SESSIONS + 1):
        assert packets_in(site.directory_of(sid)) == {LINKTYPE_RAW: of_session(sent, sid)}, sid
        on_disk[sid] = (ROUNDS, ROUNDS)
    assert site.session_counts() == on_disk
    # Every file is closed, hashed and recorded, the ones the bound closed included.
    assert site.rows(
        "SELECT COUNT(*), SUM(packets) FROM intercepts_capturefile WHERE closed AND sha256 != ''"
    ) == [(len(site.pcaps()), len(sent))]
    assert len(site.pcaps()) > SESSIONS  # sessions went on in new files
