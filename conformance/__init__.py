"""The bus conformance suite: one contract, proved against any backend.

Three ways in:

* CLI: ``bus conformance URL [--json FILE] [--only NAME ...]`` prints a
  pass / fail / skip table and writes per-scenario JSON.
* pytest: ``pytest --pyargs conformance --bus-url URL`` (the plugin is registered
  through the ``pytest11`` entry point; one test per scenario; unsupported
  capabilities are skips that print the backend's reason).
* Python, e.g. from a third-party backend's own repository::

      import bus, conformance
      bus.register("mybroker", "my_pkg.backend:MyBackend")
      result = await conformance.run_conformance("mybroker://localhost")
      assert result.ok, result.counts

Every scenario uses unique topic names, runs within a time bound and compares
messages by id. A scenario that needs a capability the backend declares
unsupported is skipped with the backend's reason, never silently.
"""

from conformance._scenario import SCENARIOS, ConformanceFailure, Scenario, expect, scenario
from conformance.context import Context, IsolatedBroker, IsolatedBrokerFactory
from conformance.runner import (
    ScenarioResult,
    SuiteResult,
    run_conformance,
    run_scenario,
    scenarios,
)

__all__ = [
    "SCENARIOS",
    "ConformanceFailure",
    "Context",
    "IsolatedBroker",
    "IsolatedBrokerFactory",
    "Scenario",
    "ScenarioResult",
    "SuiteResult",
    "expect",
    "run_conformance",
    "run_scenario",
    "scenario",
    "scenarios",
]
