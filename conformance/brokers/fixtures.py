"""pytest fixtures for brokers: ``from conformance.brokers.fixtures import *`` in a conftest.

* ``redis_broker``, ``rabbitmq_broker``, ``nats_broker``, ``kafka_broker`` (session
  scope): a shared :class:`~conformance.brokers.Broker` from
  :func:`~conformance.brokers.find_or_start`. Do not stop or restart these.
* ``private_broker`` (function scope): a factory, ``private_broker("redis", **options)``
  returns a new owned broker from :func:`~conformance.brokers.start_private`; every
  broker it made is stopped (data deleted) at teardown.

When a broker cannot be provisioned the test is skipped with the reason, or fails
when ``CI=true`` (:func:`~conformance.brokers.provisioning_required`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn, Protocol

import pytest

from . import (
    Broker,
    BrokerKind,
    ProvisioningError,
    find_or_start,
    provisioning_required,
    start_private,
)

__all__ = [
    "PrivateBrokerFactory",
    "kafka_broker",
    "nats_broker",
    "private_broker",
    "rabbitmq_broker",
    "redis_broker",
]


class PrivateBrokerFactory(Protocol):
    """Type of the ``private_broker`` fixture."""

    def __call__(self, kind: BrokerKind, **options: object) -> Broker: ...


def _unavailable(exc: ProvisioningError) -> NoReturn:
    if provisioning_required():
        pytest.fail(f"broker provisioning failed and CI=true requires it: {exc}", pytrace=False)
    pytest.skip(str(exc))


def _shared(kind: BrokerKind) -> Broker:
    try:
        return find_or_start(kind)
    except ProvisioningError as exc:
        _unavailable(exc)


@pytest.fixture(scope="session")
def redis_broker() -> Broker:
    """Shared Redis broker (find_or_start("redis"))."""
    return _shared("redis")


@pytest.fixture(scope="session")
def rabbitmq_broker() -> Broker:
    """Shared RabbitMQ broker (find_or_start("rabbitmq"))."""
    return _shared("rabbitmq")


@pytest.fixture(scope="session")
def nats_broker() -> Broker:
    """Shared NATS JetStream broker (find_or_start("nats"))."""
    return _shared("nats")


@pytest.fixture(scope="session")
def kafka_broker() -> Broker:
    """Shared Kafka-protocol broker (find_or_start("kafka"))."""
    return _shared("kafka")


@pytest.fixture
def private_broker() -> Iterator[PrivateBrokerFactory]:
    """Factory for brokers owned by one test; all are stopped at teardown."""
    made: list[Broker] = []

    def factory(kind: BrokerKind, **options: object) -> Broker:
        try:
            broker = start_private(kind, **options)
        except ProvisioningError as exc:
            _unavailable(exc)
        made.append(broker)
        return broker

    yield factory
    for broker in reversed(made):
        broker.stop()
