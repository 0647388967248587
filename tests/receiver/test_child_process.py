"""The receiver's child processes: started, started again after they exit, stopped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from receiver import child_process
from receiver.child_process import ChildCommand, summarise_process


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


def test_the_summariser_runs_the_summarise_command_at_nice_10() -> None:
    child = summarise_process()
    assert child.arguments == ["summarise", "--nice", "10"]
    assert child.manage_py.name == "manage.py"
