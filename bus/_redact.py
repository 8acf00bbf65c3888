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
    A password the user forgot to percent-encode (``/``, ``?``, ``#`` or ``@`` in it)
    or a mistyped ``scheme:/`` moves the ``@`` out of what a URL parser calls the
    host part; then everything up to the last ``@`` is treated as the user part,
    which may mask more than the password but never shows it.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        masked = _mask_stray_userinfo(url, parts.scheme)
        if masked != url:
            return redact_url(masked)  # the user part now parses: query secrets next
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


def _mask_stray_userinfo(url: str, scheme: str) -> str:
    """Mask the password of a user part that a URL parser did not recognise: the text
    between ``scheme:`` (and its slashes) and the last ``@``."""
    head, colon, rest = url.partition(":")
    if not colon:
        return url
    body = rest.lstrip("/")
    slashes = rest[: len(rest) - len(body)]
    userinfo, _, tail = body.rpartition("@")
    user, sep, _secret = userinfo.partition(":")
    if sep:
        userinfo = f"{user}:{_MASK}"
    elif scheme.lower() in _TOKEN_SCHEMES:
        userinfo = _MASK
    return f"{head}:{slashes}{userinfo}@{tail}"
