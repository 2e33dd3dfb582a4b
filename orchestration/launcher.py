"""The run launcher of the instance (``orchestration/dagster.yaml``): runs execute in worker
processes that keep the code loaded from one run to the next.

Why: Dagster's ``DefaultRunLauncher`` asks the code server to spawn a fresh Python for each run
(``multiprocessing`` "spawn"), which imports the code location (Dagster, Polars, DuckDB, cvxpy,
SciPy and the project: 6.7 s on an idle 2-core machine, 10-12 s while another run computes)
before the run's first step. An intraday file's whole budget is a few seconds. Starting the
next process ahead of time is not enough: its import then competes for the cores with the run
in progress (on 2 cores, intraday runs took 36-41 s instead of 25 s). So ``WarmRunLauncher``
keeps ``workers`` processes per code location (``orchestration.run_worker``), each of which
loads the code once and then executes runs one after another, the way Celery workers execute
Dagster steps; a run finds one idle, and more are started only when more runs run at once.

Each run is executed exactly as ``dagster api execute_run`` executes it (the worker calls that
command); what a worker does not share between runs:
- Code changes: a worker reports the modification times of the project files it imported; an
  idle one whose files changed since (an edit under ``make ui``) is ended and the run gets a
  fresh worker, so a run never executes stale code.
- A run that did not succeed ends its worker (nothing it left behind reaches the next run), and
  so does the ``max_runs``-th run (the memory runs kept is given back).
- Termination: the run is marked CANCELING; the worker's Dagster run cancellation thread sees
  it and interrupts the run, whichever process asked (the daemon or the webserver).
- Background jobs (``background_jobs``, the warehouse publish in ``orchestration/dagster.yaml``)
  run in workers of their own at a lower CPU priority (``background_nice``): on 2 cores a
  warehouse publish catching up with a large file slowed the next intraday runs from 5 s to
  9-10 s under the daemon.
- Run monitoring: ``check_run_worker_health`` reports whether the run's worker (its pid is the
  run's ``portfolio/run_worker_pid`` tag) is alive and still on that run. One host only: the
  launcher and its workers share a machine, as ``dagster-daemon`` and the default launcher's
  code servers do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from dagster import _check as check
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.origin import RepositoryPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, serialize_value
from dagster._serdes.config_class import ConfigurableClassData

# The run tag holding the pid of the run's worker process.
WORKER_PID_TAG = "portfolio/run_worker_pid"
DEFAULT_WORKERS = 2  # a run finds one idle while the other is being replaced
DEFAULT_MAX_RUNS = 100
DEFAULT_BACKGROUND_NICE = 10


class _Worker:
    """One ``orchestration.run_worker`` process of one code location: ``loading`` its code,
    ``idle``, running one run (``current`` is its id) or ``ended``."""

    def __init__(self, origin: RepositoryPythonOrigin, max_runs: int, on_change, nice: int = 0):
        cwd = getattr(origin.code_pointer, "working_directory", None) or None
        self.nice = nice
        self.process = subprocess.Popen(
            [origin.executable_path or sys.executable, "-m", "orchestration.run_worker", "--max-runs", str(max_runs),
             "--nice", str(nice)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, text=True,
        )
        self.started = time.time()
        self.state = "loading"
        self.loaded = False  # it reported ready once
        self.current: str | None = None
        self.last_job: str | None = None  # the job of the last run handed to it
        self.files: dict[str, int] = {}
        self.error: str | None = None
        self._on_change = on_change
        self.process.stdin.write(serialize_value(origin) + "\n")
        self.process.stdin.flush()
        # follows the worker's reports, and reaps the process when it exits (no zombie workers)
        threading.Thread(target=self._follow, daemon=True, name=f"run-worker-{self.process.pid}").start()

    def _follow(self) -> None:
        for line in self.process.stdout:
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.files = report.get("files") or self.files
            self.error = report.get("error", self.error)
            if "ready" in report:
                self.loaded = True
                if self.state == "loading":
                    self.state = "idle"
            elif "done" in report and report["done"] == self.current:
                self.current, self.state = None, "idle"
            self._on_change(self)
        self.process.wait()
        self.state = "ended"
        self._on_change(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.state != "ended" and self.process.poll() is None

    def stale(self) -> bool:
        """True when a source file the worker imported changed or vanished since it did."""
        for path, mtime_ns in self.files.items():
            try:
                if os.stat(path).st_mtime_ns != mtime_ns:
                    return True
            except OSError:
                return True
        return False

    def run(self, run_id: str, args: ExecuteRunArgs) -> bool:
        """Hand the worker run ``run_id``; False when it is gone (its input closed)."""
        self.current, self.state, self.last_job = run_id, "running", args.job_origin.job_name
        try:
            self.process.stdin.write(serialize_value(args) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.current = None
            return False
        return True

    def end(self) -> None:
        """End the worker once it is idle: end of input makes it exit."""
        try:
            self.process.stdin.close()
        except OSError:
            pass


def choose_idle(idle: list[_Worker], job_name: str) -> _Worker:
    """Of the ``idle`` workers, the one for a run of ``job_name``: the first whose last run was
    of that job, else the first that has run nothing, else the first.

    Why: a worker keeps what its runs computed (table handles, market frames, compiled
    rebalance problems: assets.table_handles, assets.memo, assets.rebalancing.PROBLEMS). With
    the first idle worker taken, an intraday run followed its warehouse run onto the other
    worker now and then and paid for all of it again: 10.1 s against 5.2 s under the daemon."""
    return next((w for w in idle if w.last_job == job_name), None) or next(
        (w for w in idle if w.last_job is None), idle[0])


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launch each run in a worker process that already holds the run's code location
    (module docstring). Config: ``workers``, the workers kept per code location (more are
    started while more runs run at once, and ended once idle); ``max_runs``, the runs a worker
    executes before it is replaced; ``background_jobs``, jobs whose runs go to workers of their
    own (one kept) started ``background_nice`` lower in CPU priority."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, workers: int = DEFAULT_WORKERS,
                 max_runs: int = DEFAULT_MAX_RUNS, background_jobs: list[str] | None = None,
                 background_nice: int = DEFAULT_BACKGROUND_NICE):
        self._inst_data = inst_data
        self._workers = check.int_param(workers, "workers")
        self._max_runs = check.int_param(max_runs, "max_runs")
        self._background = frozenset(check.opt_list_param(background_jobs, "background_jobs", of_type=str))
        self._background_nice = check.int_param(background_nice, "background_nice")
        # by (code location, nice): the location and the workers
        self._pools: dict[tuple[str, int], tuple[RepositoryPythonOrigin, list[_Worker]]] = {}
        self._running: dict[str, _Worker] = {}  # run id -> its worker
        self._lock = threading.RLock()
        self._closed = False
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        from dagster import Field, IntSource, Noneable, StringSource

        return {"workers": Field(IntSource, is_required=False, default_value=DEFAULT_WORKERS),
                "max_runs": Field(IntSource, is_required=False, default_value=DEFAULT_MAX_RUNS),
                "background_jobs": Field(Noneable([StringSource]), is_required=False, default_value=None),
                "background_nice": Field(IntSource, is_required=False, default_value=DEFAULT_BACKGROUND_NICE)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = check.not_none(run.job_code_origin, f"run {run.run_id} has no code origin")
        args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        nice = self._background_nice if origin.job_name in self._background else 0
        with self._lock:
            pool = self._pool(origin.repository_origin, nice)
            worker, why = self._take(origin.repository_origin, pool, origin.job_name, nice)
            if not worker.run(run.run_id, args):  # it exited in between: a fresh one
                worker = self._spawn(origin.repository_origin, pool, nice)
                why = "a new worker: the one chosen had exited"
                check.invariant(worker.run(run.run_id, args), f"run worker pid {worker.pid} exited at once")
            self._running = {run_id: w for run_id, w in self._running.items() if w.alive() and w.current == run_id}
            self._running[run.run_id] = worker
        self._instance.add_run_tags(run.run_id, {WORKER_PID_TAG: str(worker.pid)})
        self._instance.report_engine_event(f"Run handed to run worker pid {worker.pid} ({why}).", run, cls=self.__class__)

    def _pool(self, origin: RepositoryPythonOrigin, nice: int = 0) -> list[_Worker]:
        """The workers of code location ``origin`` started ``nice`` lower in priority."""
        return self._pools.setdefault((serialize_value(origin), nice), (origin, []))[1]

    def _spawn(self, origin: RepositoryPythonOrigin, pool: list[_Worker], nice: int = 0) -> _Worker:
        """A new worker of ``origin``, added to ``pool``."""
        worker = _Worker(origin, self._max_runs, self._changed, nice)
        pool.append(worker)
        return worker

    def _kept(self, nice: int) -> int:
        """How many workers a pool keeps: ``workers``, or one for background jobs (``nice`` > 0)."""
        return 1 if nice else self._workers

    def _take(self, origin: RepositoryPythonOrigin, pool: list[_Worker], job_name: str,
              nice: int = 0) -> tuple[_Worker, str]:
        """A worker of ``origin`` (from its ``pool``) for a run of ``job_name``, and how it was
        chosen: an idle one whose code is current (stale ones are ended; ``choose_idle``), else
        one still loading, else a new one; the pool is then topped up to ``workers``."""
        pool[:] = [w for w in pool if w.alive()]
        stale = [w for w in pool if w.state == "idle" and w.stale()]
        for worker in stale:
            worker.end()
            pool.remove(worker)
        idle = [w for w in pool if w.state == "idle"]
        loading = [w for w in pool if w.state == "loading"]
        if idle:
            worker = choose_idle(idle, job_name)
            why = f"warm: its code loaded {time.time() - worker.started:.1f} s before, its last run of " \
                  f"{worker.last_job or 'no job'}"
        elif loading:
            worker = loading[0]
            why = f"its code still loading since {time.time() - worker.started:.1f} s"
        else:
            worker = self._spawn(origin, pool, nice)
            why = "a new worker: none idle"
        if stale:
            why += f"; {len(stale)} worker(s) ended: code changed since they loaded it"
        self._top_up(origin, pool, nice)
        return worker, why

    def _top_up(self, origin: RepositoryPythonOrigin, pool: list[_Worker], nice: int) -> None:
        while not self._closed and len(pool) < self._kept(nice):
            self._spawn(origin, pool, nice)

    def _changed(self, worker: _Worker) -> None:
        """A worker's state changed: replace an ended one, end idle ones beyond ``workers``."""
        with self._lock:
            for origin, pool in self._pools.values():
                if worker not in pool:
                    continue
                if worker.state == "ended":
                    pool.remove(worker)
                    if worker.loaded:  # one that never loaded is not replaced in a loop
                        self._top_up(origin, pool, worker.nice)
                elif worker.state == "idle" and len(pool) > self._kept(worker.nice):
                    pool.remove(worker)
                    worker.end()

    def terminate(self, run_id: str) -> bool:
        check.str_param(run_id, "run_id")
        if not self.has_instance:
            return False
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        # the worker's cancellation thread interrupts the run once it sees CANCELING; a worker
        # of this launcher is interrupted now
        self._instance.report_run_canceling(run)
        worker = self._running.get(run_id)
        if worker is not None and worker.alive() and worker.current == run_id:
            os.kill(worker.pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        pid = run.tags.get(WORKER_PID_TAG)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.NOT_FOUND, "the run has no worker pid tag")
        worker = self._running.get(run.run_id)
        if worker is not None:
            code = worker.process.poll()
            if code is not None:
                return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker pid {pid} exited with code {code}",
                                            run_worker_id=pid)
            if worker.current != run.run_id:
                return CheckRunHealthResult(WorkerStatus.SUCCESS, f"run worker pid {pid} finished the run",
                                            run_worker_id=pid)
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)
        try:  # launched by another process (the webserver asks about the daemon's workers)
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker pid {pid} is gone", run_worker_id=pid)
        except PermissionError:
            pass
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)

    def dispose(self) -> None:
        with self._lock:
            self._closed = True
            for _, pool in self._pools.values():
                for worker in pool:
                    worker.end()
            self._pools.clear()
