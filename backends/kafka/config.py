"""``kafka://`` URL parsing and the aiokafka keyword arguments every client shares."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from bus._redact import redact_url
from bus.errors import ConfigurationError

from .options import KafkaOptions

__all__ = ["DEFAULT_PORT", "ClusterConfig", "parse_url"]

DEFAULT_PORT = 9092


@dataclass(frozen=True)
class ClusterConfig:
    """What a ``kafka://`` URL plus options resolve to."""

    bootstrap: tuple[str, ...]
    """``host:port`` of each bootstrap broker."""
    client_kwargs: dict[str, Any]
    """Connection and security keywords for AIOKafkaProducer / Consumer / AdminClient."""


def _endpoint(item: str, url: str) -> str:
    item = item.strip()
    if not item:
        raise ConfigurationError(f"empty broker address in {redact_url(url)!r}")
    if item.startswith("["):  # [ipv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or not host:
            raise ConfigurationError(f"malformed IPv6 address in {redact_url(url)!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"malformed address in {redact_url(url)!r}")
        host = f"[{host}]"
    else:
        host, _, port_text = item.partition(":")
        if not host or ":" in port_text:
            raise ConfigurationError(f"malformed address in {redact_url(url)!r}")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError(f"invalid port in {redact_url(url)!r}")
        port = int(port_text)
    return f"{host}:{port}"


def parse_url(url: str, options: KafkaOptions) -> ClusterConfig:
    """Resolve ``kafka://[user:password@]host:port[,host:port...]`` and the options.

    Raises :class:`bus.ConfigurationError` (never showing the password) for a bad
    URL or inconsistent security options.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigurationError(f"malformed kafka URL {redact_url(url)!r}") from None
    if parts.scheme.lower() != "kafka":
        raise ConfigurationError(f"not a kafka:// URL: {redact_url(url)!r}")
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            f"a kafka:// URL has no path (got {redact_url(url)!r}); "
            "use kafka://host:port[,host:port...]"
        )
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    if not netloc:
        raise ConfigurationError(f"kafka URL names no broker: {redact_url(url)!r}")
    bootstrap = tuple(_endpoint(item, url) for item in netloc.split(","))

    username = options.sasl_plain_username or username
    if options.sasl_plain_password is not None:
        password = options.sasl_plain_password.get_secret_value()
    if (username is None) != (password is None):
        raise ConfigurationError("SASL needs both a user name and a password")
    has_sasl = username is not None
    has_tls_files = bool(options.ssl_cafile or options.ssl_certfile)
    protocol = options.security_protocol
    if protocol is None:
        if has_sasl:
            protocol = "SASL_SSL" if has_tls_files else "SASL_PLAINTEXT"
        else:
            protocol = "SSL" if has_tls_files else "PLAINTEXT"
    if protocol.startswith("SASL") and not has_sasl:
        raise ConfigurationError(f"security_protocol={protocol} needs SASL credentials")
    if has_sasl and not protocol.startswith("SASL"):
        raise ConfigurationError(f"SASL credentials given but security_protocol={protocol}")
    if options.ssl_keyfile and not options.ssl_certfile:
        raise ConfigurationError("ssl_keyfile needs ssl_certfile")

    kwargs: dict[str, Any] = {
        "bootstrap_servers": list(bootstrap),
        "client_id": options.client_id,
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(options)
    if has_sasl:
        kwargs["sasl_mechanism"] = options.sasl_mechanism
        kwargs["sasl_plain_username"] = username
        kwargs["sasl_plain_password"] = password
    return ClusterConfig(bootstrap, kwargs)


def _ssl_context(options: KafkaOptions) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=options.ssl_cafile)
        if options.ssl_certfile:
            context.load_cert_chain(options.ssl_certfile, options.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load TLS files: {exc}") from exc
    context.check_hostname = options.ssl_check_hostname
    if not options.ssl_check_hostname:
        context.verify_mode = ssl.CERT_REQUIRED  # still verify the chain
    return context
