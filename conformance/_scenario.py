"""The scenario registry: what a scenario is and how it is declared."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bus.capabilities import Feature

if TYPE_CHECKING:
    from conformance.context import Context

__all__ = ["SCENARIOS", "ConformanceFailure", "Scenario", "expect", "scenario"]

ScenarioFn = Callable[["Context"], Awaitable[str | None]]


class ConformanceFailure(AssertionError):
    """A scenario found the backend breaking the contract (message says how)."""


def expect(condition: object, message: str) -> None:
    """Fail the scenario with ``message`` unless ``condition`` holds.

    Used instead of ``assert`` so the suite keeps checking under ``python -O``.
    """
    if not condition:
        raise ConformanceFailure(message)


@dataclass(frozen=True)
class Scenario:
    name: str
    fn: ScenarioFn
    doc: str
    requires: tuple[Feature, ...] = ()
    timeout: float = 60.0
    tags: frozenset[str] = field(default_factory=frozenset)


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    *requires: Feature, timeout: float = 60.0, name: str | None = None, tags: tuple[str, ...] = ()
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register an async scenario ``fn(ctx)``; its docstring states the contract it checks.

    A scenario returns ``None`` or a short detail string (what it measured), and
    raises :class:`ConformanceFailure` when the backend breaks the contract.
    """

    def register(fn: ScenarioFn) -> ScenarioFn:
        key = name or fn.__name__
        if key in SCENARIOS:
            raise ValueError(f"duplicate conformance scenario {key!r}")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else key
        SCENARIOS[key] = Scenario(key, fn, doc, tuple(requires), timeout, frozenset(tags))
        return fn

    return register
