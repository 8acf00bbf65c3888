"""pytest plugin: ``--bus-url URL`` runs the conformance suite as pytest tests.

Registered through the ``pytest11`` entry point, so installing the package is
enough::

    pytest --pyargs conformance --bus-url redis://127.0.0.1:6379/0

Each scenario becomes ``test_scenario[<url>-<scenario>]``; a scenario needing a
capability the backend declares unsupported is a skip carrying the backend's
reason. The plugin only adds an option and parametrises tests that ask for the
``bus_url`` and ``bus_scenario`` fixtures; it costs nothing otherwise.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bus", "bus conformance suite")
    group.addoption(
        "--bus-url",
        action="append",
        default=[],
        metavar="URL",
        help="run the bus conformance suite against URL (repeatable)",
    )
    group.addoption(
        "--bus-scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="only these conformance scenarios (repeatable)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bus_scenario" in metafunc.fixturenames:
        from conformance.runner import scenarios

        wanted = set(metafunc.config.getoption("--bus-scenario"))
        known = [s.name for s in scenarios()]
        if unknown := sorted(wanted - set(known)):
            # a typo would otherwise select nothing and pass
            raise pytest.UsageError(
                f"--bus-scenario: no scenario named {', '.join(unknown)}; known: {', '.join(known)}"
            )
        metafunc.parametrize("bus_scenario", [n for n in known if not wanted or n in wanted])
    urls = metafunc.config.getoption("--bus-url")
    if "bus_url" in metafunc.fixturenames and urls:
        metafunc.parametrize("bus_url", urls, ids=[_url_id(u) for u in urls])
    elif metafunc.module.__name__ == "conformance.test_suite" and not urls:
        # the shipped suite has no bus_url of its own (a module importing test_scenario
        # provides one): without --bus-url every scenario would error alike
        raise pytest.UsageError("pytest --pyargs conformance needs --bus-url URL")


def _url_id(url: str) -> str:
    from bus import redact_url

    return redact_url(url).split("?")[0]
