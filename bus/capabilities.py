"""What each backend can do: natively, by emulation in this library, or not at all.

A backend declares one :class:`Capability` per :class:`Feature`. Calls that need an
unsupported feature raise :class:`bus.UnsupportedFeature` at call time (never a
silent no-op); the conformance suite skips exactly those scenarios and prints the
reason; the README's capability table is generated from these declarations.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from bus.errors import UnsupportedFeature

__all__ = ["Capabilities", "Capability", "Feature", "Support"]


class Feature(enum.StrEnum):
    """Abilities beyond plain publish / competing-consumer subscribe."""

    BROADCAST = "broadcast"
    """``subscribe(group=None)``: every live subscriber receives every message."""
    REPLAY = "replay"
    """``start="earliest"``: a new group or broadcast reads the retained history."""
    KEY_ORDER = "key_order"
    """With one consumer per group, messages with the same key arrive in publish order."""
    DELAY = "delay"
    """``publish(delay=...)``: delivery no earlier than the delay."""
    NACK_DELAY = "nack_delay"
    """``nack(delay=...)``: redelivery no earlier than the delay."""
    PRIORITY = "priority"
    """``publish(priority=0..9)``: a waiting higher priority is delivered first."""
    DEAD_LETTER = "dead_letter"
    """``dead_letter(reason)``: moved to ``<topic>.dlq`` with reason headers."""
    LEASE = "lease"
    """``ack_timeout`` option: a delivery unsettled that long goes to another member;
    ``in_progress()`` extends it."""
    REQUEST_REPLY = "request_reply"
    """``request()`` / ``Delivery.reply()``."""
    NO_RESPONDERS = "no_responders"
    """``request()`` to a topic nobody consumes fails fast with ``NoResponders``."""


class Support(enum.StrEnum):
    NATIVE = "native"
    EMULATED = "emulated"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class Capability:
    support: Support
    how: str = ""
    """How the backend provides it, or why it cannot (shown in the table and errors)."""

    @property
    def available(self) -> bool:
        return self.support is not Support.UNSUPPORTED


def native(how: str = "") -> Capability:
    return Capability(Support.NATIVE, how)


def emulated(how: str) -> Capability:
    return Capability(Support.EMULATED, how)


def unsupported(why: str) -> Capability:
    return Capability(Support.UNSUPPORTED, why)


@dataclass(frozen=True)
class Capabilities(Mapping[Feature, Capability]):
    """A complete declaration: every :class:`Feature` must be present."""

    backend: str
    features: Mapping[Feature, Capability] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [f.value for f in Feature if f not in self.features]
        if missing:
            raise TypeError(f"{self.backend} capabilities do not declare: {', '.join(missing)}")

    def __getitem__(self, feature: Feature) -> Capability:
        return self.features[feature]

    def __iter__(self) -> Iterator[Feature]:
        return iter(Feature)

    def __len__(self) -> int:
        return len(Feature)

    def supports(self, feature: Feature) -> bool:
        return self.features[feature].available

    def require(self, feature: Feature) -> None:
        """Raise :class:`UnsupportedFeature` unless ``feature`` is available."""
        cap = self.features[feature]
        if not cap.available:
            raise UnsupportedFeature(self.backend, feature.value, cap.how)
