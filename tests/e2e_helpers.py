"""Helpers for tests that run the real product as a separate process.

:class:`ServedProduct` is the embedded default without ``./run``'s install step: its own
data directory (SQLite, pcaps, static files), ``manage.py migrate`` and ``collectstatic``,
then ``manage.py serve`` (Daphne with the receiver in the same process, the in-memory
channel layer) on a free HTTP port and a free UDP port. Records are made with
``manage.py shell --no-imports -c``, traffic with ``manage.py simulate``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
COMMAND_TIMEOUT = 180.0  # one manage.py command, on a machine shared with other test runs


def free_port(kind: int) -> int:
    """A port the kernel just handed out for ``kind`` (SOCK_STREAM or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def product_environment(data_dir: Path) -> dict[str, str]:
    """This process's environment on the embedded default: no PostgreSQL, no Redis."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env["JMIRROR_DATA_DIR"] = str(data_dir)
    return env


class ServedProduct:
    """``manage.py serve`` in its own process group, with its environment and output."""

    def __init__(self, data_dir: Path) -> None:
        self.http_port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.env = product_environment(data_dir)
        self.output: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def manage(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Runs one ``manage.py`` command to its end; its standard output."""
        result = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)[:200]} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def shell(self, code: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Runs ``code`` in ``manage.py shell``; its standard output."""
        return self.manage("shell", "--no-imports", "-c", code, timeout=timeout)

    def simulate(self, count: int, mid: int = 0x300) -> str:
        """Sends ``count`` jmirror datagrams as fast as possible to the receiver."""
        return self.manage(
            "simulate",
            "--to",
            f"127.0.0.1:{self.udp_port}",
            "--count",
            str(count),
            "--rate",
            "0",
            "--mid",
            hex(mid),
        )

    def start(self, timeout: float = 120.0) -> None:
        """Migrates, collects the static files, then serves until :meth:`stop`."""
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput", "--verbosity", "0")
        self.process = subprocess.Popen(
            [
                PYTHON,
                "manage.py",
                "serve",
                "--port",
                str(self.http_port),
                "--listen",
                f"127.0.0.1:{self.udp_port}",
            ],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.wait_for_line(rf"receiving jmirror on 127\.0\.0\.1:{self.udp_port}", timeout)
        self.wait_for_line(rf"serving http://127\.0\.0\.1:{self.http_port}/", timeout)

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.process.stdout.fileno(), False)
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line:
                self.output.append(line)
                if re.search(pattern, line):
                    return line
                continue
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.read_output()}")

    def read_output(self) -> str:
        """Everything the server printed so far."""
        if self.process is not None and self.process.stdout is not None:
            try:
                while line := self.process.stdout.readline():
                    self.output.append(line)
            except (OSError, ValueError):
                pass
        return "".join(self.output)

    def stop(self) -> int | None:
        """Ctrl-C, then SIGKILL after 20 s; the exit status (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        return self.process.returncode
