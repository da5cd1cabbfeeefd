"""``dipc ui``: a local web page over the library (the optional ``ui`` extra, Gradio). ``app`` is the page,
``session`` what it does with the library (no gradio there)."""

from __future__ import annotations

import os
from typing import Optional

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_UPLOAD_MB = 50  # the default of dipc ui --max-upload


def serve(host: str = "127.0.0.1", port: Optional[int] = None, max_upload_mb: int = MAX_UPLOAD_MB) -> None:
    """Serves the page on ``host:port`` (gradio picks a free port from 7860 without one; IPv6 too: ``::1``) until
    Ctrl-C or SIGTERM; an address it cannot serve on is a one-line ``DipError``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    from .app import serve as run

    run(host, port, max_upload_mb)
