"""Real brokers for the destination tests, each on loopback ports of its own in a temporary
directory, in a process group of its own, stopped by its process id: NATS with JetStream, and
RabbitMQ run as the `rabbitmq` user without the system service (facts: ../shared/BROKERS.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, stop_group


def wait_for_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def epmd_pids() -> set[int]:
    """The Erlang port mappers running (read from /proc: no pattern kill)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "epmd":
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


@dataclass
class NatsServer:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "nats-server",
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for_port(self.port, 20):
            self.stop()
            raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        stop_group(self.process)
        self.process = None


@dataclass
class RabbitServer:
    directory: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"smsr{os.getpid()}@localhost")
    process: subprocess.Popen[bytes] | None = None
    mappers_before: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "plugins"),
            # The node (run as `rabbitmq` by the wrapper, outside our process group) says its
            # process id here, so that it is stopped by its id.
            "RABBITMQ_PID_FILE": str(self.directory / "node.pid"),
        }

    def start(self) -> None:
        self.mappers_before = epmd_pids()
        self.directory.mkdir(parents=True, exist_ok=True)
        # The node runs as `rabbitmq`: it must pass through the (private) directory above.
        parent = self.directory.parent
        parent.chmod(parent.stat().st_mode | 0o011)
        (self.directory / "plugins").write_text("[].\n")
        shutil.chown(self.directory, "rabbitmq", "rabbitmq")
        for path in self.directory.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.process = subprocess.Popen(
            ["rabbitmq-server"],
            env=self.environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for_port(self.port, 90):
            self.stop()
            raise RuntimeError("rabbitmq-server did not start")

    def stop(self) -> None:
        node = self._node_pid()
        if node is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(node) and time.monotonic() < deadline:
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.kill(node, signal.SIGKILL)
        stop_group(self.process)
        self.process = None
        # The node starts an Erlang port mapper that outlives it: ours is stopped by its id.
        for pid in epmd_pids() - self.mappers_before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _node_pid(self) -> int | None:
        try:
            return int((self.directory / "node.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
