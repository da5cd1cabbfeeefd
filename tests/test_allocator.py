"""allocator.py: glibc keeps a fit's freed blocks for the next iteration, and gets its defaults back after it."""

from __future__ import annotations

import pytest

from conftest import smooth_image, tiny_config
from dip_compile import allocator
from dip_compile.fitting import Fitter
from dip_compile.problem import make_problem


class FakeLibc:
    """Records mallopt/malloc_trim calls instead of changing this process's allocator."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad, 0))
        return 1


@pytest.fixture
def fake_libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    lib = FakeLibc()
    monkeypatch.setattr(allocator, "libc", lambda: lib)
    return lib


KEEP = [("mallopt", allocator.M_MMAP_MAX, 0), ("mallopt", allocator.M_TRIM_THRESHOLD, 2**31 - 1)]
RESTORE = [
    ("mallopt", allocator.M_MMAP_MAX, allocator.DEFAULT_MMAP_MAX),
    ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.DEFAULT_TRIM_THRESHOLD),
    ("malloc_trim", 0, 0),
]


def test_nested_users_share_one_setting_and_the_last_restores_glibcs_defaults(fake_libc: FakeLibc):
    with allocator.freed_memory_kept() as outer:
        assert outer and fake_libc.calls == KEEP
        with allocator.freed_memory_kept() as inner:  # a second fit in another thread of the same server
            assert inner and fake_libc.calls == KEEP
        assert fake_libc.calls == KEEP  # the outer fit still runs
    assert fake_libc.calls == KEEP + RESTORE


def test_nothing_changes_when_off_or_without_glibc(fake_libc: FakeLibc, monkeypatch: pytest.MonkeyPatch):
    with allocator.freed_memory_kept(False) as kept:
        assert not kept
    assert fake_libc.calls == []
    monkeypatch.setattr(allocator, "libc", lambda: None)
    with allocator.freed_memory_kept() as kept:
        assert not kept


@pytest.mark.parametrize("room", [True, False])
def test_a_cpu_fit_keeps_freed_memory_after_its_first_step_where_there_is_room(
    fake_libc: FakeLibc, monkeypatch: pytest.MonkeyPatch, room: bool
):
    monkeypatch.setattr(allocator, "room_to_keep", lambda: room)
    image = smooth_image(16, 16)
    config = tiny_config("denoise", iterations=3, stop="fixed", device="cpu", log_every=1)
    seen: list[int] = []
    fitter = Fitter(config, make_problem(config, image), device="cpu")
    assert fitter.plan.kept_memory  # (the fake glibc is available)
    fitter.run(on_log=lambda record: seen.append(len(fake_libc.calls)))
    assert seen == [len(KEEP) if room else 0] * 3  # kept from the first step's end on, or never
    assert fake_libc.calls == (KEEP + RESTORE if room else [])


def test_room_to_keep_compares_the_grown_peak_with_this_machines_memory(monkeypatch: pytest.MonkeyPatch):
    import os

    monkeypatch.setattr(allocator, "peak_rss", lambda: 10 * 2**30)  # a 10 GiB peak so far
    for total_gib, room in ((24, True), (16, False)):  # GROWTH (1.8) * 10 GiB against 90% of the memory
        monkeypatch.setattr(os, "sysconf", lambda name, t=total_gib: 4096 if name == "SC_PAGE_SIZE" else t * 2**18)
        assert allocator.room_to_keep() is room


def test_the_peak_is_this_process_own_not_a_parents_it_was_started_by():
    """``ru_maxrss`` survives exec: a fit started by a process that held 1 GiB read that as its own peak, and a
    fit near the memory limit would then not keep its freed memory. ``peak_rss`` reads the new process's own."""
    import subprocess
    import sys

    held = bytearray(2**30)
    held[::4096] = b"\x01" * len(held[::4096])  # touched: resident
    code = (
        "import resource; from dip_compile import allocator; "
        "print(allocator.peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    peak, maxrss = map(
        int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert maxrss > 2**30 > peak > 0
    del held
