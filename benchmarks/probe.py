"""The machine's speed as this process sees it, measured by a fixed CPU workload.

On a shared virtual machine the same code can run markedly faster or slower from
one run to the next (neighbours on the host, the CPU's clock), and no figure of a
broker can tell that drift from a change in the broker or the library. So before
each backend's pass of every round the runner times one fixed, broker-free piece of
pure Python (string formatting, dict inserts, bytes: the kind of work a client
library does per message). Its rate, recorded in ``results.json``, lets a
comparison of two runs say how much the machine itself moved between them.
"""

from __future__ import annotations

import statistics
import time

__all__ = ["cpu_probe"]

_ITEMS = 5_000


def _work() -> int:
    table: dict[str, bytes] = {}
    for i in range(_ITEMS):
        key = f"probe.{i}"
        table[key] = key.encode() * 4
    return sum(len(v) for v in table.values())


def cpu_probe(repeats: int = 7) -> float:
    """Items per second of the fixed workload: the median of ``repeats`` timings
    (a few milliseconds each, ~30 ms in all on a slow machine)."""
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _work()
        timings.append(time.perf_counter() - t0)
    return round(_ITEMS / statistics.median(timings), 1)
