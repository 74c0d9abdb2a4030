"""`sampt app` in a real browser: headless Chromium (Debian's package, driven by Playwright) on the
page served by uvicorn, the tiny random SAM and the LK tracker on the 8-frame demo clip.

The page is clicked as a user clicks it; what it shows is read back from screenshots and compared
with the engine's masks for the same clicks and with the DAVIS ground truth of the clip. The
screenshots are kept under the test's folder (``SAMPT_SCREENSHOTS=<folder>`` copies them there:
the README's picture is made so).
"""
from __future__ import annotations

import io
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sampt.app.server import Server, create_app, make_manager
from sampt.io.png import davis_palette

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [str(REPO / "configs" / "demo.yaml"), str(REPO / "configs" / "demo_tiny.yaml")]
CHROMIUM = os.environ.get("SAMPT_CHROMIUM", "/usr/bin/chromium")
CAR = (215.0, 100.0)      # a positive point on the car (assets/demo/query_points.txt)
ROAD = (200.0, 165.0)     # its negative point, on the road below the car
RED = np.array(davis_palette()[3:6], dtype=float)
MASK_ALPHA = 0.55         # app.js draws the masks at this opacity over the frame
TIMEOUT_MS = 120_000


def ground_truth(frame: int) -> np.ndarray:
    """The DAVIS annotation of demo frame ``frame`` (DAVIS frame 3·frame, halved like the clip)."""
    from conftest import DAVIS_SAMPLE

    path = DAVIS_SAMPLE / "Annotations" / "480p" / "car-shadow" / f"{3 * frame:05d}.png"
    annotation = Image.open(path).resize((427, 240), Image.NEAREST)
    return np.asarray(annotation) > 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    manager = make_manager(CONFIGS, workdir=str(tmp_path_factory.mktemp("app")), device="cpu")
    server = Server(create_app(manager), "127.0.0.1", 0).start()
    yield server, manager
    server.stop()
    manager.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does) "
                                "or point SAMPT_CHROMIUM at one")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: the test's folder, copied to ``$SAMPT_SCREENSHOTS`` when set."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
    target = os.environ.get("SAMPT_SCREENSHOTS")
    if target:
        shutil.copytree(folder, target, dirs_exist_ok=True)


def canvas_pixels(page, path: Path) -> np.ndarray:
    """The canvas as the page shows it, as RGB, at the clip's resolution."""
    page.locator("#canvas").screenshot(path=str(path))
    image = Image.open(path).convert("RGB")
    assert image.size == (427, 240), f"the canvas is shown at {image.size}, not the clip's 427x240"
    return np.asarray(image).astype(float)


def click_frame(page, x: float, y: float, button: str = "left") -> None:
    """Click the canvas at frame pixel (x, y) (the canvas may be drawn scaled)."""
    box = page.locator("#canvas").bounding_box()
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / 427, box["y"] + (y + 0.5) * box["height"] / 240,
                     button=button)


def go_to_frame(page, t: int) -> None:
    page.locator("#slider").fill(str(t))
    page.wait_for_function(f"document.getElementById('frame-label').textContent.startsWith('frame {t} ')")
    page.wait_for_function(f"document.body.dataset.drawn === '{t}@' + app.state.version")


def blended(frame_rgb: np.ndarray) -> np.ndarray:
    return MASK_ALPHA * RED + (1 - MASK_ALPHA) * frame_rgb


def test_click_propagate_correct_export_in_chromium(served, browser, shots):
    server, manager = served
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    page.wait_for_function("document.getElementById('clip-name').textContent.includes('car-shadow')")
    # The page opens with one object selected, ready for its first click.
    page.wait_for_selector("#objects li.selected")
    go_to_frame(page, 0)

    click_frame(page, *CAR)
    page.wait_for_function("document.getElementById('report').textContent.startsWith('add_object')")
    go_to_frame(page, 0)
    page.screenshot(path=str(shots / "01_first_click.png"))

    page.click("#propagate")
    page.wait_for_function("document.body.dataset.propagated !== undefined")
    assert "done: 8 frames" in page.locator("#progress-label").text_content()
    later = 6
    go_to_frame(page, later)
    page.screenshot(path=str(shots / "02_propagated.png"))
    shown = canvas_pixels(page, shots / "02_propagated_canvas.png")

    # What the page shows is the engine's mask of that frame, drawn in the object's colour...
    session = next(iter(manager._sessions.values()))
    engine = session.engine
    frame_rgb = engine.frames[later].permute(1, 2, 0).numpy().astype(float)
    mask = engine.index_mask(later).numpy() == 1
    far_from_points = far_from(engine, later)
    inside, outside = mask & far_from_points, ~mask & far_from_points
    assert inside.sum() > 50 and outside.sum() > 50
    # (JPEG decoding in the browser vs PIL: a few levels apart.)
    assert np.median(np.abs(shown[inside] - blended(frame_rgb[inside]))) < 8
    assert np.median(np.abs(shown[outside] - frame_rgb[outside])) < 8
    # ... and on the ground-truth car of that later frame, where the point was tracked to.
    car = ground_truth(later) & far_from_points
    assert (car & mask).sum() > 20, "the propagated mask misses the car on the later frame"
    red_excess = shown[..., 0] - shown[..., 1:].mean(-1)
    assert np.median(red_excess[car & mask]) > np.median((frame_rgb[..., 0] - frame_rgb[..., 1:].mean(-1))[car & mask]) + 20

    # A negative point on the later frame (right click): the frame changes, earlier ones do not.
    before_earlier = engine.index_mask(3).clone()
    before_later = engine.index_mask(later).clone()
    click_frame(page, *ROAD, button="right")
    page.wait_for_function("document.getElementById('report').textContent.startsWith('add_point')")
    go_to_frame(page, later)
    page.screenshot(path=str(shots / "03_corrected.png"))
    points = [p for p in session.points(later) if not p["positive"] and p["own_frame"]]
    assert len(points) == 1 and abs(points[0]["x"] - ROAD[0]) < 1 and abs(points[0]["y"] - ROAD[1]) < 1
    assert not engine.index_mask(later).equal(before_later), "the negative point changed nothing"
    assert engine.index_mask(3).equal(before_earlier)
    assert re.match(r"add_point: \d+\.\d{3} s", page.locator("#report").text_content())
    corrected = canvas_pixels(page, shots / "03_corrected_canvas.png")
    now = engine.index_mask(later).numpy() == 1
    changed = (now != mask) & far_from(engine, later)
    if changed.any():  # the canvas follows the correction where the mask changed
        expected = np.where(now[changed][:, None], blended(frame_rgb[changed]), frame_rgb[changed])
        assert np.median(np.abs(corrected[changed] - expected)) < 8

    # Export, then compare the exported index PNGs with the engine run on the same clicks.
    page.click("#export")
    page.wait_for_selector("#export-link:not([hidden])")
    with page.expect_download() as download_info:
        page.click("#export-link")
    archive_path = shots.parent / "export.zip"
    download_info.value.save_as(str(archive_path))
    page.screenshot(path=str(shots / "04_exported.png"))
    assert errors == [], errors

    # The same two clicks, where the page put them, given to a fresh engine directly.
    from sampt.methods.interactive import InteractiveSession

    first, negative = (i["arguments"] for i in engine.history_json()["interactions"])
    assert abs(first["points"][0][0] - CAR[0] - 0.5) < 1 and abs(negative["x"] - ROAD[0] - 0.5) < 1
    assert negative["frame"] == later and negative["positive"] is False
    clip = manager.initial_clip()
    sam, tracker, config = manager.models
    direct = InteractiveSession(clip.frames, sam, tracker, config, frame_names=clip.frame_names, eager=False)
    direct.add_object(1, 0, [tuple(first["points"][0])])
    direct.add_point(1, later, negative["x"], negative["y"], False)
    with zipfile.ZipFile(archive_path) as archive:
        names = set(archive.namelist())
        assert {"car-shadow_overlay.mp4", "car-shadow_query_points.txt", "car-shadow_session.json",
                "car-shadow_history.json"} <= names
        for t, name in enumerate(clip.frame_names):
            exported = np.asarray(Image.open(io.BytesIO(archive.read(f"car-shadow/{name}.png"))))
            assert (exported == direct.index_mask(t).numpy()).all(), f"frame {t}"
    page.close()


def far_from(engine, t: int, radius: int = 9) -> np.ndarray:
    """Pixels of frame ``t`` farther than ``radius`` from every drawn point (points cover the mask)."""
    ys, xs = np.mgrid[0 : engine.height, 0 : engine.width]
    keep = np.ones((engine.height, engine.width), dtype=bool)
    for tracked in engine._state.points.values():
        x, y = (float(v) for v in tracked.trajectory[t])
        if np.isfinite(x) and np.isfinite(y):
            keep &= (xs - x) ** 2 + (ys - y) ** 2 > radius ** 2
    return keep
