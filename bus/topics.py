"""Topic and group names: one grammar every backend can carry natively.

A topic is one or more segments joined by dots; a segment is 1-64 characters of
ASCII letters, digits, ``_`` and ``-``. The whole name is at most 200 characters.
This is the intersection of what the brokers accept (NATS subjects forbid spaces,
``*`` and ``>``; Kafka topic names allow ``[a-zA-Z0-9._-]`` up to 249; RabbitMQ
routing keys use dots as separators; Redis keys accept anything) so a topic
valid here is valid everywhere. Names starting with ``_`` are reserved for the
library (reply inboxes, delay queues). Group names follow the same grammar
without dots.
"""

from __future__ import annotations

import re

from bus.errors import InvalidTopic

__all__ = ["dlq_topic", "validate_group", "validate_topic"]

_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64})*")
_GROUP = re.compile(r"[A-Za-z0-9_-]{1,100}")
MAX_TOPIC_LENGTH = 200


def validate_topic(topic: object, *, internal: bool = False) -> str:
    """Return ``topic`` if valid, else raise :class:`InvalidTopic` saying why."""
    if not isinstance(topic, str):
        raise InvalidTopic(f"topic must be a str, got {type(topic).__name__}")
    if len(topic) > MAX_TOPIC_LENGTH or not _TOPIC.fullmatch(topic):
        raise InvalidTopic(
            f"invalid topic {topic!r}: use dot-separated segments of letters, digits, "
            f"'_' and '-' (at most {MAX_TOPIC_LENGTH} characters)"
        )
    if topic.startswith("_") and not internal:
        raise InvalidTopic(f"invalid topic {topic!r}: names starting with '_' are reserved")
    return topic


def validate_group(group: object) -> str:
    """Return ``group`` if valid, else raise :class:`InvalidTopic`."""
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise InvalidTopic(
            f"invalid group {group!r}: use 1-100 letters, digits, '_' and '-' (no dots)"
        )
    return group


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``: ``<topic>.dlq``."""
    return f"{topic}.dlq"
