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
from ui_server import SIDE, mask, photo, serve

pytest.importorskip("gradio", reason="the 'ui' extra is not installed (make setup installs it)")
gradio_client = pytest.importorskip("gradio_client")

pytestmark = ONCE  # a server in a subprocess: the faked CPU of the two passes does not reach it

PRESET = "kate-98"  # an inpainting preset without skip connections: with NET, a net of a few thousand weights
NET = ["8", 2]  # --channels 8 --depth 2


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui")
    for url in serve(folder / "server.log"):
        yield gradio_client.Client(url, verbose=False), folder


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
    deadline = time.monotonic() + 120
    while not any("/100000" in (out[0] or "") for out in job.outputs()):  # the fit is running
        assert time.monotonic() < deadline and not job.done(), job.outputs()
        time.sleep(0.2)
    c.predict(api_name="/stop")
    status = job.result()[0]
    stopped = re.search(r"interrupted at iteration (\d+)", status)
    assert status.startswith("stopped") and stopped, status
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


def preset_iterations(name: str) -> int:
    from dip_compile import presets

    return presets.get(name, "inpaint").fit_config().iterations


def test_in_a_browser_paint_a_mask_watch_the_fit_and_download_the_png(client, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    url = client[0].src
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(str(photo(tmp_path / "photo.png")))
        sync_api.expect(page.locator("#status textarea")).to_have_value(f"photo {SIDE}x{SIDE}", timeout=30_000)
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
        iterations.fill(str(WATCHED))
        sync_api.expect(iterations).to_have_value(str(WATCHED))
        page.get_by_text("Network, seed and timelapse").click()
        page.get_by_label("Channels per level").fill(NET[0])
        page.get_by_label("Levels").fill(str(NET[1]))
        page.get_by_role("button", name="Fit", exact=True).click()
        preview, status = page.locator("#preview img"), page.locator("#status textarea")
        previews: set[str] = set()
        deadline = time.monotonic() + 180
        while f"{WATCHED} iterations (completed)" not in (shown := status.input_value()):  # previews while it fits
            assert time.monotonic() < deadline and re.match(rf"photo|estimate|starting|inpaint \d+/{WATCHED}", shown), (
                shown
            )  # else refused
            if preview.count():
                previews.add(preview.get_attribute("src") or "")
            time.sleep(0.05)
        previews.add(preview.get_attribute("src") or "")
        assert len(previews) >= 2, previews  # the preview moved on as the image formed
        row = page.locator("#downloads tr", has_text=re.compile(r"restored\s*\.png"))
        link = row.locator("td.download a")
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / "downloaded.png"
        download.value.save_as(saved)
        with Image.open(saved) as restored:
            assert restored.format == "PNG" and restored.size == (SIDE, SIDE)
        if os.environ.get("DIPC_UPDATE_SCREENSHOT"):
            sync_api.expect(status).not_to_have_value(re.compile("exporting"), timeout=120_000)
            page.screenshot(path=str(DOCS / "ui.png"), full_page=True)
        browser.close()


def test_a_non_local_host_is_served_with_a_warning(monkeypatch, capsys):
    import dip_compile.ui

    served: list[tuple[str, int | None]] = []
    monkeypatch.setattr(dip_compile.ui, "serve", lambda host, port: served.append((host, port)))
    from dip_compile.cli import main

    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(SystemExit) as exited:
            main(["ui", "--host", host, "--port", "8123"])
        assert exited.value.code == 0
    assert served == [("127.0.0.1", 8123), ("0.0.0.0", 8123)]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "0.0.0.0" in err


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
