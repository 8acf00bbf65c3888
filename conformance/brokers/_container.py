"""Brokers run as Docker containers through testcontainers (for machines with Docker).

Each container's broker port is bound to a fixed host port, so a ``docker stop`` /
``docker start`` of the same container (restart) keeps both the URL and the data in
the container's filesystem. Final stop removes the container (testcontainers' Ryuk
also reaps it if this process dies).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ._model import BrokerKind, ProvisioningError
from ._probe import free_port, probe

IMAGES: dict[BrokerKind, str] = {
    "redis": "redis:7-alpine",
    "rabbitmq": "rabbitmq:3.13-alpine",
    "nats": "nats:2.10-alpine",
    "kafka": "apache/kafka:3.9.0",
}
_INTERNAL_PORT: dict[BrokerKind, int] = {
    "redis": 6379,
    "rabbitmq": 5672,
    "nats": 4222,
    "kafka": 9092,
}
_BOOT_TIMEOUT = 120.0
_live: dict[int, ContainerRunner] = {}
_owner_pid = os.getpid()


@atexit.register
def _remove_all_at_exit() -> None:
    if os.getpid() != _owner_pid:
        return
    for runner in list(_live.values()):
        with contextlib.suppress(Exception):
            runner.stop(keep_data=False)


#: Seconds each request of the Docker availability check may take (the docker client's
#: default is 60 s, which a DOCKER_HOST that accepts but never answers would cost).
DOCKER_CHECK_TIMEOUT = 5.0


def docker_unavailable_reason(timeout: float = DOCKER_CHECK_TIMEOUT) -> str | None:
    """None if testcontainers is installed and a Docker engine answers, else why not.

    Each request to the engine (API version, ping) is bounded by ``timeout`` seconds.
    """
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError:
        return "testcontainers is not installed"
    try:
        client = DockerClient(timeout=timeout)
        client.client.ping()
        client.client.close()
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"no Docker engine answered ({first_line[:160]})"
    return None


def docker_host() -> str:
    """Host name under which published container ports are reachable."""
    from testcontainers.core.docker_client import DockerClient

    host: str = DockerClient().host()
    return host


class ContainerRunner:
    """Lifecycle of one broker container with a fixed published port."""

    def __init__(
        self,
        kind: BrokerKind,
        *,
        max_payload: int | None = None,
        redis_args: tuple[str, ...] = (),
        boot_timeout: float | None = None,
    ) -> None:
        self.kind = kind
        self.host = docker_host()
        self.port = free_port()
        self.boot_timeout = boot_timeout or _BOOT_TIMEOUT
        self._max_payload = max_payload
        self._redis_args = redis_args
        self._container: Any = None
        self._conf_dir: Path | None = None

    def _build(self) -> Any:
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(IMAGES[self.kind]).with_bind_ports(
            _INTERNAL_PORT[self.kind], self.port
        )
        if self.kind == "redis":
            args = " ".join(("--appendonly yes --appendfsync everysec", *self._redis_args))
            container = container.with_command(f"redis-server {args}")
        elif self.kind == "nats":
            command = "-js -sd /data"
            if self._max_payload is not None:
                self._conf_dir = Path(tempfile.mkdtemp(prefix="bus-nats-conf-"))
                (self._conf_dir / "nats.conf").write_text(f"max_payload: {self._max_payload}\n")
                container = container.with_volume_mapping(str(self._conf_dir), "/etc/bus", "ro")
                command += " -c /etc/bus/nats.conf"
            container = container.with_command(command)
        elif self.kind == "kafka":
            container = container.with_envs(
                KAFKA_NODE_ID="1",
                KAFKA_PROCESS_ROLES="broker,controller",
                KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
                KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{self.host}:{self.port}",
                KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
                KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
                KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
                KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
                KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
                KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            )
        return container

    @property
    def running(self) -> bool:
        if self._container is None:
            return False
        try:
            wrapped = self._container.get_wrapped_container()
            wrapped.reload()
            return bool(wrapped.status == "running")
        except Exception:
            return False

    def start(self) -> None:
        if self.running:
            return
        try:
            if self._container is None:
                self._container = self._build()
                _live[id(self)] = self
                self._container.start()
            else:
                self._container.get_wrapped_container().start()
        except Exception as exc:
            raise ProvisioningError(
                f"{self.kind}: starting container {IMAGES[self.kind]} failed: {exc}"
            ) from None
        deadline = time.monotonic() + self.boot_timeout
        while (reason := probe(self.kind, self.host, self.port, timeout=2.0)) is not None:
            if time.monotonic() >= deadline:
                self.stop(keep_data=False)
                raise ProvisioningError(
                    f"{self.kind}: container not ready within {self.boot_timeout:.0f} s ({reason})"
                )
            time.sleep(0.25)

    def stop(self, *, keep_data: bool) -> None:
        if self._container is None:
            return
        if keep_data:
            with contextlib.suppress(Exception):
                self._container.get_wrapped_container().stop(timeout=30)
            return
        with contextlib.suppress(Exception):
            self._container.stop()  # removes the container and its anonymous volumes
        self._container = None
        _live.pop(id(self), None)
        if self._conf_dir is not None:
            shutil.rmtree(self._conf_dir, ignore_errors=True)
            self._conf_dir = None

    def kill(self) -> None:
        if self._container is not None and self.running:
            with contextlib.suppress(Exception):
                self._container.get_wrapped_container().kill()
