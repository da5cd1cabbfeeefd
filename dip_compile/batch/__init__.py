"""Many fits: ``dipc batch`` over a folder or a manifest, packed on one device or spread over a Ray cluster."""

from . import summary
from .driver import run_batch
from .jobs import BatchJob, ManifestError, load_jobs, shard
from .runner import BatchOptions, Outcome
from .summary import write_summary

__all__ = [
    "BatchJob",
    "BatchOptions",
    "ManifestError",
    "Outcome",
    "load_jobs",
    "run_batch",
    "shard",
    "summary",
    "write_summary",
]
