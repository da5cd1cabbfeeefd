"""The page: gradio components wired to ``session`` (which calls the library). One fit runs at a time per server;
gradio queues the others and shows each its place."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import gradio as gr
from PIL import Image

from .. import kernels, presets, tasks
from ..config import Task
from ..errors import DipError
from ..imageio import load_image, to_pil
from .session import Form, LiveFit, Workspace, estimate_text, painted_mask, preset_iterations, quicker, whole

STOP_SECONDS = 60.0  # how long a stopping server waits for its running fits to stop and save
# Each image whole in its panel (contained, never cropped or zoomed); a small photo's preview would show at its few
# pixels: scaled up to the panel, pixels kept sharp
CSS = (
    "#preview img { width: 100%; height: 300px; object-fit: contain; image-rendering: pixelated; }"
    " #compare img { object-fit: contain; max-width: 100%; }"
)
POLL_SECONDS = 0.5
TASK_PRESETS = {t: [p.name for p in presets.PRESETS if p.task == t] for t in Task.values()}


class Sessions:
    """Each browser session's ``Workspace`` under one folder removed at exit.

    The session hash is whatever a client sends (``POST /gradio_api/queue/join``): it never becomes a path. A
    session's folder is named by a keyed hash of it (HMAC-SHA256 with a secret of this server), so it is always a
    child of ``root`` and one client cannot name, or guess, another's folder. At most ``MAX_SESSIONS`` are kept: the
    least recently used idle one is removed to make room."""

    MAX_SESSIONS = 64

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dipc-ui-")).resolve()
        self.secret = secrets.token_bytes(32)
        self.by_name: OrderedDict[str, Workspace] = OrderedDict()
        self.lock = threading.Lock()
        self.idle = threading.Condition()  # notified when ``at_work`` drops
        self.at_work = 0

    def folder_name(self, session_hash: Optional[str]) -> str:
        digest = hmac.new(self.secret, str(session_hash or "").encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def find(self, request: gr.Request) -> Optional[Workspace]:
        """The session's workspace if it has one (Stop creates none)."""
        with self.lock:
            return self.by_name.get(self.folder_name(request.session_hash))

    def get(self, request: gr.Request) -> Workspace:
        name = self.folder_name(request.session_hash)
        with self.lock:
            ws = self.by_name.get(name)
            if ws is None:
                self._make_room()
                folder = self.root / name
                assert folder.parent == self.root  # a hex name: never outside root, whatever the client sent
                ws = self.by_name[name] = Workspace(folder)
            self.by_name.move_to_end(name)
            return ws

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Around the library work an event runs in gradio's threads (an estimate, an export): ``stop`` waits for it."""
        with self.idle:
            self.at_work += 1
        try:
            yield
        finally:
            with self.idle:
                self.at_work -= 1
                self.idle.notify_all()

    def stop(self, seconds: float) -> None:
        """Asks every running fit to stop (as Stop does: image and checkpoint saved) and waits up to ``seconds`` for
        them and for the estimates and exports under way: a thread still inside torch when the interpreter exits
        aborts it ("terminate called without an active exception", exit 134)."""
        with self.lock:
            running = [ws.live for ws in self.by_name.values() if ws.busy and ws.live is not None]
            for ws in self.by_name.values():
                ws.stop.set()
        deadline = time.monotonic() + seconds
        for live in running:
            live.done.wait(max(0.0, deadline - time.monotonic()))
        with self.idle:
            self.idle.wait_for(lambda: self.at_work == 0, max(0.0, deadline - time.monotonic()))

    def _make_room(self) -> None:
        while len(self.by_name) >= self.MAX_SESSIONS:
            idle = next((n for n, w in self.by_name.items() if not w.busy), None)
            if idle is None:
                raise DipError("the server has too many sessions fitting at once; try again in a few minutes")
            self.by_name.pop(idle).close()


def build(sessions: Sessions, max_upload_mb: int) -> gr.Blocks:
    """The page, its events and their concurrency (fits share one slot)."""
    with gr.Blocks(title="dip-compile") as page:
        gr.Markdown(
            "# dip-compile\nDeep Image Prior restoration: upload a photo, paint what is missing (inpainting), "
            "watch the image form, download the result and its ONNX model."
        )
        with gr.Row():
            with gr.Column():
                task = gr.Radio(Task.values(), value="inpaint", label="Task")
                photo = gr.File(
                    label=f"Photo (the image to restore; files up to {max_upload_mb} MB)",
                    type="filepath",
                    elem_id="photo",
                )
                editor = gr.ImageEditor(
                    label="Paint the holes (brush; eraser to undo)",
                    type="numpy",
                    sources=(),
                    transforms=(),
                    layers=False,
                    format="png",
                    brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=6),
                    eraser=gr.Eraser(default_size=6),
                    elem_id="editor",
                )
                mask = gr.File(label="...or a mask file (white = known pixel)", type="filepath", elem_id="mask")
                flash = gr.File(label="Flash photo (the network's input)", type="filepath", visible=False)
                factor = gr.Radio([2, 4, 8], value=4, label="Super-resolution factor", visible=False)
                kernel = gr.Textbox(label=f"Blur kernel: {kernels.SPECS}", visible=False)
                reference = gr.File(label="Reference (optional clean image: PSNR)", type="filepath")
                preset = gr.Dropdown(TASK_PRESETS["inpaint"], value=presets.DEFAULTS["inpaint"], label="Preset")
                iterations = gr.Number(preset_iterations(None, "inpaint"), label="Iterations", precision=0, minimum=1)
                fast = gr.Checkbox(
                    False,
                    label="Fast: a cheaper setting, in less time for nearly the same image (--fast; docs/fast.md)",
                )
                with gr.Accordion("Network, seed and timelapse", open=False):
                    channels = gr.Textbox(label="Channels per level (--channels; empty: the preset's)")
                    depth = gr.Number(None, label="Levels (--depth; empty: the preset's)", precision=0)
                    seed = gr.Number(0, label="Seed", precision=0)
                    timelapse_every = gr.Number(0, label="Timelapse: a frame every N iterations (0: none)", precision=0)
                with gr.Row():
                    estimate_button = gr.Button("Estimate")
                    fit_button = gr.Button("Fit", variant="primary")
                    stop_button = gr.Button("Stop", variant="stop")
                    continue_button = gr.Button("Continue")
            with gr.Column():
                status = gr.Textbox(label="Status", lines=3, interactive=False, elem_id="status")
                preview = gr.Image(
                    label="Current image", type="pil", format="png", interactive=False, elem_id="preview"
                )
                compare = gr.ImageSlider(label="Before / after", type="filepath", interactive=False, elem_id="compare")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")

        def on_task(name: str) -> tuple[Any, ...]:
            task_spec = tasks.spec(name)  # which inputs the page shows is the registry's, as dipc fit's checks
            return (
                gr.update(visible=task_spec.needs("mask")),
                gr.update(visible=task_spec.needs("mask")),
                gr.update(visible=task_spec.needs("guide")),
                gr.update(visible=task_spec.scales),
                gr.update(visible=task_spec.needs("kernel")),
                gr.update(choices=TASK_PRESETS[name], value=presets.default_name(name)),
            )

        task.change(on_task, task, [editor, mask, flash, factor, kernel, preset], api_visibility="private")
        for source in (preset, fast):
            source.change(preset_iterations, [preset, task, fast], iterations, api_visibility="private")

        def on_photo(path: Optional[str]) -> tuple[Any, str]:
            """The photo into the painting canvas, or the library's one-line refusal of the file."""
            if not path:
                return None, ""
            try:
                image = to_pil(load_image(path))
            except DipError as exc:
                return None, str(exc)
            return {"background": image, "layers": [], "composite": None}, f"photo {image.width}x{image.height}"

        photo.change(on_photo, photo, [editor, status], api_visibility="private")

        fields = [task, photo, editor, mask, flash, reference, preset, iterations, factor, kernel, channels, depth]
        fields += [seed, timelapse_every, fast]

        def form(
            request: gr.Request,
            task_name: str,
            image: Optional[str],
            painted: Optional[dict[str, Any]],
            mask_file: Optional[str],
            flash_file: Optional[str],
            ref: Optional[str],
            preset_name: Optional[str],
            its: Optional[float],
            fac: Optional[int],
            kern: Optional[str],
            chans: Optional[str],
            levels: Optional[float],
            seed_value: Optional[float],
            every: Optional[float],
            fast_fit: bool,
        ) -> tuple[Workspace, Form]:
            """The page's values as a ``Form``; painted strokes become the mask file unless one was uploaded."""
            ws, task_spec = sessions.get(request), tasks.spec(task_name)
            mask_path = mask_file
            if task_spec.needs("mask") and not mask_file and painted and image:
                try:
                    with Image.open(image) as photo_image:
                        size = photo_image.size
                except OSError:  # not an image: the fit refuses it in the CLI's words
                    size = None
                written = painted_mask(painted.get("layers") or [], size, ws.path("painted-mask.png")) if size else None
                mask_path = str(written) if written else None
            return ws, Form(
                task=task_name,
                image=image,
                mask=mask_path,
                flash=flash_file,
                reference=ref,
                preset=preset_name,
                iterations=whole(its, "Iterations"),
                factor=whole(fac, "Factor") if task_spec.scales else None,
                kernel=kern if task_spec.needs("kernel") else None,
                channels=(chans or "").strip() or None,
                depth=whole(levels, "Levels"),
                seed=whole(seed_value, "Seed", zero=True),
                timelapse_every=whole(every, "Timelapse", zero=True) or 0,
                fast=bool(fast_fit),
            )

        def on_estimate(request: gr.Request, *values: Any) -> str:
            try:
                ws, f = form(request, *values)
                faster = quicker(f)
                with sessions.working():
                    return "estimate: " + estimate_text(ws.job(f), ws.job(faster) if faster else None)
            except DipError as exc:
                return str(exc)

        def on_fit(request: gr.Request, *values: Any) -> Iterator[tuple[Any, ...]]:
            try:
                ws, f = form(request, *values)
                job, faster = ws.job(f), quicker(f)
                quicker_job = ws.job(faster) if faster else None
            except DipError as exc:
                yield str(exc), None, None, None
                return
            ws.image = f.image
            yield from _watch(ws, job, sessions, quicker_job)

        def on_continue(its: Optional[float], every: Optional[float], request: gr.Request) -> Iterator[tuple[Any, ...]]:
            try:
                ws = sessions.get(request)
                job = ws.resumed_job(whole(its, "Iterations"), whole(every, "Timelapse", zero=True) or 0)
            except DipError as exc:
                yield str(exc), None, None, None
                return
            yield from _watch(ws, job, sessions)

        def on_stop(request: gr.Request) -> None:
            """Like Ctrl-C: the fit stops after this iteration and saves its image and resumable checkpoint."""
            ws = sessions.find(request)
            if ws is not None:
                ws.stop.set()

        outputs = [status, preview, compare, downloads]
        estimate_button.click(
            on_estimate, fields, status, api_name="estimate", concurrency_id="fit", concurrency_limit=1
        )
        fit_button.click(on_fit, fields, outputs, api_name="fit", concurrency_id="fit", concurrency_limit=1)
        continue_button.click(
            on_continue,
            [iterations, timelapse_every],
            outputs,
            api_name="continue",
            concurrency_id="fit",
            concurrency_limit=1,
        )
        stop_button.click(on_stop, None, None, api_name="stop", concurrency_limit=None)
    return page


def _watch(ws: Workspace, job: Any, sessions: Sessions, quicker_job: Any = None) -> Iterator[tuple[Any, ...]]:
    """At once a word that it started; the estimate (a refusal ends here; a long fit is told its quicker choice);
    then the fit's progress from its first step and its previews; then the results, in plain words."""
    from .. import exporters

    ws.stop.clear()  # from here on, Stop ends this fit (also while it is estimated)
    yield "checking the inputs and timing a few iterations for the estimate...", None, None, None
    try:
        with sessions.working():
            before = "estimate: " + estimate_text(job, quicker_job)
    except DipError as exc:
        yield str(exc), None, None, None
        return
    if ws.stop.is_set():
        yield f"stopped before the fit started (nothing was fitted)\n{before}", None, None, None
        return
    yield f"starting the fit\n{before}", None, None, None
    ws.forget_derived()
    live = ws.live = LiveFit(job, ws.stop).start()
    shown = 0
    try:
        while not live.done.wait(POLL_SECONDS):
            new = live.previews != shown
            shown = live.previews
            yield f"{live.status()}\n{before}", live.preview if new else gr.skip(), gr.skip(), gr.skip()
    finally:  # the page closed or the event cancelled (no one watches): the fit stops as Stop stops it
        if not live.done.is_set():
            ws.stop.set()
    if live.error is not None:
        yield live.error, live.preview, None, ws.downloads() or None
        return
    text = live.summary()
    result = Image.open(ws.output)
    comparison = (ws.image, str(ws.output)) if ws.image else None
    yield text, result, comparison, ws.downloads()
    if live.code == 0:  # after the image is shown: the export takes longer than a small fit
        yield text + "\nexporting the ONNX model...", result, comparison, ws.downloads()
        try:
            with sessions.working():
                exporters.export_checkpoints([ws.checkpoint], ws.path("restored.onnx"), force=True)
        except DipError as exc:
            text += f"\nONNX export refused: {exc}"
        yield text, result, comparison, ws.downloads()  # (whole: a client reads the last values)


def check_address(host: str, port: Optional[int]) -> None:
    """Refuses, in one line, an address this machine cannot serve on: a port outside 1-65535, a host name that does
    not resolve or is not this machine's, a port in use. IPv4 and IPv6 (``::1``, ``::``) alike."""
    if port is not None and not 1 <= port <= 65535:
        raise DipError(f"--port must be a port number from 1 to 65535, got {port}")
    plain = host.removeprefix("[").removesuffix("]")  # [::1] as in a URL
    try:
        family, kind, proto, _, address = socket.getaddrinfo(plain, port or 0, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise DipError(f"--host {host}: not an address to serve on ({getattr(exc, 'strerror', None) or exc})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            where = f"{host} port {port}" if port else host
            raise DipError(f"cannot serve on {where}: {exc.strerror or exc}") from None


def url_host(host: str) -> str:
    """The host as a URL names it: an IPv6 address in brackets (gradio builds its URL from it)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def start(sessions: Sessions, host: str, port: Optional[int], max_upload_mb: int) -> gr.Blocks:
    """The page, served in gradio's threads on ``host:port`` until ``shut``; an address or limit it cannot serve
    with is a one-line ``DipError``. No share link; uploads up to ``max_upload_mb``."""
    check_address(host, port)
    if not max_upload_mb >= 1:
        raise DipError(f"--max-upload must be at least 1 (MB), got {max_upload_mb}")
    page = build(sessions, max_upload_mb)
    page.queue(default_concurrency_limit=4)
    try:
        page.launch(
            server_name=url_host(host),
            server_port=port,
            share=False,
            max_file_size=f"{max_upload_mb}mb",
            allowed_paths=[str(sessions.root)],
            show_error=True,
            css=CSS,
            prevent_thread_lock=True,
            quiet=True,
        )
    except OSError as exc:  # no free port from 7860 (without --port), or the port taken meanwhile
        raise DipError(f"cannot serve on {host}: {exc}".split(". You can")[0]) from None
    return page


def shut(sessions: Sessions, page: Optional[gr.Blocks]) -> None:
    """Stops in order: the running fits (as Stop does) and the work under way, then the server; then the sessions'
    folder is removed."""
    sessions.stop(STOP_SECONDS)
    if page is not None:
        page.close(verbose=False)
    shutil.rmtree(sessions.root, ignore_errors=True)


def serve(host: str, port: Optional[int], max_upload_mb: int) -> None:
    """Runs the page until Ctrl-C or SIGTERM (a service manager's stop), then ``shut``: nothing is left behind, and
    the process exits 0. Uploads are kept in the sessions' folder too (unless GRADIO_TEMP_DIR says otherwise)."""
    stop = threading.Event()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in handled}  # before any folder
    uploads = os.environ.get("GRADIO_TEMP_DIR")
    sessions: Optional[Sessions] = None
    page: Optional[gr.Blocks] = None
    try:
        sessions = Sessions()
        os.environ["GRADIO_TEMP_DIR"] = uploads or str(sessions.root / "uploads")
        page = None if stop.is_set() else start(sessions, host, port, max_upload_mb)
        if page is not None:
            shown = str(page.local_url).replace("//[::]:", "//[::1]:")  # (a browser opens no wildcard address)
            print(f"dipc ui: serving on {shown} (Ctrl-C stops it)", flush=True)
        while not stop.wait(0.5):
            pass
        print("dipc ui: stopping", flush=True)
    finally:
        if sessions is not None:
            shut(sessions, page)
        if uploads is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        for sig, old in previous.items():
            signal.signal(sig, old)
