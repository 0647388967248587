"""The live contract (receiver.live_contract) is a leaf both sides import: the web
process gets it without the receive loop, and the consumer's buffer copies exactly its
fields."""

import json
import subprocess
import sys
from pathlib import Path

from jmirror_web.live import buffer
from receiver.live_contract import HealthSummary, ListenerHealth, PacketRow, SessionSummary

REPO = Path(__file__).resolve().parents[3]


def modules_after(code: str, tmp_path: Path) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={"JMIRROR_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "jmirror_web.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_the_contract_imports_neither_side(tmp_path: Path) -> None:
    loaded = modules_after("import receiver.live_contract", tmp_path)

    assert {name for name in loaded if name.startswith("receiver.")} == {"receiver.live_contract"}
    assert not {name for name in loaded if name.split(".")[0] in {"django", "jmirror_web"}}


def test_the_consumer_does_not_load_the_receive_loop(tmp_path: Path) -> None:
    loaded = modules_after(
        "import sys\n"
        "import django\n"
        "django.setup()\n"
        # Whatever setting up Django loaded of the receiver is forgotten, so that only
        # what importing the consumer brings counts.
        "for name in [n for n in sys.modules if n.split('.')[0] == 'receiver']:\n"
        "    del sys.modules[name]\n"
        "import jmirror_web.live.consumers\n",
        tmp_path,
    )

    assert "jmirror_web.live.consumers" in loaded
    assert "receiver.live_contract" in loaded
    assert "receiver.receive_loop" not in loaded
    assert "receiver.pipeline" not in loaded
    assert "receiver.live" not in loaded


def fields(contract: type) -> list[str]:
    return list(contract.__annotations__)


def test_the_buffer_copies_every_packet_row_field() -> None:
    assert [*buffer._ROW_FIELDS, buffer.CONTENT_FIELD] == fields(PacketRow)


def test_the_buffer_copies_every_session_field_but_the_type() -> None:
    # Identity fields are kept from the latest summary, the rest summed or recomputed.
    copied = {
        *buffer._SESSION_IDENTITY,
        "liid",
        "time_ns",
        "interval_ns",
        "packets",
        "bytes",
        "stored",
        "packets_per_second",
        "bytes_per_second",
        "first_ns",
        "last_ns",
        "recent",
    }
    assert copied == set(fields(SessionSummary)) - {"type"}


def test_the_buffer_copies_every_health_field_but_the_type() -> None:
    copied = {*buffer._HEALTH_NUMBERS, "receiver", "drops", "store_errors", "listeners"}
    assert copied == set(fields(HealthSummary)) - {"type"}
    assert list(buffer._LISTENER_FIELDS) == fields(ListenerHealth)
