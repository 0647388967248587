"""The data directory, the database and the pcaps are the owner's alone.

The manage.py processes run with the umask a shell usually gives (022), so what is
checked is what jmirror-web does, not what the test runner's umask would have done.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from jmirror_web.file_modes import tighten
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey
from tests.receiver.test_receive_command import free_tcp_port
from tests.receiver.test_receive_faults import (  # noqa: F401 (fixtures used by name)
    LIID,
    MID,
    RAW_SID,
    RECORDS,
    ROUTER,
    START_TIMEOUT,
    Site,
    from_router,
    migrated,
    send_all,
    stop_process,
    two_sessions,
    wait_until,
)

REPO: Final = Path(__file__).resolve().parents[1]
SHELL_UMASK: Final = 0o022


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    """Every directory and file under ``root`` (itself included) and its mode."""
    found = {".": mode_of(root)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = mode_of(path)
    return found


def too_open(modes: dict[str, int]) -> dict[str, str]:
    return {name: oct(mode) for name, mode in modes.items() if mode & 0o077}


class Process:
    """A manage.py command running with a shell's umask, its output in files."""

    def __init__(self, site: Site, *arguments: str) -> None:
        self.out = site.directory / f"{arguments[0]}-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", *arguments],
                cwd=REPO,
                env=site.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                umask=SHELL_UMASK,
            )

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def receiving_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"receiving jmirror on 127\.0\.0\.1:(\d+)", self.out.read_text())
            if found:
                return int(found[1])
            assert self.process.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"the receiver did not start:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
        assert self.process.returncode == 0, self.log()


def run(site: Site, *arguments: str) -> None:
    process = Process(site, *arguments)
    assert process.process.wait(120) == 0, process.log()


@pytest.fixture
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="jmirror-modes-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_fresh_installation_and_what_the_receiver_stores_are_the_owners_alone(
    scratch: Path,
) -> None:
    site = Site(scratch)
    # The embedded default: the SQLite database inside the data directory.
    site.database = site.data_dir / "jmirror.sqlite3"
    environment = site.environment

    def default_database(**extra: str) -> dict[str, str]:
        env = environment(**extra)
        del env["DATABASE_URL"]
        return env

    site.environment = default_database  # type: ignore[method-assign]
    run(site, "migrate", "--verbosity", "0")
    run(site, "shell", "--command", RECORDS)
    assert mode_of(site.data_dir) == 0o700
    assert mode_of(site.database) == 0o600
    assert mode_of(site.data_dir / "secret_key") == 0o600

    receiver = Process(site, "receive", "--listen", f"{ROUTER}:0")
    try:
        port = receiver.receiving_port()
        send_all(port, from_router(two_sessions(400)), rate=2000)
        wait_until(lambda: len(list(site.sessions.rglob("*.pcap.part"))) == 2, 10, "open files")
        while_running = modes_under(site.data_dir)
        # The database is in WAL mode: its side files exist while the receiver runs.
        assert {"jmirror.sqlite3-wal", "jmirror.sqlite3-shm"} <= set(while_running)
    finally:
        receiver.stop()
    assert too_open(while_running) == {}
    after = modes_under(site.data_dir)
    assert len([name for name in after if name.endswith(".pcap")]) == 2
    assert too_open(after) == {}
    assert "file modes:" not in receiver.log()  # nothing was too open: nothing to say


def start_command(command: str) -> tuple[str, ...]:
    """``receive``, or ``serve`` with its embedded receiver (the ./run default)."""
    if command == "receive":
        return ("receive", "--listen", f"{ROUTER}:0")
    return ("serve", "--port", str(free_tcp_port()), "--listen", f"{ROUTER}:0")


@pytest.mark.parametrize("command", ["receive", "serve"])
def test_an_existing_installation_is_tightened_at_start_with_one_log_line(
    migrated: Path,  # noqa: F811
    scratch: Path,
    command: str,
) -> None:
    site = Site(scratch)
    shutil.copyfile(migrated, site.database)
    # An installation made before: a session folder with a pcap, all of it readable.
    store = PcapStore(site.sessions)
    store.write(SessionKey(LIID, ROUTER, MID, RAW_SID), time.time_ns(), b"E" * 28, LINKTYPE_RAW)
    (pcap,) = [store.root / closed.path for closed in store.close_all()]
    static = site.data_dir / "staticfiles"
    static.mkdir()
    (static / "site.css").write_text("body {}")
    outside = scratch / "elsewhere.txt"
    outside.write_text("not ours to change")
    (site.data_dir / "link").symlink_to(outside)
    opened = [site.data_dir, site.sessions, pcap.parent, pcap, site.database]
    for path in opened:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for path in (static, static / "site.css", outside):
        path.chmod(0o755 if path.is_dir() else 0o644)

    receiver = Process(site, *start_command(command))
    try:
        receiver.receiving_port()
    finally:
        receiver.stop()

    lines = [line for line in receiver.log().splitlines() if "file modes:" in line]
    assert len(lines) == 1, receiver.log()
    assert f"file modes: {len(opened)} files and directories in {site.data_dir}" in lines[0]
    assert "(0 could not be changed" in lines[0]
    assert {str(path): oct(mode_of(path)) for path in opened} == {
        str(path): oct(0o700 if path.is_dir() else 0o600) for path in opened
    }
    # Public files behind the now private directory, and what a link points to: left alone.
    assert (mode_of(static), mode_of(static / "site.css"), mode_of(outside)) == (
        0o755,
        0o644,
        0o644,
    )

    # Fixed once: the next start has nothing to say.
    again = Process(site, *start_command(command))
    try:
        again.receiving_port()
    finally:
        again.stop()
    assert "file modes:" not in again.log()


def test_the_walk_is_bounded_goes_directories_first_and_says_when_it_stopped(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    folders = [root / "sessions" / f"LIID-{number}" for number in range(3)]
    for folder in folders:
        folder.mkdir(parents=True)
        for number in range(10):
            (folder / f"{number}.pcap").write_bytes(b"")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    partial = tighten(root, limit=7)

    assert (partial.complete, partial.checked, partial.fixed) == (False, 7, 7)
    # Breadth first: every session folder was reached before the pcaps inside them.
    assert [mode_of(folder) for folder in folders] == [0o700] * 3
    rest = tighten(root)
    assert (rest.complete, rest.fixed) == (True, 30 - 2)
    assert too_open(modes_under(root)) == {}


def test_a_directory_that_is_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (elsewhere / "theirs").write_bytes(b"")
    (elsewhere / "theirs").chmod(0o644)
    elsewhere.chmod(0o755)
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "sessions").symlink_to(elsewhere, target_is_directory=True)

    result: Any = tighten(root)

    assert result.fixed == 0
    assert (mode_of(elsewhere), mode_of(elsewhere / "theirs")) == (0o755, 0o644)


def test_the_store_makes_private_folders_and_files_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(SHELL_UMASK)
    try:
        store = PcapStore(tmp_path / "sessions")
        store.write(SessionKey(LIID, ROUTER, MID, 1), time.time_ns(), b"E" * 28, LINKTYPE_RAW)
        store.flush()
        (part,) = (tmp_path / "sessions").rglob("*.pcap.part")
        assert (mode_of(store.root), mode_of(part.parent), mode_of(part)) == (0o700, 0o700, 0o600)
        (closed,) = store.close_all()
        assert mode_of(store.root / closed.path) == 0o600
    finally:
        os.umask(previous)
