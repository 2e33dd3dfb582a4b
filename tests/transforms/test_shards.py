import polars as pl
import pytest
from hypothesis import given, strategies as st

from transforms.shards import map_shards, portfolio_shards


def test_shards_pack_portfolios_in_id_order():
    trades = pl.DataFrame({"portfolio_id": ["P1"] * 3 + ["P2"] * 2 + ["P3"] * 6 + ["P4"]})
    shards = portfolio_shards(trades, max_rows=4)
    # rows before: P1 0, P2 3, P3 5, P4 11 -> shard 0, 0, 1, 2
    assert [s.to_list() for s in shards] == [["P1", "P2"], ["P3"], ["P4"]]


def test_no_rows_no_shards_and_bad_size():
    assert portfolio_shards(pl.DataFrame({"portfolio_id": []}, schema={"portfolio_id": pl.String}), 10) == []
    with pytest.raises(ValueError):
        portfolio_shards(pl.DataFrame({"portfolio_id": ["P1"]}), 0)


@given(st.lists(st.sampled_from([f"P{i}" for i in range(30)]), min_size=1, max_size=300), st.integers(1, 50))
def test_every_portfolio_in_exactly_one_shard(ids, max_rows):
    frame = pl.DataFrame({"portfolio_id": ids})
    shards = portfolio_shards(frame, max_rows)
    flat = [p for s in shards for p in s.to_list()]
    assert sorted(flat) == sorted(set(ids)) and len(flat) == len(set(ids))
    counts = dict(frame.group_by("portfolio_id").len().iter_rows())
    for s in shards:
        rows = sum(counts[p] for p in s.to_list())
        # a shard stops before the portfolio that starts at the next multiple of max_rows
        assert rows - counts[s[-1]] < max_rows


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_map_shards_keeps_shard_order_and_bounds_shards_in_flight(workers):
    import threading
    import time

    lock, alive, peak = threading.Lock(), [0], [0]
    first_batch = threading.Barrier(workers) if workers > 1 else None

    def work(k):
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        if first_batch is not None and k < workers:
            first_batch.wait(timeout=10)  # the first `workers` shards really run at once
        time.sleep(0.002 * (k % 3))  # later shards may finish first
        return k * k

    out = []
    for result in map_shards(work, range(12), workers):
        out.append(result)
        with lock:  # the caller is done with this shard's result
            alive[0] -= 1
    assert out == [k * k for k in range(12)]
    # a shard counts from its start until the caller has taken its result
    assert peak[0] == max(1, workers)


def test_map_shards_raises_the_failing_shards_error_at_its_turn():
    def work(k):
        if k == 3:
            raise ValueError("bad shard 3")
        return k

    seen = []
    with pytest.raises(ValueError, match="bad shard 3"):
        for result in map_shards(work, range(6), 2):
            seen.append(result)
    assert seen == [0, 1, 2]


def test_map_shards_of_nothing_is_empty():
    assert list(map_shards(lambda k: k, [], 2)) == []


def test_pools_are_kept_per_role_and_survive_a_failed_map():
    import threading

    from transforms.shards import InPlace, shared_pool

    assert shared_pool("shard", 2) is shared_pool("shard", 2)
    assert shared_pool("book", 1) is not shared_pool("shard", 1)

    def fail(x):
        if x == 1:
            raise ValueError("bad shard")
        return x

    with pytest.raises(ValueError):
        list(map_shards(fail, range(4), 2))
    names = set()
    assert list(map_shards(lambda x: names.add(threading.current_thread().name) or x, range(6), 2)) == list(range(6))
    assert all(name.startswith("shard") for name in names)  # the kept pool's threads, still usable

    ran_here = InPlace().submit(threading.current_thread)
    assert ran_here.result() is threading.current_thread()
    with pytest.raises(ZeroDivisionError):
        InPlace().submit(lambda: 1 / 0).result()


def test_run_shared_returns_results_in_task_order_and_uses_both_threads():
    import threading
    import time

    from transforms.shards import InPlace, run_shared, shared_pool

    both = threading.Barrier(2, timeout=10)  # tasks 0 and 1 wait for each other: two threads

    def task(k):
        def run():
            if k < 2:
                both.wait()
            time.sleep(0.001 * (k % 3))  # uneven costs
            return k, threading.current_thread().name
        return run

    out = run_shared([task(k) for k in range(20)], shared_pool("test-shared", 1))
    assert [k for k, _ in out] == list(range(20))
    assert out[0][1] != out[1][1]
    # InPlace: everything on this thread, same results
    alone = run_shared([task(k) for k in range(2, 7)], InPlace())
    assert alone == [(k, threading.current_thread().name) for k in range(2, 7)]
    assert run_shared([], InPlace()) == []


def test_run_shared_inside_the_pools_only_thread_runs_alone_without_deadlock():
    from transforms.shards import run_shared, shared_pool

    pool = shared_pool("test-nested", 1)
    # the outer task holds the pool's one thread: the inner helper is queued, then cancelled
    outer = pool.submit(lambda: run_shared([lambda k=k: k * 2 for k in range(6)], pool))
    assert outer.result(timeout=10) == [0, 2, 4, 6, 8, 10]


def test_run_shared_raises_a_tasks_error_after_both_threads_stop():
    import threading

    from transforms.shards import run_shared, shared_pool

    ran = []
    lock = threading.Lock()

    def task(k):
        def run():
            with lock:
                ran.append(k)
            if k == 2:
                raise ValueError("bad task 2")
            return k
        return run

    with pytest.raises(ValueError, match="bad task 2"):
        run_shared([task(k) for k in range(50)], shared_pool("test-shared", 1))
    after = len(ran)
    assert 3 <= after < 50  # the rest were dropped once the error was seen
    assert len(ran) == after  # nothing still running afterwards
