"""What the figures were measured on: interpreter, client libraries, machine, load."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

__all__ = ["CLIENT_PACKAGES", "describe_environment", "load_average"]

CLIENT_PACKAGES = (
    "bus-messaging",
    "pydantic",
    "redis",
    "hiredis",
    "aio-pika",
    "aiormq",
    "nats-py",
    "aiokafka",
    "hdrhistogram",
    "matplotlib",
    "psutil",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _memory_gib() -> float | None:
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        return round(float(psutil.virtual_memory().total) / 2**30, 1)
    except Exception:
        return None


def describe_environment() -> dict[str, Any]:
    import bus

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "bus": bus.__version__,
        "packages": {name: _version(name) for name in CLIENT_PACKAGES},
        "load_average_start": load_average(),
        "network": "loopback (client and brokers on this machine)",
    }
