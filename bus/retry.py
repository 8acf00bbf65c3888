"""Retry policies for the handler runtime (:meth:`bus.Bus.consume`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Backoff", "Exponential", "Fixed", "Retry"]


class Backoff(Protocol):
    def delay(self, attempt: int) -> float:
        """Seconds to wait before delivery number ``attempt + 1``."""
        ...


@dataclass(frozen=True, slots=True)
class Fixed:
    """The same delay after every failure."""

    seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError("Fixed backoff must be >= 0 seconds")

    def delay(self, attempt: int) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class Exponential:
    """``initial * 2 ** (attempt - 1)`` capped at ``maximum``, with full jitter
    down to half the value (so a burst of failures does not retry in lock-step)."""

    initial: float = 0.5
    maximum: float = 30.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("Exponential backoff needs 0 <= initial <= maximum")

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * 2 ** max(0, attempt - 1))
        return random.uniform(base / 2, base) if self.jitter else base


@dataclass(frozen=True, slots=True)
class Retry:
    """Deliver a failing message up to ``max_attempts`` times in all, waiting
    ``backoff.delay(attempt)`` between attempts; then dead-letter it."""

    max_attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Exponential(0.5, 30.0))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("Retry.max_attempts must be >= 1")
