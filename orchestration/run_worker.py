"""A run worker that keeps its code location loaded from one run to the next
(``orchestration.launcher.WarmRunLauncher`` starts it; ``python -m orchestration.run_worker``).

Protocol: JSON lines in on stdin, JSON lines out on the worker's original stdout (the
channel); everything else the process prints, runs included, goes to stderr.
1. In: the serialized ``RepositoryPythonOrigin`` of the code location. The worker imports it
   and builds its repository (the 6-10 s a fresh ``dagster api execute_run`` spends before a
   run's first step). Out: ``{"ready": true, "files": {path: mtime_ns}}``, the source files of
   the code it imported (``source_files``), so the launcher can tell whether the code changed
   since; or ``{"ready": false, "error": ...}`` when the import failed (runs are still executed
   and report the failure, as a fresh worker's would).
2. In, any number of times: the serialized ``ExecuteRunArgs`` of one run, which the worker
   executes exactly as ``dagster api execute_run`` does (that command, called in this process).
   Out: ``{"done": run_id, "code": exit_code, "files": ...}``.
3. End of input: exit. The worker also exits after a run that did not succeed (a terminated or
   failed run may leave state behind that the next run must not inherit) and after
   ``--max-runs`` runs (memory a run kept is given back).
"""

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path


def source_files() -> dict[str, int]:
    """``{path: mtime_ns}`` of the imported modules' files outside the Python installation and
    its environment (the standard library and installed packages): the code location's own."""
    installed = [Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = Path(path).resolve()
        if not any(path.is_relative_to(p) for p in installed) and path.exists():
            files[str(path)] = path.stat().st_mtime_ns
    return files


def warm_up(origin_json: str) -> dict:
    """Import the code location ``origin_json`` names and build its repository; the ready line."""
    from dagster._core.origin import RepositoryPythonOrigin
    from dagster._serdes import deserialize_value
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    try:
        origin = deserialize_value(origin_json, RepositoryPythonOrigin)
        recon_repository_from_origin(origin).get_definition()
        import dagster._cli.api  # noqa: F401  (what runs the runs, imported ahead too)
    except Exception:  # the runs report it: this is only a head start
        return {"ready": False, "error": traceback.format_exc(limit=5)}
    return {"ready": True, "files": source_files()}


def execute(run_json: str) -> tuple[str, int, bool]:
    """Execute one run (``dagster api execute_run``'s own command); its id, exit code, and
    whether it succeeded (its status in the instance afterwards). While it runs, Dagster's run
    cancellation thread watches the run: marking it CANCELING (``WarmRunLauncher.terminate``,
    from any process) interrupts it."""
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._cli.api import execute_run_command
    from dagster._core.execution.run_cancellation_thread import start_run_cancellation_thread
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import deserialize_value

    args = deserialize_value(run_json, ExecuteRunArgs)
    code = 0
    with DagsterInstance.from_ref(args.instance_ref) as instance:
        watcher, stop_watching = start_run_cancellation_thread(instance, args.run_id)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            execute_run_command.main([run_json], prog_name="dagster api execute_run", standalone_mode=False)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except KeyboardInterrupt:
            code = 1
        finally:
            # an interrupt for this run that comes after it ended (the launcher's and the
            # cancellation thread's both) must not end the worker before it reports
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stop_watching.set()
            watcher.join()
        run = instance.get_run_by_id(args.run_id)
    return args.run_id, code, run is not None and run.status == DagsterRunStatus.SUCCESS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-runs", type=int, default=100, help="exit after this many runs")
    parser.add_argument("--nice", type=int, default=0, help="lower the worker's CPU priority by this much first")
    options = parser.parse_args(argv)
    max_runs = options.max_runs
    if options.nice:
        os.nice(options.nice)
    # the protocol's own channel; fd 1 then points at stderr for everything else
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def say(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    origin_json = sys.stdin.readline()
    if not origin_json:
        return 0
    say(warm_up(origin_json))
    for runs in range(1, max_runs + 1):
        run_json = sys.stdin.readline().strip()
        if not run_json:
            return 0
        run_id, code, succeeded = execute(run_json)
        say({"done": run_id, "code": code, "files": source_files()})
        if not succeeded:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
