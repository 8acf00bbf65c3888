"""The conformance suite as one parametrised pytest test.

Run it with ``pytest --pyargs conformance --bus-url URL``, or import
``test_scenario`` into a test module of your own and provide a ``bus_url``
fixture (and optionally ``bus_isolated``, a factory for the restart scenario).
"""

from __future__ import annotations

import asyncio

import pytest

from conformance._scenario import SCENARIOS
from conformance.context import IsolatedBrokerFactory
from conformance.isolated import factory_for
from conformance.runner import run_scenario, scenarios


@pytest.fixture
def bus_isolated(bus_url: str) -> IsolatedBrokerFactory | None:
    """Broker for the restart scenario; override to supply your own."""
    return factory_for(bus_url)


def test_scenario(
    bus_url: str, bus_scenario: str, bus_isolated: IsolatedBrokerFactory | None
) -> None:
    scenarios()  # make sure the registry is populated
    result = asyncio.run(run_scenario(SCENARIOS[bus_scenario], bus_url, isolated=bus_isolated))
    if result.status == "skip":
        pytest.skip(result.reason)
    if result.status == "fail":
        pytest.fail(f"{bus_scenario}: {result.reason}", pytrace=False)
