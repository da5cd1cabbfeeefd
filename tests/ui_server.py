"""The web page as a user starts it (``dipc ui --port P`` in a subprocess), and tiny inputs for it; shared by the
gradio_client and the browser tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 40  # px: a fit of a few iterations of a tiny net takes well under a second


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Server:
    """``dipc ui --port P`` started as a user starts it, in a subprocess whose temporary folder (TMPDIR) is
    ``folder``/tmp, so that what it leaves there can be checked; its output goes to ``folder``/server.log."""

    def __init__(self, folder: Path) -> None:
        dipc = shutil.which("dipc", path=str(Path(sys.executable).parent)) or "dipc"
        self.port, self.log, self.temp = free_port(), folder / "server.log", folder / "tmp"
        self.temp.mkdir(exist_ok=True)
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(self.temp)}
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [dipc, "ui", "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def url(self) -> str:
        """Its URL once it answers (fails with its log if it exits or does not answer within 90 s)."""
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"dipc ui exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return f"http://127.0.0.1:{self.port}/"
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dipc ui did not answer within 90 s:\n{self.log.read_text()}") from None
                time.sleep(0.3)

    def folders(self) -> list[Path]:
        """The sessions' folders it has made (dipc-ui-*), and not removed."""
        return sorted(self.temp.glob("dipc-ui-*"))

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager stops it; its exit code (killed, and -9, if it does not exit in time)."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


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
