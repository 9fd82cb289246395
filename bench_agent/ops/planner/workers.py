"""Independent runs on every core, results in job order.

The jobs hold the agent's config objects, whose read-only mappings cannot be
pickled; forked workers inherit the job list instead, and only an index goes in
and a plain (JSON-able) result comes out."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar, cast

_J = TypeVar("_J")
_R = TypeVar("_R")
_jobs: Sequence[object] = ()
_fn: Callable[[object], object] | None = None


def _run(index: int) -> object:
    assert _fn is not None
    return _fn(_jobs[index])


def map_jobs(fn: Callable[[_J], _R], jobs: Sequence[_J]) -> list[_R]:
    global _jobs, _fn
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(job) for job in jobs]
    _jobs, _fn = jobs, cast("Callable[[object], object]", fn)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            return cast("list[_R]", list(pool.map(_run, range(len(jobs)))))
    finally:
        _jobs, _fn = (), None
