"""The harness keeps its own heap out of the collections a run triggers
(benchmarks.heap): garbage is collected and the live heap frozen before each run,
and everything is unfrozen again after each backend's pass and at the end."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from benchmarks import heap, runner
from benchmarks.config import apply_overrides, profile
from benchmarks.workloads import Context, Point

ONE_WORKLOAD = [
    "workloads=confirmed_publish",
    "runs=2",
    "rounds=2",
    "warmup_runs=0",
    "confirmed_publish.count=5",
    "poll_idle=false",
]


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Any:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settle_collects_garbage_then_freezes_what_is_alive() -> None:
    garbage = Cycle()
    dead = weakref.ref(garbage)
    del garbage  # a cycle: only the collector frees it
    alive = Cycle()
    heap.settle()
    try:
        assert dead() is None, "garbage made before settle() was frozen instead of collected"
        assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > len(gc.get_objects())  # most of the heap
    finally:
        heap.release()
    assert gc.get_freeze_count() == 0
    assert alive.me is alive


def test_release_collects_what_became_garbage_while_frozen() -> None:
    held = Cycle()
    ref = weakref.ref(held)
    heap.settle()
    del held  # garbage now, but frozen: no collection reaches it
    gc.collect()
    assert ref() is not None
    heap.release()
    assert ref() is None


@pytest.mark.parametrize("freeze", [True, False])
async def test_the_runs_froze_the_heap_and_the_bench_leaves_it_thawed(
    monkeypatch: pytest.MonkeyPatch, freeze: bool
) -> None:
    seen: list[int] = []
    measure = runner.WORKLOAD_FUNCS["confirmed_publish"]

    async def observed(ctx: Context) -> list[Point]:
        points = await measure(ctx)
        seen.append(gc.get_freeze_count())  # its runs froze the heap; the pass's end thaws
        return points

    monkeypatch.setitem(runner.WORKLOAD_FUNCS, "confirmed_publish", observed)
    config = apply_overrides(
        profile("quick"), [*ONE_WORKLOAD, f"freeze_heap={str(freeze).lower()}"]
    )
    results = await runner.run_benchmarks(runner.plan_urls(["memory://"]), config)
    assert [p.error for p in results.points] == [None]
    assert len(seen) == 2  # one workload, two rounds
    if freeze:
        assert all(count > 0 for count in seen)
    else:
        assert seen == [0, 0]
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("freeze", [True, False])
def test_every_run_begins_on_a_collected_frozen_heap(freeze: bool) -> None:
    config = apply_overrides(profile("quick"), [f"freeze_heap={str(freeze).lower()}"])
    ctx = Context(config, None, lambda: None, run_id="t", broker_proc=None)  # type: ignore[arg-type]
    garbage = Cycle()
    dead = weakref.ref(garbage)
    del garbage
    ctx.begin("run 1/6")
    try:
        if freeze:
            assert dead() is None
            assert gc.get_freeze_count() > 0
        else:
            assert gc.get_freeze_count() == 0
    finally:
        heap.release()
