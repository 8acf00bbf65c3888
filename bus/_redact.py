"""Keep secrets out of logs and error messages."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]

_MASK = "***"
# query-string keys whose values are secrets (compared lower-case)
_SECRET_KEYS = frozenset(
    {"password", "passwd", "pass", "token", "secret", "auth", "sasl_plain_password"}
)
# schemes whose lone user part (scheme://SECRET@host) is a token, not a user name
_TOKEN_SCHEMES = frozenset({"nats", "tls"})


def redact_url(url: str) -> str:
    """``url`` with its password, token and secret query values replaced by ``***``.

    Handles multi-host URLs (``nats://u:p@a:4222,b:4222``) and never raises: an
    unparsable string becomes ``***``. A URL without secrets is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        if sep:
            userinfo = f"{user}:{_MASK}"
        elif parts.scheme.lower() in _TOKEN_SCHEMES:
            userinfo = _MASK
        netloc = f"{userinfo}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, _MASK if k.lower() in _SECRET_KEYS else v) for k, v in pairs], safe="*"
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
