"""One ``dipc batch`` at a time per OUTDIR (per shard with ``--shard``): two runs of the same jobs would write the
same ``.partial`` checkpoints and replace each other's files, so a second run is refused in one line (exit 2).

The lock is the OS's (``flock`` on ``OUTDIR/.dipc-batch.lock``): it goes away with the process that holds it, even
after SIGKILL, so there is never a stale lock to remove by hand. A whole-batch run holds it exclusively. The shards of
a Slurm array run side by side in one OUTDIR (their jobs are disjoint), so a shard I/N holds it shared (a whole-batch
run must wait for every shard) and ``OUTDIR/.dipc-batch-I-of-N.lock`` exclusively (the same shard twice is refused).
The holder writes its pid and host into the file it holds exclusively, for the refusal to name it. A lock file that
is not a plain file of its own (a symbolic link, a second name of another file, a pipe) is refused, never written
through: truncating it would empty the file it leads to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from .jobs import LOCK as STEM
from .jobs import ManifestError, parse_shard

fcntl: Any
try:
    import fcntl as _posix_fcntl

    fcntl = _posix_fcntl
except ImportError:  # Windows: no flock; the batch runs unlocked
    fcntl = None

LOCK = f"{STEM}.lock"
_held: set[tuple[Path, Optional[str]]] = set()  # what this process holds (run_batch may be called under the CLI's)


def lock_name(shard: Optional[str]) -> str:
    """The file a run holds exclusively: ``.dipc-batch.lock``, or ``.dipc-batch-I-of-N.lock`` for a shard."""
    if shard is None:
        return LOCK
    index, count = parse_shard(shard)
    return f"{STEM}-{index}-of-{count}.lock"


@contextlib.contextmanager
def hold_outdir(outdir: Path, shard: Optional[str] = None) -> Iterator[None]:
    """Holds OUTDIR (or its shard) for this run; ``ManifestError`` names the run that holds it already."""
    key = (outdir.absolute(), None if shard is None else lock_name(shard))
    if fcntl is None or key in _held:
        yield
        return
    with contextlib.ExitStack() as stack:
        whole = stack.enter_context(_lock_file(outdir / LOCK))
        if shard is None:
            own = whole
        else:
            _take(whole, fcntl.LOCK_SH, outdir, "")
            with contextlib.suppress(OSError):
                os.ftruncate(whole, 0)  # no whole-batch run holds it now: a pid there is a dead run's
            own = stack.enter_context(_lock_file(outdir / lock_name(shard)))
        if _take(own, fcntl.LOCK_EX, outdir, "" if shard is None else f" shard {shard}"):
            with contextlib.suppress(OSError):
                os.ftruncate(own, 0)
                os.pwrite(own, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            stack.callback(_clear, own)  # (before the file is closed, which releases the lock)
        _held.add(key)
        stack.callback(_held.discard, key)
        yield


@contextlib.contextmanager
def _lock_file(path: Path) -> Iterator[int]:
    """The lock file, opened without following a symbolic link (nor blocking on a pipe), and only if it is a
    regular file with no other name: what the run writes into it must not land in another file."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise ManifestError(f"{path} is a symbolic link: dipc batch locks OUTDIR there; remove the link") from None
        raise ManifestError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            what = "another name of a file (a hard link)" if stat.S_ISREG(st.st_mode) else "not a regular file"
            raise ManifestError(f"{path} is {what}: dipc batch locks OUTDIR there; remove it")
        yield fd
    finally:
        os.close(fd)


def _take(fd: int, mode: int, outdir: Path, what: str) -> bool:
    """Takes the lock, or refuses naming its holder; False where the file system has no locks (some network
    mounts): the batch then runs unlocked, as it did before locks."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ManifestError(
            f"{outdir} is in use by another dipc batch{what} ({_holder(fd)}): wait for it to finish, or write to "
            "another folder"
        ) from None
    except OSError:
        return False
    return True


def _clear(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "a run of its shards, --shard"
