"""The receiver's C part is built by the install wherever it can be, and used by default;
without it (or asked not to) the receiver runs the Python drain."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from receiver import receive_loop
from receiver.gate import Gate
from receiver.receive_loop import Receiver
from receiver.store import PcapStore


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("cc") is None,
    reason="receiver._fastpath is built on Linux with a C compiler only",
)
def test_the_c_part_is_built_where_a_compiler_is():
    assert receive_loop.FastReceiver is not None, (
        "setup.py did not build receiver._fastpath: reinstall (scripts/install-venv) and "
        "read the compiler's output"
    )


@pytest.mark.parametrize("native", [True, False])
def test_a_receiver_drains_through_c_unless_asked_not_to_or_it_is_missing(native, monkeypatch):
    with tempfile.TemporaryDirectory() as directory:
        receiver = Receiver(
            [("127.0.0.1", 0)], Gate([], []), PcapStore(Path(directory)), native=native
        )
        try:
            assert receiver.native is (native and receive_loop.FastReceiver is not None)
        finally:
            receiver.close_sockets()
        monkeypatch.setattr(receive_loop, "FastReceiver", None)
        missing = Receiver([("127.0.0.1", 0)], Gate([], []), PcapStore(Path(directory)))
        try:
            assert missing.native is False
        finally:
            missing.close_sockets()
