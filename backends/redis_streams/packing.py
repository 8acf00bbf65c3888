"""Command packing in C (hiredis) for redis-py's asyncio connections.

redis-py's synchronous connections pack commands with ``hiredis.pack_command`` when
hiredis is installed; its asyncio connections always pack in Python, one
``encode`` / ``join`` per argument. An XADD of a bus message has ~18 arguments
(the CloudEvents attributes are stream fields), so packing was the largest single
cost of ``publish_many``. :func:`use_hiredis_packing` swaps a client's connection
class for a subclass that packs through hiredis and falls back to redis-py's own
packer for anything hiredis does not take. Without hiredis it changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is in the redis extra
    _pack = None

__all__ = ["HIREDIS_PACKING", "use_hiredis_packing"]

HIREDIS_PACKING = _pack is not None

_classes: dict[type[Any], type[Any]] = {}


def _packing_class(base: type[Any]) -> type[Any]:
    found = _classes.get(base)
    if found is not None:
        return found

    class HiredisPacking(base):  # type: ignore[misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            # Same first-argument rule as redis-py: "CONFIG GET" is two tokens.
            # (hiredis encodes str arguments as UTF-8 itself, as redis-py does)
            first = args[0]
            if isinstance(first, str):
                if " " in first:
                    args = (*first.split(), *args[1:])
            elif isinstance(first, bytes) and b" " in first:
                args = (*first.split(), *args[1:])
            assert _pack is not None
            try:
                return [_pack(args)]
            except TypeError:  # a type hiredis does not pack (memoryview, ...)
                packed: list[bytes] = super().pack_command(*args)
                return packed

    HiredisPacking.__name__ = HiredisPacking.__qualname__ = f"HiredisPacking{base.__name__}"
    _classes[base] = HiredisPacking
    return HiredisPacking


def use_hiredis_packing(client: aioredis.Redis) -> aioredis.Redis:
    """Make ``client``'s future connections pack commands with hiredis."""
    if _pack is not None:
        pool = client.connection_pool
        pool.connection_class = _packing_class(pool.connection_class)
    return client
