"""Key layout. Every key of one topic carries the topic as its cluster hash tag."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicKeys"]


@dataclass(frozen=True, slots=True)
class TopicKeys:
    """The keys of one topic (``{...}`` is the Redis Cluster hash tag)::

        <prefix>:{<topic>}              stream: messages without priority (level 0)
        <prefix>:{<topic>}:p<n>         stream: messages of priority n (1-9), when used
        <prefix>:{<topic>}:r:<group>    stream: a group's redeliveries (nack, close)
        <prefix>:{<topic>}:delayed      zset: delayed messages, score = due time (ms)
        <prefix>:{<topic>}:levels       set: priority levels in use
        <prefix>:{<topic>}:groups       set: groups of the topic
        <prefix>:{<topic>}:live         zset: open subscriptions, score = expiry (ms)

    The Lua scripts derive the derived names from ``base`` the same way.
    """

    base: str

    @classmethod
    def of(cls, prefix: str, topic: str) -> TopicKeys:
        return cls(f"{prefix}:{{{topic}}}")

    def level(self, level: int) -> str:
        return self.base if level <= 0 else f"{self.base}:p{level}"

    def retry(self, group: str) -> str:
        return f"{self.base}:r:{group}"

    @property
    def delayed(self) -> str:
        return f"{self.base}:delayed"

    @property
    def levels(self) -> str:
        return f"{self.base}:levels"

    @property
    def groups(self) -> str:
        return f"{self.base}:groups"

    @property
    def live(self) -> str:
        return f"{self.base}:live"

    def all_static(self) -> list[str]:
        """Keys that exist independent of groups and levels (for deletion)."""
        return [self.base, self.delayed, self.levels, self.groups, self.live]
