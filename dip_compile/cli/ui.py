"""``dipc ui``: serves the web page (the optional ``ui`` extra)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..ui import MAX_UPLOAD_MB
from .errors import fail, user_errors


@user_errors
def ui(
    host: Annotated[
        str, typer.Option(help="address to serve on; anything but this machine exposes it to the network")
    ] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="port (default: the first free one from 7860)")] = None,
    max_upload: Annotated[int, typer.Option(help="largest file a user may upload, in MB")] = MAX_UPLOAD_MB,
) -> None:
    """Open the web app: paint a mask, watch the fit, download the image and its ONNX model (the 'ui' extra)."""
    try:
        import gradio  # noqa: F401  (the optional extra: here, so that dipc stays light without it)
    except ImportError:
        fail("dipc ui needs the ui extra: pip install 'dip-compile[ui]'")
    from ..ui import LOCAL_HOSTS, serve
    from ..ui.app import check_address

    check_address(host, port)  # (refused before the warning below)
    if host not in LOCAL_HOSTS:
        typer.echo(
            f"dipc: warning: serving on {host}: anyone who can reach it can run fits and read the results", err=True
        )
    serve(host, port, max_upload)
