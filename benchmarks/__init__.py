"""Benchmarks of the bus library beside each broker's raw client, and the decision report.

``bus bench [URL ...] --profile quick|full --out DIR`` (see :mod:`benchmarks.cli`)
runs the workloads of :mod:`benchmarks.workloads` on ``memory://`` and on each
broker given (or every broker the provisioning can bring up with ``--all``), on
the library and on the broker's raw client with the same settings, and writes
``results.json``, ``report.md`` and PNG charts.

Layout: :mod:`~benchmarks.config` (typed profiles), :mod:`~benchmarks.drivers`
(the library and the raw clients behind one interface),
:mod:`~benchmarks.workloads`, :mod:`~benchmarks.runner`,
:mod:`~benchmarks.results` (the JSON model), :mod:`~benchmarks.report`.
"""

from benchmarks.config import PROFILES, BenchConfig, profile

__all__ = ["PROFILES", "BenchConfig", "profile"]
