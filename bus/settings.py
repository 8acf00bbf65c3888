"""Configuration from the environment or a settings file (pydantic-settings).

``BUS_URL`` selects the backend; ``BUS_SOURCE``, ``BUS_CONNECT_TIMEOUT`` and
``BUS_OPTIONS`` (a JSON object of backend options) complete it. A dotenv file is
read when given (``BusSettings(_env_file="bus.env")``) or named by
``BUS_ENV_FILE``. Backend options are validated against the backend's own
options model when connecting, so a typo is an error, not a silently ignored key.
"""

from __future__ import annotations

import os
from typing import Any

import pydantic
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

__all__ = ["BusSettings"]


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BUS_", env_file=os.environ.get("BUS_ENV_FILE"), extra="forbid"
    )

    url: str = "memory://"
    """Which broker: ``memory://``, ``redis://``, ``amqp://``, ``nats://``, ``kafka://``..."""
    source: str | None = None
    connect_timeout: float | None = pydantic.Field(default=None, gt=0)
    options: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Backend-specific options (``BUS_OPTIONS='{"ack_timeout": 30}'``)."""

    def connect_options(self) -> dict[str, Any]:
        opts = dict(self.options)
        if self.source is not None:
            opts.setdefault("source", self.source)
        if self.connect_timeout is not None:
            opts.setdefault("connect_timeout", self.connect_timeout)
        return opts

    def __repr__(self) -> str:
        from bus._redact import redact_url

        return f"BusSettings(url={redact_url(self.url)!r}, options={sorted(self.options)})"

    # pydantic's str() lists every field as it is: the URL's password and option values
    __str__ = __repr__

    @classmethod
    def from_environment(cls) -> BusSettings:
        """``BusSettings()``, with invalid values raised as :class:`bus.ConfigurationError`
        naming the variable and the problem, never the value (it may be a secret)."""
        from bus.errors import ConfigurationError

        try:
            return cls()
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"BUS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)
            )
            raise ConfigurationError(f"invalid bus settings: {problems}") from None
        except SettingsError as exc:
            # a complex field (BUS_OPTIONS) that is not JSON fails before validation;
            # the message names the field and its source, not the value
            raise ConfigurationError(
                f"invalid bus settings: {exc} (BUS_OPTIONS must be a JSON object)"
            ) from None
