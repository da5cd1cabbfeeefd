"""The web page as a user starts it (``dipc ui --port P`` in a subprocess), and tiny inputs for it; shared by the
gradio_client and the browser tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 40  # px: a fit of a few iterations of a tiny net takes well under a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(log: Path) -> Iterator[str]:
    """Starts ``dipc ui`` and yields its URL once it answers; stops it (and fails with its log) afterwards."""
    dipc = shutil.which("dipc", path=str(Path(sys.executable).parent)) or "dipc"
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        server = subprocess.Popen([dipc, "ui", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"dipc ui exited with {server.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dipc ui did not answer within 90 s:\n{log.read_text()}") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def photo(path: Path, side: int = SIDE) -> Path:
    """A smooth colour gradient with some structure: what DIP restores well."""
    y, x = np.mgrid[0:side, 0:side] / side
    image = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], -1)
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


def mask(path: Path, side: int = SIDE, hole: bool = True) -> Path:
    """White = known; a square hole in the middle."""
    array = np.full((side, side), 255, np.uint8)
    if hole:
        array[side // 3 : 2 * side // 3, side // 3 : 2 * side // 3] = 0
    Image.fromarray(array).save(path)
    return path
