"""Deterministic names: topic -> subject, topic -> stream, internal subjects.

Topics (``bus.topics``) are dot-separated ``[A-Za-z0-9_-]`` segments, which are
valid NATS subject tokens as they are, so a topic's subject is simply
``<subject_prefix>.<topic>``.

Stream names cannot contain dots, so a topic is encoded with a prefix-free code
that keeps it readable and can be decoded back: ``_`` -> ``_-``, ``.`` -> ``__``
(``jobs.classify`` -> ``BUS_jobs__classify``, ``my_jobs`` -> ``BUS_my_-jobs``).
Distinct topics never share a stream name. Very long topics are cut and suffixed
with ``_h`` and a SHA-256 prefix of the whole topic (``_h`` never occurs in an
encoded name, so the cut form cannot collide with another topic's full form).
Internal streams use ``<stream_prefix>-<NAME>``, which no topic can produce.
"""

from __future__ import annotations

import hashlib

__all__ = ["Names"]

# Encoded stream names stay well below file-name limits (the server stores a
# stream in a directory of that name).
_MAX_ENCODED = 160
_CUT = 80


def encode_topic(topic: str) -> str:
    """The prefix-free encoding of ``topic`` described in the module docstring."""
    encoded = topic.replace("_", "_-").replace(".", "__")
    if len(encoded) <= _MAX_ENCODED:
        return encoded
    digest = hashlib.sha256(topic.encode()).hexdigest()[:24]
    return topic[:_CUT].replace("_", "_-").replace(".", "__") + "_h" + digest


class Names:
    """Subjects and stream names under the configured prefixes."""

    def __init__(self, subject_prefix: str, stream_prefix: str) -> None:
        self.subject_prefix = subject_prefix
        self.stream_prefix = stream_prefix
        self._strip = len(subject_prefix) + 1
        #: Stream holding delayed messages until the mover republishes them.
        self.delay_stream = f"{stream_prefix}-DELAYED"
        self.delay_root = f"{subject_prefix}._delay"
        #: Durable consumer of :attr:`delay_stream` shared by every mover.
        self.delay_consumer = "mover"

    def subject(self, topic: str) -> str:
        return f"{self.subject_prefix}.{topic}"

    def topic(self, subject: str) -> str:
        """Inverse of :meth:`subject`."""
        return subject[self._strip :]

    def stream(self, topic: str) -> str:
        return f"{self.stream_prefix}_{encode_topic(topic)}"

    def delay_subject(self, topic: str) -> str:
        return f"{self.delay_root}.{topic}"

    def delayed_topic(self, subject: str) -> str:
        """The destination topic of a message held on ``delay_subject(topic)``."""
        return subject[len(self.delay_root) + 1 :]

    def live_subject(self, topic: str) -> str:
        """Core subject every live consumer of ``topic`` answers on (no-responders probe)."""
        return f"{self.subject_prefix}._live.{topic}"
