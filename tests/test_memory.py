"""The process memory policy (orchestration.memory), checked in fresh interpreters: it must act
before Polars is loaded, and an explicit allocator configuration or the opt-out wins."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the module is loaded from its file, not through ``orchestration/__init__.py`` (which applies
# the policy on import), so the probe decides what happens first
PROBE = (
    "import importlib.util, json, os, sys\n"
    "{before}\n"
    "spec = importlib.util.spec_from_file_location('memory', 'orchestration/memory.py')\n"
    "memory = importlib.util.module_from_spec(spec); spec.loader.exec_module(memory)\n"
    "took = memory.keep_freed_memory()\n"
    "assert memory.keep_freed_memory() == took  # a second call agrees\n"
    "print(json.dumps({{'took': took, 'conf': os.environ.get('_RJEM_MALLOC_CONF')}}))\n"
)


def _probe(before: str = "", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("_RJEM_MALLOC_CONF", "PORTFOLIO_RETURN_FREED_MEMORY")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keeps_freed_memory_when_called_before_polars():
    from orchestration.memory import JEMALLOC_CONF

    result = _probe()
    assert result["took"]["jemalloc"] is True and result["conf"] == JEMALLOC_CONF
    if sys.platform == "linux":
        assert result["took"]["glibc"] is True


def test_importing_orchestration_applies_it_and_polars_still_works():
    from orchestration.memory import JEMALLOC_CONF

    code = "import orchestration, polars as pl, os; print(os.environ['_RJEM_MALLOC_CONF'], pl.DataFrame({'a': [1, 2]})['a'].sum())"
    clean = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True, check=True)
    conf, total = out.stdout.split()
    # Polars puts its defaults first and appends the environment's setting, which wins
    assert conf.endswith("," + JEMALLOC_CONF) and total == "3"


def test_too_late_once_polars_is_loaded_and_explicit_settings_win():
    late = _probe(before="import polars")
    from orchestration.memory import JEMALLOC_CONF

    assert late["took"]["jemalloc"] is False and JEMALLOC_CONF not in late["conf"]  # Polars' own
    explicit = _probe(_RJEM_MALLOC_CONF="dirty_decay_ms:1000")
    assert explicit["took"]["jemalloc"] is False and explicit["conf"] == "dirty_decay_ms:1000"


def test_opt_out_changes_nothing():
    result = _probe(PORTFOLIO_RETURN_FREED_MEMORY="1")
    assert result["took"] == {"jemalloc": False, "glibc": False} and result["conf"] is None


# a thread writes a 100 MB block (over glibc's 64 MiB per-thread heap), frees it, then writes
# another: the minor page faults of each round, counted in a fresh interpreter
REUSE_PROBE = (
    "import importlib.util, json, resource, threading\n"
    "spec = importlib.util.spec_from_file_location('memory', 'orchestration/memory.py')\n"
    "memory = importlib.util.module_from_spec(spec); spec.loader.exec_module(memory)\n"
    "memory.keep_freed_memory()\n"
    "import numpy as np\n"
    "faults = []\n"
    "def rounds():\n"
    "    for _ in range(2):\n"
    "        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
    "        block = np.ones(100_000_000 // 8); del block\n"
    "        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)\n"
    "t = threading.Thread(target=rounds); t.start(); t.join()\n"
    "print(json.dumps(faults))\n"
)


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="the allocator part of the policy is for glibc"
)
def test_a_threads_large_blocks_reuse_freed_memory():
    clean = {k: v for k, v in os.environ.items() if k not in ("_RJEM_MALLOC_CONF", "PORTFOLIO_RETURN_FREED_MEMORY")}

    def faults(**env: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", REUSE_PROBE], cwd=ROOT, env={**clean, **env},
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = faults()
    assert first > 0 and second <= first // 10  # the second block lands on the first one's pages
    first, second = faults(PORTFOLIO_RETURN_FREED_MEMORY="1")
    assert second >= first // 2  # glibc's default: mapped afresh, faulted again
