"""Portfolio shards: every per-portfolio computation is a group-by on ``portfolio_id``, so a
shard of portfolios is just a filter, and work done shard by shard needs the memory of one
shard, not of the whole book (and can be spread over processes or machines)."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from itertools import islice
from typing import TypeVar

import polars as pl

T = TypeVar("T")
R = TypeVar("R")

# Shards computed at once by default: one per core, at most two (each 1M-trade shard of a book
# with many wash-sale splits holds about 2 GB while it is built).
SHARD_WORKERS = max(1, min(2, os.cpu_count() or 1))


class InPlace(Executor):
    """An executor that runs each task on the caller's thread when it is submitted; for code
    written against an executor that must, at times, use no other thread. An exception is
    raised by the future's ``result()``, as from a thread."""

    def submit(self, fn: Callable[..., R], /, *args, **kwargs) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as error:
            done.set_exception(error)
        return done


def portfolio_shards(frame: pl.DataFrame, max_rows: int, key: str = "portfolio_id") -> list[pl.Series]:
    """Split the portfolios of ``frame`` into shards of about ``max_rows`` rows each.

    Input: any frame with a ``key`` column (e.g. trades); ``max_rows`` > 0. Output: a list of
    Series of portfolio ids, in id order, every id in exactly one shard. Rule: portfolios are
    taken in id order and a new shard starts when the rows before a portfolio reach the next
    multiple of ``max_rows`` (so a portfolio larger than ``max_rows`` has a shard of its own,
    and a portfolio is never split). Deterministic: the same frame gives the same shards.
    """
    if max_rows <= 0:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    sizes = frame.group_by(key).len().sort(key)
    if sizes.height == 0:
        return []
    shard = ((pl.col("len").cum_sum() - pl.col("len")) // max_rows).alias("shard")
    groups = sizes.with_columns(shard).group_by("shard", maintain_order=True).agg(pl.col(key))
    return [pl.Series(key, ids) for ids in groups[key].to_list()]


def map_shards(fn: Callable[[T], R], shards: Iterable[T], workers: int = 1) -> Iterator[R]:
    """``fn(shard)`` for each shard, yielded in shard order, computed on ``workers`` threads.

    Why threads: a shard's work is Polars, numpy and the compiled lot kernel, which all release
    the GIL, so two shards overlap on two cores without copying frames between processes.
    Memory stays bounded: at most ``workers`` shards are being computed or waiting to be
    consumed at any time (the next shard starts when the caller takes a result), so memory is
    about ``workers`` shards, not the whole book. ``workers <= 1`` runs in the caller's thread.
    An exception in ``fn`` is raised here, at that shard's turn, after the shards in flight
    finish.
    """
    if workers <= 1:
        yield from map(fn, shards)
        return
    pending = iter(shards)
    pool = shared_pool("shard", workers)
    running: deque[Future[R]] = deque(pool.submit(fn, s) for s in islice(pending, workers))
    try:
        while running:
            yield running.popleft().result()  # no local name: the caller alone holds it
            running.extend(pool.submit(fn, s) for s in islice(pending, 1))
    finally:  # an error, or the caller stopped early: the shards in flight finish first
        wait(running)


def run_shared(tasks: Sequence[Callable[[], R]], executor: Executor) -> list[R]:
    """``[task() for task in tasks]``, computed by this thread and one task on ``executor`` at
    once: each takes the next task as it gets free, so both finish within about one task of
    each other however the tasks' costs differ and whenever the executor's thread joins.

    Why: a fixed split of work between two threads leaves one waiting for the other when the
    machine slows one of them (on a shared host, often). Tasks must not depend on each other.
    The executor's part is cancelled if it has not started when this thread runs out of tasks
    (so a task already running on ``executor``'s only thread may call this with it), and an
    exception in a task is raised here once the other thread has stopped.
    """
    results: list = [None] * len(tasks)
    taken = iter(range(len(tasks)))  # next() on a range iterator is atomic under the GIL

    def work() -> None:
        try:
            for k in taken:
                results[k] = tasks[k]()
        except BaseException:
            for _ in taken:  # the other thread stops after its current task
                pass
            raise

    helper = executor.submit(work)
    try:
        work()
    finally:
        if not helper.cancel():
            helper.result()
    return results


_POOLS: dict[tuple[str, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads for ``name``, created on first use and kept.

    Why kept: Polars' allocator (jemalloc) gives each new thread an arena of its own, so work
    on fresh threads runs on memory the kernel must first map and zero. With a new pool per
    call, the demo book's rebuild took about 400 ms for its first eight runs (one per arena)
    against 120 ms on kept threads. Tasks of one pool must not wait on tasks of the same pool
    (they could be queued behind their waiter): use a pool per role.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get((name, workers))
        if pool is None:
            pool = _POOLS[(name, workers)] = ThreadPoolExecutor(workers, thread_name_prefix=name)
        return pool
