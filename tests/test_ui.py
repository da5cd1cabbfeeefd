"""``dipc ui`` started as a user starts it, driven through gradio_client (a tiny inpainting fit end to end, the
CLI's own one-line refusals shown in the page, Stop then Continue) and in a real headless Chromium (paint a stroke as
the mask, watch the preview change, download the PNG). One server for the module: it takes longer to start than
these fits take."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ONCE
from ui_server import SIDE, Server, free_port, mask, photo

pytest.importorskip("gradio", reason="the 'ui' extra is not installed (make setup installs it)")
gradio_client = pytest.importorskip("gradio_client")

pytestmark = ONCE  # a server in a subprocess: the faked CPU of the two passes does not reach it

PRESET = "kate-98"  # an inpainting preset without skip connections: with NET, a net of a few thousand weights
NET = ["8", 2]  # --channels 8 --depth 2


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The module's server. Its end is a test too: SIGTERM (a service manager's stop) while a fit runs stops the
    fit, then the server, removes the sessions' folder and exits 0 (it aborted with 134: "terminate called
    without an active exception", the fit's thread inside torch at exit)."""
    folder = tmp_path_factory.mktemp("ui")
    server = Server(folder)
    try:
        c = gradio_client.Client(server.url(), verbose=False)
        yield c, folder
        running = c.submit(*fit_args(photo(folder / "photo.png"), mask(folder / "mask.png"), 100_000), api_name="/fit")
        wait_until_fitting(running)
        assert server.folders(), "no session folder while a fit runs"
    finally:
        code = server.terminate()
    log = server.log.read_text()
    assert code == 0 and "terminate called" not in log, log
    assert not server.folders(), log


def wait_until_fitting(job, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not any(re.search(r"inpaint \d+/100000", out[0] or "") for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), job.outputs()
        time.sleep(0.2)


def fit_args(image: Path, mask_file: Path | None, iterations: int, timelapse_every: int = 0) -> list:
    """The /fit endpoint's inputs, in the page's order (gradio_client passes them positionally)."""
    handle = gradio_client.handle_file
    mask_value = handle(str(mask_file)) if mask_file else None
    return ["inpaint", handle(str(image)), None, mask_value, None, None, PRESET, iterations, 4, "", *NET, 0,
            timelapse_every, False]  # fmt: skip


def test_tiny_inpainting_fit_end_to_end_with_its_downloads(client):
    c, folder = client
    status, preview, compare, files = c.predict(
        *fit_args(photo(folder / "photo.png"), mask(folder / "mask.png"), 6, timelapse_every=2), api_name="/fit"
    )
    assert "6 iterations (completed)" in status, status
    assert "dipc-ui" not in status and "restored.png" not in status, status  # no server paths
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"restored.png", "report.json", "restored.ckpt", "restored.onnx", "timelapse.webp"}
    with Image.open(by_name["restored.png"]) as restored:
        assert restored.size == (SIDE, SIDE)
        pixels = np.asarray(restored.convert("RGB"))
    with Image.open(by_name["timelapse.webp"]) as animation:
        assert animation.n_frames == 3  # iterations 2, 4, 6
    assert len(compare) == 2 and Path(preview).exists()
    from dip_compile.replay import regenerate

    replayed = regenerate.regenerate(by_name["restored.onnx"], None)["image"]  # the exported model, run alone
    assert np.abs(regenerate.to_uint8(replayed).astype(int) - pixels.astype(int)).max() <= 1


def cli_error(capsys, *args: str) -> str:
    from dip_compile.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().removeprefix("dipc: error: ")


def test_bad_inputs_are_the_clis_one_line_message_in_the_page(client, capsys):
    c, folder = client
    image = photo(folder / "photo.png")
    cases = {
        "mask of another size": (image, mask(folder / "small-mask.png", side=SIDE - 8)),
        "mask with no known pixel": (image, _black(folder / "black-mask.png")),
        "not an image": (_text(folder / "notes.txt"), mask(folder / "mask.png")),
    }
    for name, (image_file, mask_file) in cases.items():
        status, preview, _, _ = c.predict(*fit_args(image_file, mask_file, 6), api_name="/fit")
        expected = cli_error(capsys, "fit", "inpaint", image_file, "--mask", mask_file, "-o", folder / "x.png")
        uploaded = re.sub(r"\S*/(notes\.txt|[\w-]+mask\.png)", r"\1", status)  # the server's copy of the upload
        assert uploaded == re.sub(r"\S*/(notes\.txt|[\w-]+mask\.png)", r"\1", expected), name
        assert "\n" not in status and preview is None, name


def _black(path: Path) -> Path:
    Image.fromarray(np.zeros((SIDE, SIDE), np.uint8)).save(path)
    return path


def _text(path: Path) -> Path:
    path.write_text("not a photo")
    return path


def test_stop_saves_the_fit_and_continue_finishes_it(client):
    c, folder = client
    job = c.submit(*fit_args(photo(folder / "photo.png"), mask(folder / "mask.png"), 100_000), api_name="/fit")
    wait_until_fitting(job)
    c.predict(api_name="/stop")
    status = job.result()[0]
    stopped = re.match(r"stopped at iteration (\d+) of 100000: .*Continue goes on from here", status)
    assert stopped and not re.search(r"dipc-ui|/tmp|--resume|restored\.", status), status  # plain: no server paths
    at = int(stopped.group(1))
    status, _, _, files = c.predict(at + 4, 0, api_name="/continue")
    assert f"{at + 4} iterations (completed)" in status, status
    assert {"restored.png", "restored.onnx"} <= {Path(f).name for f in files}


DOCS = Path(__file__).resolve().parent.parent / "docs"


def chromium() -> str:
    """The system's Chromium (``make test`` installs it where apt-get is at hand); CI sets DIPC_REQUIRE_BROWSER so
    that a missing browser fails there instead of skipping."""
    found = os.environ.get("DIPC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("DIPC_REQUIRE_BROWSER"):
            pytest.fail("no chromium on PATH, and DIPC_REQUIRE_BROWSER is set (make test installs it with apt-get)")
        pytest.skip("no chromium on PATH (make test installs Debian's with apt-get when it can)")
    return found


# Iterations of the fit the browser watches: enough that it still runs for seconds on a fast CPU (60 once finished
# between two looks at the page on a Xeon with AMX, so only the final preview was seen).
WATCHED = 600
# The docs' screenshot (DIPC_UPDATE_SCREENSHOT=1): the package's example photo, fitted with the preset's own network
EXAMPLE = Path(__file__).resolve().parent.parent / "dip_compile" / "data" / "example.png"
SCREENSHOT_ITERATIONS = 300


# Whether an <img> shows all of its image: the picture drawn (object-fit contain: the element's box shrunk to the
# image's aspect) lies inside every ancestor that clips (overflow), and no transform zooms it
SHOWN_WHOLE = """(e) => {
  const r = e.getBoundingClientRect(), style = getComputedStyle(e);
  const k = ["contain", "scale-down"].includes(style.objectFit)
    ? Math.min(r.width / e.naturalWidth, r.height / e.naturalHeight) : null;
  const w = k ? e.naturalWidth * k : r.width, h = k ? e.naturalHeight * k : r.height;
  const x = r.left + (r.width - w) / 2, y = r.top + (r.height - h) / 2;
  let inside = e.naturalWidth > 0 && (k !== null || Math.abs(r.width / r.height - e.naturalWidth / e.naturalHeight) < 0.02);
  for (let a = e.parentElement; a; a = a.parentElement) {
    if (getComputedStyle(a).overflow === "visible") continue;
    const c = a.getBoundingClientRect();
    inside = inside && x >= c.left - 1 && y >= c.top - 1 && x + w <= c.right + 1 && y + h <= c.bottom + 1;
  }
  const scale = new DOMMatrix(style.transform === "none" ? undefined : style.transform).a;
  return {whole: inside && Math.abs(scale - 1) < 1e-6, natural: [e.naturalWidth, e.naturalHeight], drawn: [x, y, w, h]};
}"""


def preset_iterations(name: str) -> int:
    from dip_compile import presets

    return presets.get(name, "inpaint").fit_config().iterations


def test_in_a_browser_paint_a_mask_watch_the_fit_and_download_the_png(client, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    url = client[0].src
    screenshot = bool(os.environ.get("DIPC_UPDATE_SCREENSHOT"))
    image = EXAMPLE if screenshot else photo(tmp_path / "photo.png")
    with Image.open(image) as opened:
        size = opened.size
    watched = SCREENSHOT_ITERATIONS if screenshot else WATCHED
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(str(image))
        sync_api.expect(page.locator("#status textarea")).to_have_value(f"photo {size[0]}x{size[1]}", timeout=30_000)
        canvas = page.locator("#editor canvas").first.bounding_box()
        assert canvas is not None
        x, y = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
        page.locator("#editor button[aria-label=Brush]").click()
        page.mouse.move(x - 60, y - 20, steps=2)
        page.mouse.down()  # one brush stroke across the middle of the photo: the hole (each move repaints)
        page.mouse.move(x + 60, y + 16, steps=4)
        page.mouse.up()
        page.get_by_label("Preset").click()
        page.get_by_role("option", name=PRESET).click()
        iterations = page.get_by_label("Iterations")  # the preset's own first (the server sets it), then ours
        sync_api.expect(iterations).to_have_value(str(preset_iterations(PRESET)), timeout=30_000)
        iterations.fill(str(watched))
        sync_api.expect(iterations).to_have_value(str(watched))
        if not screenshot:
            page.get_by_text("Network, seed and timelapse").click()
            page.get_by_label("Channels per level").fill(NET[0])
            page.get_by_label("Levels").fill(str(NET[1]))
        page.get_by_role("button", name="Fit", exact=True).click()
        preview, status = page.locator("#preview img"), page.locator("#status textarea")
        previews: set[str] = set()
        deadline = time.monotonic() + (600 if screenshot else 180)
        while f"{watched} iterations (completed)" not in (shown := status.input_value()):  # previews while it fits
            assert time.monotonic() < deadline and re.match(rf"photo|checking|starting|inpaint \d+/{watched}", shown), (
                shown
            )  # else refused
            if preview.count() and (src := preview.get_attribute("src")):  # an <img> without a source is none
                previews.add(src)
            time.sleep(0.05)
        if src := preview.get_attribute("src"):
            previews.add(src)
        assert len(previews) >= 2, previews  # the preview moved on as the image formed
        for selector in ("#preview img", "#compare img"):  # each image whole in its panel, once it has loaded
            images = page.locator(selector)
            deadline = time.monotonic() + 30
            while True:
                panels = [images.nth(i).evaluate(SHOWN_WHOLE) for i in range(images.count())]
                if (panels and all(panel["whole"] for panel in panels)) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)  # (a panel's image may still be loading: natural size 0x0 until it is decoded)
            assert panels and all(panel["whole"] for panel in panels), (selector, panels)
        row = page.locator("#downloads tr", has_text=re.compile(r"restored\s*\.png"))
        link = row.locator("td.download a")
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / "downloaded.png"
        download.value.save_as(saved)
        with Image.open(saved) as restored:
            assert restored.format == "PNG" and restored.size == size
        if screenshot:
            sync_api.expect(status).not_to_have_value(re.compile("exporting"), timeout=120_000)
            page.screenshot(path=str(DOCS / "ui.png"), full_page=True)
        browser.close()


def test_a_non_local_host_is_served_with_a_warning(monkeypatch, capsys):
    import dip_compile.ui

    served: list[tuple[str, int | None, int]] = []
    monkeypatch.setattr(dip_compile.ui, "serve", lambda host, port, upload: served.append((host, port, upload)))
    from dip_compile.cli import main

    port = free_port()
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(SystemExit) as exited:
            main(["ui", "--host", host, "--port", str(port)])
        assert exited.value.code == 0
    assert served == [("127.0.0.1", port, 50), ("0.0.0.0", port, 50)]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "0.0.0.0" in err


def test_an_address_it_cannot_serve_on_is_one_line(capsys):
    """The real ``serve``: a port out of range, a host that is not this machine's, a port in use (it was a
    traceback: OverflowError from gradio's socket, httpx's InvalidURL for ::1)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        cases = {
            ("--port", "-1"): "--port must be a port number from 1 to 65535, got -1",
            ("--port", "70000"): "--port must be a port number from 1 to 65535, got 70000",
            ("--host", "no-such-host.invalid"): "--host no-such-host.invalid: not an address to serve on",
            ("--port", busy): f"cannot serve on 127.0.0.1 port {busy}: Address already in use",
            ("--max-upload", "0"): "--max-upload must be at least 1 (MB), got 0",
        }
        for args, message in cases.items():
            error = cli_error(capsys, "ui", *args)
            assert error.startswith(message) and "\n" not in error, (args, error)


def _raw_call(url: str, api_name: str, data: list, session_hash: str) -> list:
    """One event through gradio's own queue protocol, as any HTTP client may send it (gradio_client always sends a
    fresh uuid as the session hash; a hostile client sends what it likes): the outputs, or the error text."""
    import json

    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name.lstrip("/"))
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None}
    content = json.dumps(body)  # NaN and Infinity as JavaScript writes them
    headers = {"content-type": "application/json"}
    joined = httpx.post(url + "gradio_api/queue/join", content=content, headers=headers, timeout=30)
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session_hash}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    return output.get("data") or [output.get("error") or message]
    raise AssertionError("the event never completed")


def _upload(url: str, path: Path) -> dict:
    import httpx

    with open(path, "rb") as f:
        uploaded = httpx.post(url + "gradio_api/upload", files={"files": (path.name, f)}, timeout=30).json()
    return {"path": uploaded[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def test_a_client_chosen_session_hash_never_becomes_a_folder_outside_the_servers_own(client, tmp_path):
    c, folder = client
    url = c.src
    image, mask_file = _upload(url, photo(folder / "photo.png")), _upload(url, mask(folder / "mask.png"))
    args = ["inpaint", image, None, mask_file, None, None, PRESET, 4, 4, "", *NET, 0, 0, False]
    outside = {
        "absolute": tmp_path / "absolute-session",
        "parent": Path(tempfile.gettempdir()) / f"dipc-escape-{os.getpid()}",
    }
    hashes = {"absolute": str(outside["absolute"]), "parent": f"../{outside['parent'].name}"}
    for kind, session_hash in hashes.items():
        status = _raw_call(url, "/estimate", args, session_hash)[0]
        assert "MiB" in status or "GiB" in status, (kind, status)  # the estimate ran for this session...
        assert not outside[kind].exists(), kind  # ...in a folder of the server's own, not where the hash points
        status = _raw_call(url, "/fit", args, session_hash)[0]
        assert "4 iterations (completed)" in status, (kind, status)
        assert not outside[kind].exists(), kind


def test_hostile_form_values_are_one_line_messages_in_the_page(client):
    c, folder = client
    url = c.src
    image, mask_file = _upload(url, photo(folder / "photo.png")), _upload(url, mask(folder / "mask.png"))
    base = ["inpaint", image, None, mask_file, None, None, PRESET, 4, 4, "", *NET, 0, 0, False]
    cases = {7: ("Iterations", float("nan")), 11: ("Levels", float("inf")), 12: ("Seed", float("-inf"))}
    for index, (word, value) in cases.items():
        args = list(base)
        args[index] = value
        status = _raw_call(url, "/estimate", args, f"hostile-{index}")[0]
        ours = f"{word} must be a whole number, not {str(value)!r}"  # or gradio's own refusal, before ours
        assert status == ours or status.startswith(f"Could not preprocess input component at index {index}"), status
    args = list(base)
    args[0] = "../../etc"
    status = str(_raw_call(url, "/estimate", args, "hostile-task")[0])
    assert "../../etc" in status and ("not in" in status or "unknown task" in status), status
    outside_file = {"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}, "orig_name": "hostname"}
    args = list(base)
    args[1] = outside_file  # a path on the server the client did not upload: never read
    status = str(_raw_call(url, "/estimate", args, "hostile-file")[0])
    assert "not uploaded by a user" in status, status


def test_whole_refuses_what_is_not_a_whole_number_in_one_line():
    from dip_compile.errors import DipError
    from dip_compile.ui.session import whole

    assert [whole(v, "Seed", zero=True) for v in (None, "", 0, 3, 3.0, "12")] == [None, None, 0, 3, 3, 12]
    assert whole(0, "Iterations") is None  # an empty number field: the preset's own
    for value in (float("nan"), float("inf"), 2.5, "two", [1], True):
        with pytest.raises(DipError, match=r"^Seed must be a whole number, not "):
            whole(value, "Seed", zero=True)


def test_sigterm_during_start_up_leaves_nothing_behind(tmp_path):
    """SIGTERM as soon as the server has made its sessions' folder (while it builds the page): the folder is
    removed and it exits 0 (the folder was left behind, exit 143)."""
    server = Server(tmp_path)
    try:
        deadline = time.monotonic() + 90
        while not server.folders():
            assert server.process.poll() is None and time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.02)
    finally:
        code = server.terminate()
    assert code == 0 and not server.folders(), (code, server.log.read_text())


def ipv6_loopback() -> bool:
    import socket

    try:
        free_port("::1")
    except OSError:
        return False
    return socket.has_ipv6


@pytest.fixture(scope="module")
def local():
    """The page served in this process (``app.start``, as ``dipc ui --max-upload 1`` starts it), on the IPv6
    loopback where there is one: what this process changes (the machine's memory) reaches its fits."""
    from dip_compile.ui.app import Sessions, shut, start

    host = "::1" if ipv6_loopback() else "127.0.0.1"
    sessions = Sessions()
    page = start(sessions, host, free_port(host), max_upload_mb=1)
    try:
        yield gradio_client.Client(page.local_url, verbose=False), host, sessions
    finally:
        shut(sessions, page)
    assert not sessions.root.exists()


def test_served_on_the_ipv6_loopback(local):
    import httpx

    c, host, _ = local
    if host != "::1":
        pytest.skip("no IPv6 loopback on this machine")
    assert c.src.startswith("http://[::1]:") and httpx.get(c.src, timeout=30).status_code == 200


def test_an_upload_over_the_limit_is_refused_and_the_page_says_the_limit(local, tmp_path):
    import httpx

    c, *_ = local
    labels = [
        d.get("props", {}).get("label") or "" for d in httpx.get(c.src + "config", timeout=30).json()["components"]
    ]
    assert any("up to 1 MB" in label for label in labels), labels
    noise = np.random.default_rng(0).integers(0, 256, (620, 620, 3), np.uint8)  # > 1 MB as a PNG
    Image.fromarray(noise).save(big := tmp_path / "big.png")
    assert big.stat().st_size > 2**20
    with open(big, "rb") as f:
        refused = httpx.post(c.src + "gradio_api/upload", files={"files": ("big.png", f)}, timeout=30)
    assert refused.status_code == 413 and "maximum" in refused.text, refused.text
    assert Path(_upload(c.src, photo(tmp_path / "photo.png"))["path"]).name == "photo.png"  # under the limit


def test_a_fit_too_large_for_memory_is_refused_in_the_page_as_dipc_fit_refuses_it(local, tmp_path, monkeypatch, capsys):
    from dip_compile import preflight

    monkeypatch.setattr(preflight, "available_bytes", lambda device: (64 * 2**20, "memory"))  # a 64 MiB machine
    c, *_ = local
    image, mask_file = photo(tmp_path / "photo.png"), mask(tmp_path / "mask.png")
    status, preview, _, _ = c.predict(*fit_args(image, mask_file, 6), api_name="/fit")
    args = ["fit", "inpaint", image, "--mask", mask_file, "--preset", PRESET, "--iterations", "6", "--channels"]
    expected = cli_error(capsys, *args, NET[0], "--depth", NET[1], "-o", tmp_path / "out.png")
    assert status == expected and preview is None, status
    assert "this machine has 64 MiB of memory; it would fit with" in status, status


def test_a_second_fit_is_told_its_place_in_the_queue(client):
    c, folder = client
    other = gradio_client.Client(c.src, verbose=False)  # another user: another session
    first = c.submit(*fit_args(photo(folder / "photo.png"), mask(folder / "mask.png"), 100_000), api_name="/fit")
    wait_until_fitting(first)
    second = other.submit(*fit_args(photo(folder / "photo.png"), mask(folder / "mask.png"), 6), api_name="/fit")
    deadline = time.monotonic() + 60
    while (state := second.status()).code != gradio_client.utils.Status.IN_QUEUE or state.rank is None:
        assert time.monotonic() < deadline and not second.done(), state
        time.sleep(0.1)
    assert (state.rank, state.queue_size) == (0, 1), state  # first in line, behind the running fit
    c.predict(api_name="/stop")
    assert first.result()[0].startswith("stopped at iteration"), first.outputs()
    assert "6 iterations (completed)" in second.result()[0]  # its turn came


def test_the_first_progress_comes_from_the_first_steps_and_stop_is_plain(tmp_path):
    """The status counts iterations from the first step, not from the first log point (at 0.63 it/s, 16 s with the
    default log interval of 10: here 1000); Stop's status points to Continue, without the server's paths."""
    import dataclasses

    from dip_compile.ui.session import Form, LiveFit, Workspace

    ws = Workspace(tmp_path / "session")
    form = Form("inpaint", str(photo(tmp_path / "photo.png")), str(mask(tmp_path / "mask.png")), preset=PRESET,
                iterations=100_000, channels=NET[0], depth=NET[1])  # fmt: skip
    job = ws.job(form)
    live = LiveFit(dataclasses.replace(job, settings={**job.settings, "log_every": 1000}), ws.stop).start()
    try:
        deadline = time.monotonic() + 60
        while not re.match(r"inpaint \d+/100000", status := live.status()):
            assert time.monotonic() < deadline and not live.done.is_set(), (status, live.error)
            time.sleep(0.005)
    finally:
        ws.stop.set()
        live.done.wait(60)
    first = int(status.split()[1].split("/")[0])
    assert first < 1000 and "loss" not in status, status  # before the first log point
    summary = live.summary()
    assert live.code == 130 and re.match(r"stopped at iteration \d+ of 100000: .*Continue", summary), summary
    assert str(tmp_path) not in summary and "--resume" not in summary, summary


def test_a_long_fits_estimate_names_the_quicker_choice(local, tmp_path, monkeypatch):
    """Before a fit of more than a few minutes: its estimate and Fast's (the preset's own iterations: Fast's share
    of them, on a narrower network); a short fit's estimate names none. The probe is faked: 2 s an iteration, 0.5 s
    with Fast."""
    from dip_compile import preflight, presets

    monkeypatch.setattr(preflight, "probe_seconds", lambda config, *args, **kw: 0.5 if config.fast else 2.0)
    c, *_ = local
    image, mask_file = photo(tmp_path / "photo.png"), mask(tmp_path / "mask.png")
    measured = "kate"  # a preset --fast is measured on (kate-98 has none: the page offers no Fast there)
    its = preset_iterations(measured)
    fast_its = presets.faster(presets.get(measured, "inpaint").fit_config()).iterations
    args = fit_args(image, mask_file, its)
    args[6], args[10:12] = measured, ["", None]  # the preset's own network
    status = c.predict(*args, api_name="/estimate")
    assert status.startswith(f"estimate: about {preflight.duration(its * 2.0)} for {its} iterations"), status
    assert "with Fast (a cheaper setting, a slightly different image; docs/fast.md) about" in status, status
    assert preflight.duration(fast_its * 0.5) in status.split("with Fast")[1], (status, fast_its)
    assert "Fast" not in c.predict(*fit_args(image, mask_file, 6), api_name="/estimate")  # 12 s: no advice


def test_stop_while_the_fit_is_estimated_ends_it_before_it_starts(local, tmp_path, monkeypatch):
    """Stop pressed while the estimate runs (a minute under load) was lost: the fit started after it."""
    import threading

    from dip_compile import preflight

    timing, release = threading.Event(), threading.Event()

    def slow_probe(*args, **kwargs):
        timing.set()
        assert release.wait(60)
        return 0.01

    monkeypatch.setattr(preflight, "probe_seconds", slow_probe)
    c, *_ = local
    job = c.submit(*fit_args(photo(tmp_path / "photo.png"), mask(tmp_path / "mask.png"), 100_000), api_name="/fit")
    try:
        assert timing.wait(60), job.outputs()
        deadline = time.monotonic() + 30
        while not job.outputs():  # (the client receives what the server sent a moment later)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job.outputs()[0][0].startswith("checking the inputs"), job.outputs()  # said before the estimate ends
        c.predict(api_name="/stop")
    finally:
        release.set()
    status = job.result()[0]
    assert status.startswith("stopped before the fit started"), status


def test_a_fit_no_one_watches_any_more_stops(local, tmp_path):
    """A cancelled event (the client gone, the tab closed) left its fit running unwatched, outside the one fit slot
    (the next user's fit ran beside it); it stops as Stop stops it."""
    c, _, sessions = local
    job = c.submit(*fit_args(photo(tmp_path / "photo.png"), mask(tmp_path / "mask.png"), 100_000), api_name="/fit")
    wait_until_fitting(job)
    assert any(ws.busy for ws in sessions.by_name.values())
    job.cancel()
    deadline = time.monotonic() + 30
    while any(ws.busy for ws in sessions.by_name.values()):
        assert time.monotonic() < deadline, "the fit went on after its event was cancelled"
        time.sleep(0.1)


def test_the_pages_fast_iterations_and_hint_only_where_fast_is_measured():
    from dip_compile.ui.session import Form, preset_iterations, quicker

    assert preset_iterations("kate-98", "inpaint", fast=True) == preset_iterations("kate-98", "inpaint")
    assert preset_iterations("kate", "inpaint", fast=True) < preset_iterations("kate", "inpaint")
    assert quicker(Form(task="inpaint", preset="kate-98")) is None  # the fit would refuse --fast there
    hinted = quicker(Form(task="inpaint", preset="kate"))
    assert hinted is not None and hinted.fast
