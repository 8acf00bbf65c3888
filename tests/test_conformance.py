"""The shipped conformance suite, run against every backend in tests/conftest.py.

Each scenario is its own test: ``test_scenario[<backend>-<scenario>]``. A skip
here is always a capability the backend declares unsupported, with its reason.
"""

from conformance.test_suite import bus_isolated, test_scenario

__all__ = ["bus_isolated", "test_scenario"]
