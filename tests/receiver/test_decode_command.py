import json
import struct
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from receiver.offline import JSON_KEYS

REPO = Path(__file__).resolve().parents[2]
ROUTER = "192.0.2.1"


def mirrored(inner: bytes, *, port: int = 6502, mid: int = 0x300, sid: int = 0x90) -> Ether:
    datagram = struct.pack("!II", mid, sid) + inner
    return Ether() / IP(src=ROUTER, dst="198.51.100.10") / UDP(sport=port, dport=port) / datagram


def tcp_packet(index: int) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="203.0.113.5") / TCP(sport=40000 + index, dport=443))


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    frames = [
        mirrored(tcp_packet(0)),
        Ether()
        / IP(src="192.0.2.53", dst="198.51.100.10")
        / UDP(sport=53, dport=40000)
        / DNS(qd=DNSQR(qname="example.net")),
        mirrored(bytes(IP(src="10.0.0.1", dst="203.0.113.5") / ICMP()), port=5000, sid=0x91),
        mirrored(tcp_packet(1)),
    ]
    for number, frame in enumerate(frames):
        frame.time = 1_790_000_000 + number + 0.000123
    path = tmp_path / "mixed.pcap"
    wrpcap(str(path), frames)
    return path


def decode(*args: str) -> tuple[list[dict[str, object]], str]:
    out, err = StringIO(), StringIO()
    call_command("decode", *args, stdout=out, stderr=err)
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def run_manage(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_it_prints_one_json_object_per_jmirror_packet_with_exactly_the_contract_keys(
    capture: Path,
):
    packets, _ = decode(str(capture))
    assert [list(packet) for packet in packets] == [list(JSON_KEYS)] * 3
    assert packets[0] == {
        "frame": 1,
        "time": pytest.approx(1_790_000_000.000123),
        "router": ROUTER,
        "port": 6502,
        "format": "jmirror",
        "mid": 0x300,
        "intercept_id": 0x300,
        "version": 0,
        "sid": 0x90,
        "inner": "ipv4",
        "ppp_protocol": None,
        "src": "10.0.0.1",
        "dst": "203.0.113.5",
        "proto": 6,
        "sport": 40000,
        "dport": 443,
        "length": 40,
    }
    assert [(packet["frame"], packet["port"], packet["proto"]) for packet in packets] == [
        (1, 6502, 6),
        (3, 5000, 1),
        (4, 6502, 6),
    ]


def test_it_writes_the_capture_time_exactly_to_the_nanosecond(capture: Path):
    out = StringIO()
    call_command("decode", str(capture), stdout=out, stderr=StringIO())
    assert '"time": 1790000000.000123000,' in out.getvalue().splitlines()[0]


def test_it_summarises_frames_read_decoded_and_skipped_on_stderr(capture: Path):
    _, summary = decode(str(capture))
    assert summary.strip() == (
        "4 frames read, 3 packets decoded (jmirror: 3), 1 skipped (not_mirror: 1)"
    )


def test_with_ports_it_decodes_only_datagrams_to_those_ports(capture: Path):
    packets, summary = decode(str(capture), "--port", "5000")
    assert [packet["frame"] for packet in packets] == [3]
    assert "port_not_selected: 3" in summary


def test_a_forced_port_reports_undecodable_datagrams_by_reason(tmp_path: Path):
    path = tmp_path / "damaged.pcap"
    short = Ether() / IP(src=ROUTER, dst="198.51.100.10") / UDP(sport=6502, dport=6502) / b"\x00"
    wrpcap(str(path), [mirrored(tcp_packet(0)[:-3]), short, mirrored(b"\x12\x34")])
    packets, summary = decode(str(path), "--port", "6502")
    assert [(packet["frame"], packet["inner"]) for packet in packets] == [(3, "unknown")]
    assert summary.strip() == (
        "3 frames read, 1 packets decoded (jmirror: 1), 2 skipped "
        "(inconsistent_length: 1, too_short: 1)"
    )


@pytest.mark.parametrize("port", ["0", "65536", "http", "-1"])
def test_it_rejects_a_port_that_is_not_a_udp_port(capture: Path, port: str):
    with pytest.raises(CommandError, match="port"):
        call_command("decode", str(capture), "--port", port)
    with pytest.raises(CommandError, match="port"):
        call_command("decode", str(capture), "--contrail-port", port)


def test_a_missing_file_is_a_one_line_error_with_exit_status_2(tmp_path: Path):
    missing = tmp_path / "nope.pcap"
    result = run_manage("decode", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"CommandError: {missing}: No such file or directory"
    ]


def test_a_file_that_is_not_a_capture_is_a_one_line_error_with_exit_status_2(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not packets\n")
    result = run_manage("decode", str(text))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"CommandError: {text}: ")
    assert "Traceback" not in result.stderr


def test_a_directory_is_a_one_line_error_with_exit_status_2(tmp_path: Path):
    result = run_manage("decode", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"CommandError: {tmp_path}: Is a directory"]


def test_a_truncated_capture_prints_every_complete_packet_then_fails_with_status_2(
    capture: Path, tmp_path: Path
):
    data = capture.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-5])
    result = run_manage("decode", str(cut))
    assert result.returncode == 2
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == [1, 3]
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("3 frames read, 2 packets decoded (jmirror: 2)")
    assert lines[-1].startswith(f"CommandError: {cut}: ")
    assert "Traceback" not in result.stderr


def test_a_closed_pipe_on_stdout_ends_the_command_quietly(capture: Path, tmp_path: Path):
    big = tmp_path / "big.pcap"
    frames = [mirrored(tcp_packet(index % 50)) for index in range(5000)]
    wrpcap(str(big), frames)
    with subprocess.Popen(
        [sys.executable, "manage.py", "decode", str(big)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # like `| head -n 1` exiting
        errors = process.stderr.read()
        status = process.wait(timeout=120)
    assert json.loads(first)["frame"] == 1
    assert status == 0
    assert errors == ""


def test_the_summary_tells_datagrams_missing_fragments_apart_from_skipped_frames(
    tmp_path: Path,
):
    whole = mirrored(tcp_packet(0))
    big = mirrored(bytes(IP(src="10.0.0.1", dst="203.0.113.5") / TCP() / (b"z" * 3000)))
    pieces = fragment(big[IP], fragsize=1400)
    path = tmp_path / "lost-fragment.pcap"
    wrpcap(str(path), [whole, *(Ether() / piece for piece in pieces[:-1])])
    packets, summary = decode(str(path))
    assert [packet["frame"] for packet in packets] == [1]
    assert summary.strip() == (
        f"{len(pieces)} frames read, 1 packets decoded (jmirror: 1), {len(pieces) - 1} skipped "
        f"(fragment: {len(pieces) - 1}); 1 datagrams with missing fragments"
    )


def test_manage_py_runs_decode_without_loading_the_web_project(capture: Path):
    """decode needs no app: set up, Django loaded every one (Daphne's Twisted reactor
    above all), a third of the CPU time of a 400,000-packet decode. It still prints."""
    code = (
        "import runpy, sys; "
        f"sys.argv = ['manage.py', 'decode', {str(capture)!r}]; "
        "runpy.run_path('manage.py', run_name='__main__'); "
        "from django.apps import apps; "
        "print('loaded:', apps.ready, sorted({m.split('.')[0] for m in sys.modules} "
        "& {'daphne', 'twisted', 'channels', 'jmirror_web'}), file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.splitlines()[-1] == "loaded: False ['jmirror_web']"
