"""``dipc batch --ray``: each job (or pack of ``--pack`` jobs) is a Ray task on the cluster at ``RAY_ADDRESS``, or on
a local Ray started here. Workers write their results into OUTDIR themselves (a shared file system on a real
cluster), atomically; the driver only collects the summary rows. A task whose worker dies is retried, and its jobs
resume from their periodic checkpoints (``--checkpoint-every``); jobs it had finished are skipped. A CPU task
reserves its fits' estimated peak memory (Ray's ``memory`` resource), so a node starts only the fits its memory
holds: two 1024 px fits side by side on one 2-core machine may otherwise outgrow it. A local Ray gives the fits about
70% of the memory free at its start, or ``--ray-memory`` GiB.

Ray is optional: ``pip install 'dip-compile[ray]'``; dip-compile must be installed on every node.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..allocator import machine_bytes
from ..errors import DipError
from ..estimate import estimate
from ..plan import load_problem
from .runner import BatchOptions, Outcome, Prepared, run_prepared, sort_for_packing


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DipError("--ray needs Ray, which is not installed: pip install 'dip-compile[ray]'") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A quick TCP check of ``host:port`` (or ``ray://host:port``), so a wrong address fails in seconds, not after
    Ray's own long retries."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" and the like: Ray resolves them
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise DipError(f"cannot reach the Ray cluster at {address} (RAY_ADDRESS): {reason}") from None


def local_memory(gib: float | None, address: str, connected: bool) -> dict[str, int]:
    """``ray.init``'s keyword for a local Ray whose fits may reserve ``gib`` GiB (``--ray-memory``; none: Ray's
    own share, about 70% of the memory free at its start). Only a Ray that dipc batch starts takes it: a cluster's
    nodes say theirs when they start (``ray start --memory``), and a Ray already running has its own."""
    if gib is None:
        return {}
    if address or connected:
        where = f"the cluster at {address} (RAY_ADDRESS)" if address else "the Ray this process already runs"
        raise DipError(
            f"--ray-memory sizes the local Ray dipc batch starts, not {where}: its nodes give their memory when "
            "started (ray start --memory BYTES)"
        )
    total = machine_bytes()
    if total is not None and gib * 2**30 > total:
        raise DipError(f"--ray-memory {gib:g} GiB is more than this machine's {total / 2**30:.1f} GiB")
    return {"_memory": int(gib * 2**30)}  # (ray.init's keyword for the node's reservable memory)


def connect(ray: Any, memory_gib: float | None = None) -> str:
    """Connects to ``RAY_ADDRESS`` or starts a local Ray (whose fits may reserve ``memory_gib`` GiB where given);
    returns where it runs, in words."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    memory = local_memory(memory_gib, address, ray.is_initialized())
    if ray.is_initialized():
        return "Ray (already connected)"
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            return f"Ray cluster at {address}"
        ray.init(log_to_driver=False, logging_level="ERROR", include_dashboard=False, **memory)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        where = address or "a new local Ray"
        raise DipError(f"cannot start or reach {where}: {' '.join(str(exc).split())[:300]}") from None
    return f"local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def run_task(prepared: Sequence[Prepared], options: BatchOptions, cwd: str) -> list[Outcome]:
    """What a Ray worker runs: these jobs in its process (as one pack with --pack), with --cpus-per-fit threads, in
    the driver's folder where this node has it (relative paths in options then mean what they meant there)."""
    import torch

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(max(1, int(options.cpus_per_fit)))
    return run_prepared(prepared, options, stop_requested=lambda: False)


def reserved_bytes(task: Sequence[Prepared]) -> int:
    """The memory a CPU task reserves: its fits' estimated peaks (``estimate.estimate``, as ``dipc fit`` prints it),
    summed (a pack's fits run together). A tiled job (its tiles bound its memory), a job that failed its checks and
    one whose files do not load (its worker says why) add nothing."""
    total = 0
    for p in task:
        if p.plan.tiled or p.job.problem is not None or p.plan.job.resume is not None:
            continue
        try:
            config, problem = load_problem(p.plan)
        except DipError:
            continue
        total += estimate(config, problem.canvas, problem.channels, "cpu").peak_bytes
    return total


def node_memory(ray: Any) -> int:
    """The largest ``memory`` resource of a live node: more than that, a task could never start."""
    return int(max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0))


def run_on_ray(
    prepared: Sequence[Prepared], options: BatchOptions, on_outcome: Callable[[Outcome], None]
) -> tuple[list[Outcome], bool]:
    ray = import_ray()
    connect(ray, options.ray_memory)
    ordered = sort_for_packing(prepared) if options.pack > 1 else list(prepared)
    tasks = [ordered[i : i + options.pack] for i in range(0, len(ordered), options.pack)]
    remote = ray.remote(run_task)
    base = {
        "num_cpus": options.cpus_per_fit,
        "num_gpus": options.gpus_per_fit,
        "max_retries": options.retries,
        "retry_exceptions": False,
    }
    cap = node_memory(ray) if not options.gpus_per_fit else 0  # (a GPU fit's peak is the GPU's memory, not the node's)

    def submit(task: list[Prepared]) -> Any:
        need = min(reserved_bytes(task), cap) if cap else 0
        return remote.options(**base, **({"memory": need} if need > 0 else {})).remote(task, options, os.getcwd())

    pending = {submit(task): task for task in tasks}
    outcomes: list[Outcome] = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except Exception as exc:  # the task failed for good (retries spent, or a bug): its jobs failed
                    message = " ".join(str(exc).split())[-300:]
                    rows = [
                        Outcome(p.job.name, p.job.task, "failed", error=f"Ray task failed: {message}") for p in task
                    ]
                for row in rows:
                    outcomes.append(row)
                    on_outcome(row)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        return outcomes, True
    return outcomes, False
