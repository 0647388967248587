"""The receiver's child processes: started, started again after they exit, stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from receiver import child_process
from receiver.child_process import ChildCommand, summarise_process
from receiver.uploads import UploadProcess

REPO = Path(__file__).resolve().parents[2]


def test_a_child_that_exits_is_started_again_and_stopped_with_the_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = tmp_path / "starts"
    script = tmp_path / "manage.py"
    # Exits at once the first time, then stays up until terminated.
    script.write_text(
        "import pathlib, sys, time\n"
        f"starts = pathlib.Path({str(starts)!r})\n"
        "first = not starts.exists()\n"
        "with starts.open('a') as out:\n"
        "    out.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if not first:\n"
        "    time.sleep(60)\n"
    )
    monkeypatch.setattr(child_process, "RESTART_WAIT", 0.0)
    child = ChildCommand("test child", ["a", "b"], manage_py=script)
    child.start()
    assert child.child is not None
    child.child.wait(timeout=10)
    child.keep_running()  # noted as exited: started again after RESTART_WAIT
    child.keep_running()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(starts.read_text().splitlines()) < 2:
        time.sleep(0.02)
    assert starts.read_text().splitlines() == ["a b", "a b"]
    running = child.child
    assert running is not None
    assert running.poll() is None
    child.stop(wait=5)
    assert running.returncode is not None
    assert child.child is None


def test_the_summariser_and_the_upload_queue_are_their_commands() -> None:
    child = summarise_process()
    assert child.arguments == ["summarise"]
    assert child.manage_py.name == "manage.py"
    assert UploadProcess(7).arguments == ["upload", "--receiver-process", "7"]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's scheduling classes")
def test_a_child_is_in_the_idle_scheduling_class_from_its_first_instruction(
    tmp_path: Path,
) -> None:
    # Its start-up (interpreter, Django, boto3) must not compete with the receive loop.
    seen = tmp_path / "seen"
    script = tmp_path / "manage.py"
    script.write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(seen)!r}).write_text(str(os.sched_getscheduler(0)))\n"
    )
    child = ChildCommand("test child", [], manage_py=script)
    child.start()
    assert child.child is not None
    assert child.child.wait(timeout=30) == 0
    assert int(seen.read_text()) == os.SCHED_IDLE


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's scheduling classes")
@pytest.mark.parametrize("command", ["upload", "summarise"])
def test_idle_puts_the_command_in_the_idle_scheduling_class(command: str, tmp_path: Path) -> None:
    # The real option parsing and priority call of each command, in a child process (a
    # process cannot leave SCHED_IDLE unprivileged, so not in the test's own).
    script = (
        "import os, sys\n"
        "from django.core.management import load_command_class\n"
        "from receiver.child_process import take_priority\n"
        f"app = {{'upload': 'receiver', 'summarise': 'jmirror_web.conversations'}}[{command!r}]\n"
        f"parser = load_command_class(app, {command!r}).create_parser('manage.py', {command!r})\n"
        "options = vars(parser.parse_args(sys.argv[1:]))\n"
        "take_priority(options)\n"
        "print(os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "jmirror_web.settings"}

    def run(*arguments: str) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup()\n{script}", *arguments],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=60,
            check=True,
        )
        policy, niceness = done.stdout.split()
        return int(policy), int(niceness)

    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert run("--idle") == (os.SCHED_IDLE, base)
    assert run("--nice", "5") == (os.SCHED_OTHER, base + 5)
    assert run() == (os.SCHED_OTHER, base)


def test_without_the_idle_class_the_background_is_a_nice_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lowered: list[int] = []

    def refused(*args: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refused)
    monkeypatch.setattr(os, "nice", lowered.append)
    assert child_process.run_in_background() is False
    assert lowered == [child_process.BACKGROUND_NICENESS]
