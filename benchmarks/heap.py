"""Keep the harness's own heap out of the garbage collections a run triggers.

CPython's cyclic collector runs a full (generation 2) collection every so often as
objects are allocated, and a full collection traverses every tracked object in the
process: here the imported client libraries of five brokers, pydantic models, the
results gathered so far. In `bus bench --profile quick` on memory:// and Redis,
49 full collections took 2.6 s together, up to 167 ms each, while a measured run
lasts about 0.2 s: a run in which one happened to fall lost up to half its rate,
a run beside it nothing, so the figure's min-max spread and its value in the next
run followed where the collections fell rather than what was measured.

:func:`settle` (before each run, outside its clocks:
:meth:`benchmarks.workloads.Context.begin`) collects what is garbage and then moves
every object still alive into CPython's permanent generation (:func:`gc.freeze`),
which later collections do not traverse; every run thus also starts with empty young
generations. The collector keeps running during the runs: the collections that what
a run allocates triggers, and the traversal of what it allocated, still count, on
both sides of each ratio alike; what no longer counts is the size of the harness,
nor where an earlier run left the collector's counters. With it, the same bench on
memory:// and Redis had 2 automatic full collections in all, against 49; the
explicit ones took a median 0.1 ms. :func:`release` (after each
backend's pass, and at the end) puts the frozen objects back so that those that
became garbage meanwhile (closed connections, finished workloads) are collected.
"""

from __future__ import annotations

import gc

__all__ = ["release", "settle"]


def settle() -> None:
    """Collect garbage, then freeze everything alive (see the module docstring)."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """Unfreeze what :func:`settle` froze and collect what became garbage since."""
    gc.unfreeze()
    gc.collect()
