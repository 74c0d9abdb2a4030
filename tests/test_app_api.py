"""`sampt app`'s HTTP API (FastAPI's TestClient): clip, objects, points, propagation, corrections,
undo, exports, saved sessions and the errors a user can cause. Tiny random SAM + LK on the
8-frame demo clip."""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sampt.app.clip import Limits
from sampt.app.server import create_app, make_manager
from sampt.app.sessions import SessionManager
from sampt.io.png import davis_palette

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [str(REPO / "configs" / "demo.yaml"), str(REPO / "configs" / "demo_tiny.yaml")]
CLIP = REPO / "assets" / "demo" / "car-shadow"
CAR = (215.0, 100.0)      # a positive point on the car's door (assets/demo/query_points.txt)
ROAD = (200.0, 165.0)     # the query file's negative point, on the road below the car
RED = tuple(davis_palette()[3:6])


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    return make_manager(CONFIGS, workdir=str(tmp_path_factory.mktemp("app")), device="cpu")


@pytest.fixture(scope="module")
def client(manager):
    from fastapi.testclient import TestClient

    return TestClient(create_app(manager))


def new_session(client) -> str:
    response = client.post("/api/sessions")
    assert response.status_code == 200, response.text
    return response.json()["session"]


def mask_of(client, sid: str, t: int) -> np.ndarray:
    response = client.get(f"/api/sessions/{sid}/masks/{t}.png")
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


def wait_propagated(client, sid: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        state = client.get(f"/api/sessions/{sid}").json()
        if not state["job"]["running"]:
            return state
        assert time.monotonic() < deadline, "propagation did not finish"
        time.sleep(0.05)


def click(client, sid, object_id, frame, xy, positive=True):
    return client.post(f"/api/sessions/{sid}/points",
                       json={"object_id": object_id, "frame": frame, "x": xy[0], "y": xy[1], "positive": positive})


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "propagate" in script.text


def test_click_propagate_correct_undo_export_match_the_engine(client, manager, tmp_path):
    sid = new_session(client)
    state = client.get(f"/api/sessions/{sid}").json()
    assert state["clip"]["num_frames"] == 8 and (state["clip"]["width"], state["clip"]["height"]) == (427, 240)
    frame = client.get(f"/api/sessions/{sid}/frames/3.jpg")
    assert frame.status_code == 200 and Image.open(io.BytesIO(frame.content)).size == (427, 240)

    state = client.post(f"/api/sessions/{sid}/objects").json()
    object_id = state["new_object"]
    assert object_id == 1 and state["objects"][0]["colour"] == list(RED)
    state = click(client, sid, object_id, 0, CAR).json()
    # Lazy engine: the click decodes the frame shown only.
    assert state["up_to_date"] == [True] + [False] * 7
    assert state["last_report"]["kind"] == "add_object" and state["last_report"]["seconds"] > 0
    first = mask_of(client, sid, 0)
    assert (first[..., 3] == 255).any(), "the clicked object has no mask on its frame"
    assert (first[first[..., 3] == 255][:, :3] == RED).all()

    assert client.post(f"/api/sessions/{sid}/propagate").status_code == 200
    state = wait_propagated(client, sid)
    assert state["job"]["done"] == 8 and state["job"]["report"]["kind"] == "propagate"
    assert all(state["up_to_date"])
    before = {t: mask_of(client, sid, t) for t in range(8)}

    # A negative point on a later frame: only frames from there on are pending again.
    state = click(client, sid, object_id, 5, ROAD, positive=False).json()
    assert state["last_report"]["kind"] == "add_point"
    assert state["up_to_date"][:5] == [True] * 5 and state["up_to_date"][5] is True
    points = client.get(f"/api/sessions/{sid}/points/5").json()["points"]
    negative = [p for p in points if not p["positive"] and p["own_frame"]]
    assert len(negative) == 1 and abs(negative[0]["x"] - ROAD[0]) < 1e-3
    assert not (mask_of(client, sid, 5) == before[5]).all(), "the negative point changed nothing"
    for t in range(5):
        assert (mask_of(client, sid, t) == before[t]).all()

    # Undo restores the earlier masks; redo brings the correction back.
    state = client.post(f"/api/sessions/{sid}/undo", json={"frame": 5}).json()
    assert state["can_redo"] and (mask_of(client, sid, 5) == before[5]).all()
    state = client.post(f"/api/sessions/{sid}/redo", json={"frame": 5}).json()
    assert not state["can_redo"]
    corrected = mask_of(client, sid, 5)

    # Removing the negative point by its id (a click on it in the page).
    removed = client.post(f"/api/sessions/{sid}/points/{negative[0]['id']}/remove", json={"frame": 5}).json()
    assert (mask_of(client, sid, 5) == before[5]).all()
    client.post(f"/api/sessions/{sid}/undo", json={"frame": 5})
    assert (mask_of(client, sid, 5) == corrected).all()
    assert removed["can_undo"]

    state = client.post(f"/api/sessions/{sid}/export").json()
    export = state["export"]
    names = set(export["files"])
    assert {"car-shadow/00000.png", "car-shadow/00007.png", "car-shadow_overlay.mp4", "car-shadow_history.json",
            "car-shadow_query_points.txt", "car-shadow_session.json", "objects/car-shadow/1/00005.png"} <= names
    archive = zipfile.ZipFile(io.BytesIO(client.get(export["url"]).content))
    assert set(archive.namelist()) == names

    # The same clicks on the engine directly give the same index PNGs.
    from sampt.methods.interactive import InteractiveSession

    clip = manager.initial_clip()
    sam, tracker, config = manager.models
    engine = InteractiveSession(clip.frames, sam, tracker, config, frame_names=clip.frame_names, eager=False)
    engine.add_object(1, 0, [(CAR[0], CAR[1], True)])
    engine.add_point(1, 5, ROAD[0], ROAD[1], False)
    for t, name in enumerate(clip.frame_names):
        exported = np.asarray(Image.open(io.BytesIO(archive.read(f"car-shadow/{name}.png"))))
        assert (exported == engine.index_mask(t).numpy()).all(), f"frame {t}"
        binary = np.asarray(Image.open(io.BytesIO(archive.read(f"objects/car-shadow/1/{name}.png"))))
        assert ((binary > 0) == (engine.index_mask(t).numpy() == 1)).all()
    assert archive.read("car-shadow_query_points.txt").decode().split() == ["1", "0", ";", "215,100"]
    history = json.loads(archive.read("car-shadow_history.json"))
    assert [i["kind"] for i in history["interactions"]] == ["add_object", "add_point"]


def test_saved_session_reopens_with_the_same_points_and_masks(client):
    sid = new_session(client)
    client.post(f"/api/sessions/{sid}/objects")
    click(client, sid, 1, 2, CAR)
    client.post(f"/api/sessions/{sid}/objects")
    click(client, sid, 2, 3, ROAD)
    saved = client.get(f"/api/sessions/{sid}/session.json")
    assert saved.status_code == 200 and "attachment" in saved.headers["content-disposition"]
    expected = mask_of(client, sid, 4)

    other = new_session(client)
    state = client.post(f"/api/sessions/{other}/session", files={"file": ("s.json", saved.content)}).json()
    assert [o["id"] for o in state["objects"]] == [1, 2] and state["objects"][1]["first_frame"] == 3
    assert (mask_of(client, other, 4) == expected).all()
    assert client.get(f"/api/sessions/{other}/points/2").json()["points"][0]["x"] == CAR[0]

    bad = client.post(f"/api/sessions/{other}/session", files={"file": ("s.json", b"{\"format\": 1}")})
    assert bad.status_code == 400 and "not a saved session" in bad.json()["error"]
    assert [o["id"] for o in client.get(f"/api/sessions/{other}").json()["objects"]] == [1, 2]


def frames_zip(count: int, names=None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for t, path in enumerate(sorted(CLIP.glob("*.jpg"))[:count]):
            archive.writestr((names or {}).get(t, f"clip/{path.name}"), path.read_bytes())
    return buffer.getvalue()


def test_uploaded_frames_zip_opens_and_sessions_need_their_clip(client, manager):
    sid = new_session(client)
    response = client.post(f"/api/sessions/{sid}/upload", files={"file": ("mine.zip", frames_zip(3))})
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["clip"]["num_frames"] == 3 and state["clip"]["name"] == "mine" and state["objects"] == []
    uploads = manager.get(sid).folder / "uploads"
    assert sorted(p.name for p in uploads.rglob("*.jpg")) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    client.post(f"/api/sessions/{sid}/objects")
    click(client, sid, 1, 1, CAR)
    saved = client.get(f"/api/sessions/{sid}/session.json").content

    other = new_session(client)  # on the server's clip (8 frames): the saved clip is not there
    refused = client.post(f"/api/sessions/{other}/session", files={"file": ("s.json", saved)})
    assert refused.status_code == 409 and "open that clip first" in refused.json()["error"]
    client.post(f"/api/sessions/{other}/upload", files={"file": ("again.zip", frames_zip(3))})
    reopened = client.post(f"/api/sessions/{other}/session", files={"file": ("s.json", saved)}).json()
    assert reopened["clip"]["num_frames"] == 3 and reopened["objects"][0]["first_frame"] == 1


def test_user_errors_are_messages_and_keep_the_points(client, manager, tmp_path):
    sid = new_session(client)
    client.post(f"/api/sessions/{sid}/objects")
    click(client, sid, 1, 0, CAR)

    outside = click(client, sid, 1, 0, (427.0, 10.0))
    assert outside.status_code == 400 and "outside the frame" in outside.json()["error"]
    bad_frame = click(client, sid, 1, 8, CAR)
    assert bad_frame.status_code == 404 and "out of range" in bad_frame.json()["error"]
    first_negative = click(client, sid, 99, 0, CAR)
    assert first_negative.status_code == 404 and "unknown object" in first_negative.json()["error"]
    malformed = client.post(f"/api/sessions/{sid}/points", json={"object_id": 1, "frame": "x"})
    assert malformed.status_code == 422 and "bad request" in malformed.json()["error"]

    wrong_type = client.post(f"/api/sessions/{sid}/upload", files={"file": ("notes.txt", b"hello")})
    assert wrong_type.status_code == 400 and "not a clip" in wrong_type.json()["error"]
    traversal_name = client.post(f"/api/sessions/{sid}/upload", files={"file": ("../../evil.mp4", b"x" * 64)})
    assert traversal_name.status_code == 400 and "refused upload name" in traversal_name.json()["error"]
    traversal_member = client.post(f"/api/sessions/{sid}/upload",
                                   files={"file": ("frames.zip", frames_zip(2, {1: "../../evil.jpg"}))})
    assert traversal_member.status_code == 400 and "refused zip member" in traversal_member.json()["error"]
    not_zip = client.post(f"/api/sessions/{sid}/upload", files={"file": ("frames.zip", b"PK not a zip")})
    assert not_zip.status_code == 400 and "not a valid zip" in not_zip.json()["error"]
    broken_video = client.post(f"/api/sessions/{sid}/upload", files={"file": ("clip.mp4", b"\0" * 4096)})
    assert broken_video.status_code == 400 and "cannot" in broken_video.json()["error"]
    assert not list(manager.workdir.parent.rglob("evil.*")), "an upload escaped the session folder"

    unknown = client.get("/api/sessions/nope")
    assert unknown.status_code == 404 and "unknown session" in unknown.json()["error"]
    assert client.post("/api/sessions/nope/points", json={"object_id": 1, "frame": 0, "x": 1, "y": 1}).status_code == 404

    # Nothing above lost the first point or the clip.
    state = client.get(f"/api/sessions/{sid}").json()
    assert state["clip"]["num_frames"] == 8 and state["objects"][0]["points"] == 1

    from fastapi.testclient import TestClient

    small = SessionManager(tmp_path, Limits(max_upload_mib=0.01), manager.models, CLIP)
    small_client = TestClient(create_app(small))
    small_sid = small_client.post("/api/sessions").json()["session"]
    too_big = small_client.post(f"/api/sessions/{small_sid}/upload", files={"file": ("f.zip", frames_zip(3))})
    assert too_big.status_code == 413 and "0.01 MiB" in too_big.json()["error"]


def test_propagation_can_be_cancelled_and_interactions_wait_for_it(client, manager, monkeypatch):
    import threading

    sid = new_session(client)
    client.post(f"/api/sessions/{sid}/objects")
    click(client, sid, 1, 0, CAR)
    session = manager.get(sid)
    # The worker waits at the gate (holding the session's lock, as a running propagation does)
    # until the cancel has been sent: the cancel is seen before any frame is done.
    gate = threading.Event()
    propagate = session.engine.propagate

    def gated_propagate(**kwargs):
        assert gate.wait(30), "the test never opened the gate"
        return propagate(**kwargs)

    monkeypatch.setattr(session.engine, "propagate", gated_propagate)
    assert client.post(f"/api/sessions/{sid}/propagate").status_code == 200
    busy = click(client, sid, 1, 3, CAR)
    assert busy.status_code == 409 and "cancel" in busy.json()["error"]
    assert client.get(f"/api/sessions/{sid}/masks/4.png").status_code == 202
    client.post(f"/api/sessions/{sid}/cancel")
    gate.set()
    state = wait_propagated(client, sid)
    assert state["job"]["report"]["cancelled"] is True and state["job"]["done"] == 0
    assert state["up_to_date"][1:] == [False] * 7 and state["objects"][0]["points"] == 1


def test_config_stacking_and_errors(tmp_path):
    from sampt.app.config import AppConfigError, read_app_config

    stacked = read_app_config([CONFIGS[0], str(REPO / "configs" / "test" / "tiny.yaml")])
    # A later config's class_path replaces the tracker and drops the earlier one's (LK) arguments.
    assert stacked.method["tracker"]["class_path"] == "sampt.trackers.trivial.StaticTracker"
    assert not stacked.method["tracker"].get("init_args")
    assert stacked.clip.resolve() == CLIP.resolve()
    assert read_app_config(CONFIGS, video=tmp_path).clip == tmp_path
    sam2 = tmp_path / "sam2.yaml"
    sam2.write_text("model:\n  init_args:\n    method:\n      class_path: sampt.methods.sam2_video.Sam2VideoMethod\n")
    with pytest.raises(AppConfigError, match="sampt app runs SAM-PT"):
        read_app_config([str(sam2)])
    with pytest.raises(AppConfigError, match="does not exist"):
        read_app_config([str(tmp_path / "missing.yaml")])


def test_cli_reports_an_unreadable_clip(tmp_path, capsys):
    from sampt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["app", *sum((["--config", c] for c in CONFIGS), []), "--video", str(tmp_path / "none.mp4")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
