"""glibc's allocator, set for a fit: big freed blocks are kept for the next iteration instead of unmapped.

A CPU step allocates and frees the same activations every iteration, most of them larger than glibc's largest mmap
threshold (32 MiB: a 128-channel 512x512 activation is 64 MiB in bf16). glibc serves each with a fresh ``mmap`` and
returns it with ``munmap``, so every iteration page-faults its whole working set in again: on the default net at
512 px that was about a quarter of the step (docs/fast.md, "Per iteration"). With mmap off and no trimming, freed
blocks stay in the heap and the next iteration reuses them; the free memory goes back after the fit.
Elsewhere (macOS, musl, Windows) both are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)
# peak RSS with freed memory kept over glibc's own, at most: 1.79 (the kate inpainting net at 512 px in fp32 with
# --save-memory; 0.98-1.79 over the 16 cases of benchmarks/results/speed/memory-estimate-amd-epyc-avx512bf16/,
# docs/speed-and-memory.md)
GROWTH = 1.8
SHARE = 0.9  # of this machine's memory the grown peak may take (as preflight.MEMORY_SHARE)
DEFAULT_MMAP_MAX = 65536  # glibc's defaults, restored by ``release``
DEFAULT_TRIM_THRESHOLD = 128 * 1024
_lock = threading.Lock()
_users = 0


@functools.cache
def libc() -> ctypes.CDLL | None:
    """glibc, or None where mallopt/malloc_trim do not exist."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.mallopt, lib.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return lib


def available() -> bool:
    return libc() is not None


def machine_bytes() -> int | None:
    """This machine's memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def room_to_keep() -> bool:
    """Whether this process's peak so far (a fit's first step), grown by ``GROWTH``, fits in this machine's memory:
    keeping freed memory costs peak memory, so a fit near the limit runs as before (slower) rather than fail."""
    peak = peak_rss()
    return peak is not None and room_for(peak)


def peak_rss() -> int | None:
    """This process's peak resident bytes: its address space's high-water mark (``VmHWM``). ``ru_maxrss`` would do
    but for one thing: Linux keeps it across exec, so a process started by one holding gigabytes (a benchmark, a
    server) would read its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # (kB)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (KiB on Linux)


def room_for(peak: int) -> bool:
    """Whether a first step that peaked at ``peak`` bytes, grown by ``GROWTH``, fits in ``SHARE`` of this machine's
    memory: the rule for keeping freed memory, measured (``room_to_keep``) or estimated (``estimate.keeps``)."""
    total = machine_bytes()
    return total is not None and GROWTH * peak <= SHARE * total


@contextlib.contextmanager
def freed_memory_kept(on: bool = True) -> Iterator[bool]:
    """Big blocks from the heap, and freed memory kept in it, for the block (a fit's loop); yields whether it took
    effect. Nested users (fits in threads of one server) share one setting: the first sets it, the last restores
    glibc's defaults and returns the free memory."""
    global _users
    lib = libc() if on else None
    if lib is None:
        yield False
        return
    with _lock:
        _users += 1
        if _users == 1:
            lib.mallopt(M_MMAP_MAX, 0)
            lib.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield True
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                lib.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                lib.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                lib.malloc_trim(0)
