"""URL scheme -> backend class, resolved lazily.

Built-in backends live in an alias table (``"scheme" -> "module:Class"``) and are
imported only when a URL asks for them, so ``import bus`` never imports a broker
client. Third-party backends register under the ``bus.backends`` entry-point
group (name = URL scheme, value = ``"package.module:BackendClass"``), or at run
time with :func:`register`.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bus._redact import redact_url
from bus.errors import ConfigurationError, UnknownBackend

if TYPE_CHECKING:
    from bus.backend import Backend

__all__ = ["ENTRY_POINT_GROUP", "known_schemes", "register", "resolve"]

ENTRY_POINT_GROUP = "bus.backends"

_BUILTIN: dict[str, str] = {
    "memory": "backends.memory:MemoryBackend",
    "redis": "backends.redis_streams:RedisStreamsBackend",
    "rediss": "backends.redis_streams:RedisStreamsBackend",
    "amqp": "backends.rabbitmq:RabbitMQBackend",
    "amqps": "backends.rabbitmq:RabbitMQBackend",
    "nats": "backends.nats_jetstream:NatsJetStreamBackend",
    "tls": "backends.nats_jetstream:NatsJetStreamBackend",
    "kafka": "backends.kafka:KafkaBackend",
}
#: The pip extra that installs each built-in backend's client library.
_EXTRAS = {"redis": "redis", "rabbitmq": "rabbitmq", "nats_jetstream": "nats", "kafka": "kafka"}

_registered: dict[str, str | type[Backend]] = {}


def register(scheme: str, backend: str | type[Backend]) -> None:
    """Register ``backend`` (a class or ``"module:Class"``) for URL ``scheme``."""
    _registered[scheme.lower()] = backend


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    return sorted({*_BUILTIN, *_entry_points(), *_registered})


def scheme_of(url: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"bus URL must look like scheme://..., got {redact_url(str(url))!r}; "
            f"known schemes: {', '.join(known_schemes())}"
        )
    return urlsplit(url).scheme.lower()


def resolve(url: str) -> type[Backend]:
    """The backend class for ``url``; :class:`UnknownBackend` if none is registered."""
    scheme = scheme_of(url)
    target: str | type[Backend] | None = (
        _registered.get(scheme) or _BUILTIN.get(scheme) or _entry_points().get(scheme)
    )
    if target is None:
        known = known_schemes()
        close = difflib.get_close_matches(scheme, known, n=1)
        raise UnknownBackend(scheme, known, close[0] if close else None)
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(module_name.rpartition(".")[2])
        hint = f" (pip install 'bus-messaging[{extra}]')" if extra else ""
        raise ConfigurationError(
            f"backend for {scheme}:// cannot be imported: {exc}{hint}"
        ) from exc
    backend: type[Backend] = getattr(module, attr)
    return backend
