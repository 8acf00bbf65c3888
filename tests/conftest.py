"""Project test configuration: shared broker fixtures and the backend matrix."""

from __future__ import annotations

import pytest

from conformance.brokers.fixtures import (  # noqa: F401 - pytest fixtures
    kafka_broker,
    nats_broker,
    private_broker,
    rabbitmq_broker,
    redis_broker,
)

#: Backends the conformance matrix runs against (kind -> provisioning fixture).
BACKENDS: dict[str, str | None] = {
    "memory": None,
    "redis": "redis_broker",
    "rabbitmq": "rabbitmq_broker",
    "nats": "nats_broker",
    "kafka": "kafka_broker",
}


@pytest.fixture(params=list(BACKENDS))
def bus_url(request: pytest.FixtureRequest) -> str:
    """The URL of each backend in turn: memory, then the provisioned brokers."""
    kind: str = request.param
    fixture = BACKENDS[kind]
    if fixture is None:
        return "memory://"
    broker = request.getfixturevalue(fixture)
    return str(broker.url)
