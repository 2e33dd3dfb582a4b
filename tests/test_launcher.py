"""The warm run launcher (``orchestration.launcher``): runs execute in workers that loaded the
code before the run came, never with stale code; termination, failures and health."""

import logging
import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableJob

from dagster._core.launcher import WorkerStatus
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from orchestration.launcher import WORKER_PID_TAG, WarmRunLauncher, choose_idle

ROOT = Path(__file__).resolve().parents[1]
JOBS = '''
import time
import dagster as dg


@dg.op
def answer() -> int:
    return 42


@dg.job
def quick():
    answer()


@dg.op
def wait_long() -> None:
    for _ in range(1200):  # 2 minutes unless cancelled
        time.sleep(0.1)


@dg.job
def slow():
    wait_long()
'''


@pytest.fixture
def jobs_file(tmp_path) -> Path:
    (tmp_path / "code").mkdir()
    path = tmp_path / "code" / "launcher_jobs.py"
    path.write_text(JOBS)
    return path


@pytest.fixture
def instance(tmp_path):
    overrides = {"run_launcher": {"module": "orchestration.launcher", "class": "WarmRunLauncher",
                                  "config": {"workers": 1}}}
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        yield instance


def launch(instance, jobs_file: Path, name: str) -> str:
    recon = ReconstructableJob.for_file(str(jobs_file), name)
    run = instance.create_run_for_job(job_def=recon.get_definition(), job_code_origin=recon.get_python_origin())
    instance.launch_run(run.run_id, workspace=None)
    return run.run_id


def wait_for(instance, run_id: str, statuses: set, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.status in statuses:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {instance.get_run_by_id(run_id).status} after {timeout} s")


def handed(instance, run_id: str) -> str:
    """The launcher's engine event: which worker the run got and why."""
    messages = [e.message for e in instance.all_logs(run_id) if e.message and "Run handed to" in e.message]
    assert len(messages) == 1, messages
    return messages[0]


def idle_worker(instance):
    """The launcher's one worker, once it is idle (its code loaded, no run)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        workers = [w for _, ws in instance.run_launcher._pools.values() for w in ws]
        if len(workers) == 1 and workers[0].state == "idle":
            return workers[0]
        time.sleep(0.1)
    raise AssertionError(f"no single idle worker: {[(w.pid, w.state) for _, ws in instance.run_launcher._pools.values() for w in ws]}")


def finished(instance, run_id: str):
    return wait_for(instance, run_id, {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                       dg.DagsterRunStatus.CANCELED})


def test_the_instance_settings_choose_the_warm_launcher(tmp_path):
    settings = yaml.safe_load((ROOT / "orchestration" / "dagster.yaml").read_text())
    with dg.instance_for_test(overrides=settings, temp_dir=str(tmp_path)) as instance:
        assert isinstance(instance.run_launcher, WarmRunLauncher)
        # a run whose worker died is failed by the monitoring daemon, then retried
        assert instance.run_monitoring_enabled and instance.run_retries_enabled


def test_runs_reuse_a_worker_that_loaded_the_code_before_they_came(instance, jobs_file):
    first = launch(instance, jobs_file, "quick")
    assert "a new worker: none idle" in handed(instance, first)
    assert finished(instance, first).status == dg.DagsterRunStatus.SUCCESS
    worker = idle_worker(instance)
    assert str(jobs_file.resolve()) in worker.files

    second = launch(instance, jobs_file, "quick")
    assert "warm: its code loaded" in handed(instance, second)
    assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
    assert instance.get_run_by_id(second).tags[WORKER_PID_TAG] == str(worker.pid)
    assert idle_worker(instance) is worker and worker.alive()


def test_a_worker_whose_code_changed_is_ended(instance, jobs_file):
    first = launch(instance, jobs_file, "quick")
    finished(instance, first)
    stale = idle_worker(instance)
    jobs_file.write_text(JOBS.replace("return 42", "return 43"))
    os.utime(jobs_file, ns=(time.time_ns(), stale.files[str(jobs_file.resolve())] + 10**9))

    second = launch(instance, jobs_file, "quick")
    assert "1 worker(s) ended: code changed" in handed(instance, second)
    assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
    stale.process.wait(30)  # end of input: the stale worker exits without running anything
    assert stale.process.returncode == 0
    assert instance.get_run_by_id(second).tags[WORKER_PID_TAG] != str(stale.pid)


def test_terminate_cancels_the_run_and_ends_its_worker(instance, jobs_file):
    run_id = launch(instance, jobs_file, "slow")
    run = wait_for(instance, run_id, {dg.DagsterRunStatus.STARTED})
    launcher = instance.run_launcher
    worker = launcher._running[run_id]
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    assert launcher.terminate(run_id)
    assert finished(instance, run_id).status == dg.DagsterRunStatus.CANCELED
    assert not launcher.terminate(run_id)  # finished: nothing to terminate
    worker.process.wait(30)  # a run that did not succeed ends its worker; a new one replaces it
    replacement = idle_worker(instance)
    assert replacement is not worker
    after = launch(instance, jobs_file, "quick")
    assert finished(instance, after).status == dg.DagsterRunStatus.SUCCESS


def test_terminate_from_another_process_goes_through_the_run_status(instance, jobs_file):
    run_id = launch(instance, jobs_file, "slow")
    wait_for(instance, run_id, {dg.DagsterRunStatus.STARTED})
    webserver = WarmRunLauncher()  # holds no worker: it can only mark the run CANCELING
    webserver.register_instance(instance)
    assert webserver.terminate(run_id)
    # the worker's cancellation thread polls every 10 s (Dagster's default)
    assert finished(instance, run_id).status == dg.DagsterRunStatus.CANCELED


def test_health_reports_a_worker_killed_under_its_run(instance, jobs_file):
    run_id = launch(instance, jobs_file, "slow")
    run = wait_for(instance, run_id, {dg.DagsterRunStatus.STARTED})
    launcher = instance.run_launcher
    worker = launcher._running[run_id]
    os.kill(worker.pid, signal.SIGKILL)
    worker.process.wait(30)
    health = launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED and "exited with code -9" in health.msg
    # from another process's launcher (no handle on the worker): by its pid
    time.sleep(0.5)  # the follower thread has reaped the process
    assert WarmRunLauncher().check_run_worker_health(run).status == WorkerStatus.FAILED
    # the monitoring daemon's check of the started run marks it failed (the instance's run
    # retries then relaunch it), rather than leaving it STARTED for ever
    monitor_started_run(instance, None, instance.get_run_record_by_id(run_id), logging.getLogger(__name__))
    failed = instance.get_run_by_id(run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert any("Marking run" in (e.message or "") for e in instance.all_logs(run_id))


def test_an_idle_worker_is_chosen_by_the_job_it_last_ran():
    class Idle:
        def __init__(self, name: str, last_job: str | None):
            self.name, self.last_job = name, last_job

    a, b, fresh = Idle("a", "publish_warehouse"), Idle("b", "intraday"), Idle("fresh", None)
    assert choose_idle([a, b, fresh], "intraday") is b  # its caches hold the intraday run's data
    assert choose_idle([a, b, fresh], "publish_warehouse") is a
    assert choose_idle([a, b, fresh], "rebalance") is fresh  # nobody ran it: one that ran nothing
    assert choose_idle([a, b], "rebalance") is a  # else the first


def test_a_background_job_runs_in_a_worker_of_its_own_at_lower_priority(tmp_path, jobs_file):
    overrides = {"run_launcher": {"module": "orchestration.launcher", "class": "WarmRunLauncher",
                                  "config": {"workers": 1, "background_jobs": ["slow"], "background_nice": 7}}}
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        quick = launch(instance, jobs_file, "quick")
        assert finished(instance, quick).status == dg.DagsterRunStatus.SUCCESS
        background = launch(instance, jobs_file, "slow")
        wait_for(instance, background, {dg.DagsterRunStatus.STARTED})
        pids = {run_id: int(instance.get_run_by_id(run_id).tags[WORKER_PID_TAG]) for run_id in (quick, background)}
        assert pids[quick] != pids[background]
        base = os.getpriority(os.PRIO_PROCESS, pids[quick])
        assert os.getpriority(os.PRIO_PROCESS, pids[background]) == min(base + 7, 19)
        instance.run_launcher.terminate(background)
        assert finished(instance, background).status == dg.DagsterRunStatus.CANCELED
        # a foreground run still goes to the foreground worker
        again = launch(instance, jobs_file, "quick")
        assert finished(instance, again).status == dg.DagsterRunStatus.SUCCESS
        assert int(instance.get_run_by_id(again).tags[WORKER_PID_TAG]) == pids[quick]
