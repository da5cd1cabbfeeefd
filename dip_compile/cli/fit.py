"""``dipc fit``: one image restored; its options are read from the declarations (``options``)."""

from __future__ import annotations

from typing import Any

import typer

from .errors import user_errors
from .options import fit_job, fit_parameters, signed


@user_errors
@signed(fit_parameters())
def fit(**params: Any) -> None:
    """Fit the Deep Image Prior to one image: dipc fit TASK IMAGE -o OUT.png, or dipc fit --resume CKPT -o OUT.png."""
    from .. import restore

    code = restore.run_job(fit_job(params))
    if code:
        raise typer.Exit(code)
