"""Process memory policy: keep freed memory in the process for reuse.

Why: a rebuild allocates and frees large columns shard after shard. By default both
allocators in the process hand large freed blocks back to the operating system (glibc, which
numpy uses, maps every block over its mmap threshold separately and unmaps it on free; Polars
configures its jemalloc to purge freed pages after 0.5 s and 1 s), so the next shard's columns land
on fresh pages that the kernel must zero first. On the 2-core VM this project is measured on,
``perf record`` of a standard-book rebuild put 41% of all cycles in the kernel's
``clear_page_erms``, and system time equalled user time. Keeping freed memory for a few
seconds cut the rebuild's ledger assembly (11 shards, one at a time) from 10.4 s to 3.4 s on
the same input; the cost is a somewhat higher resident size (see ``JEMALLOC_CONF``).

How:
- Polars' jemalloc reads ``_RJEM_MALLOC_CONF`` once, when Polars is first imported (Polars
  puts its own defaults first and appends what the environment holds, so the later setting
  wins), so ``keep_freed_memory`` must run before ``import polars``:
  ``orchestration/__init__.py`` calls it, which covers the ``portfolio`` command and Dagster
  code servers. An explicit ``_RJEM_MALLOC_CONF`` in the environment is left alone.
- glibc reads ``mallopt`` at any time: large blocks come from the heap (no per-block mmap), the
  heap top is not trimmed, and every thread allocates from that one heap (one arena). glibc
  otherwise gives each new thread an arena of its own, made of mmapped heaps of at most 64 MiB,
  and a block larger than that is mmapped whatever ``M_MMAP_MAX`` says and unmapped on free.
  Shards are built on threads, and the lot replay of a 1M-trade shard writes arrays of up to
  192 MB: they landed on fresh (huge) pages every build. In the standard book's rebuild
  (four in a row, the first left out), ``perf`` put 17.5% of the cycles in
  ``clear_page_erms``, 15% under the replay kernel's huge-page faults; with one arena a
  rebuild took 8.9-9.1 s against 9.8-11.5 s, system time 1.3-1.8 s against 2.9-5.4 s (those
  figures include the threads' waits on the one heap's lock: numpy's blocks are few and large,
  and small Python objects have an allocator of their own). The price: the heap keeps the
  threads' freed blocks too, so ``portfolio run`` on the standard book peaked at 10.16 GiB
  resident against 9.58 GiB before (one run each).
  Only on Linux with glibc; elsewhere nothing is changed.
Set ``PORTFOLIO_RETURN_FREED_MEMORY=1`` to keep the allocators' defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

# Five seconds: the next shard, a second or two later, reuses the pages; a long run does not sit
# at its high-water mark. Measured on the standard book (``portfolio run``, peak RSS): never
# purging (-1) peaked at 18.1 GiB, Polars' defaults at 10.4 GiB, five seconds at 10.7 GiB; the
# rebuild benchmark ran as fast with five seconds as with -1 (10.6 and 10.8 s).
JEMALLOC_CONF = "dirty_decay_ms:5000,muzzy_decay_ms:5000"

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> dict[str, bool]:
    """Configure the allocators of this process to keep freed memory (see the module doc).

    Returns which parts are in effect: ``jemalloc`` (False when Polars was loaded before the
    first call, an explicit configuration was given, or the opt-out is set) and ``glibc``.
    Calling it again is harmless.
    """
    global _jemalloc_set
    if os.environ.get("PORTFOLIO_RETURN_FREED_MEMORY") == "1":
        return {"jemalloc": False, "glibc": False}
    if "polars" not in sys.modules and "_RJEM_MALLOC_CONF" not in os.environ:
        os.environ["_RJEM_MALLOC_CONF"] = JEMALLOC_CONF
        _jemalloc_set = True
    return {"jemalloc": _jemalloc_set, "glibc": _glibc_keep_freed_memory()}


_jemalloc_set = False  # whether this process set the configuration (so a second call agrees)


def _glibc_keep_freed_memory() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # no mmap per large block: freed blocks go back to the heap, where the next ones reuse
        # them; never trim the heap top (INT_MAX bytes is "never" for mallopt's int); and one
        # arena, so a thread's large blocks come from that heap too (see the module doc)
        return (
            bool(libc.mallopt(_M_MMAP_MAX, 0))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            and bool(libc.mallopt(_M_ARENA_MAX, 1))
        )
    except (OSError, AttributeError):
        return False
