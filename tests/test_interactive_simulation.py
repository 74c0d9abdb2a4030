"""The simulated annotator (SAM-PT's interactive protocol) on the interaction engine."""
from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import REPO
from sampt.methods.interactive import InteractiveSession
from sampt.methods.interactive.simulation import (SimulationOptions, _correct, correction_point, largest_cluster,
                                                  simulate_object)
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.trackers.lk import LucasKanadeTracker
from sampt.trackers.trivial import StaticTracker

CONFIG = SamPtConfig.from_flat(positive_points_per_mask=1, negative_points_per_mask=0,
                               iterative_refinement_iterations=1, sam_iou_threshold=float("-inf"),
                               masks_batch_size=1)


def textured_frames(num_frames=4, height=48, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 255, (num_frames, 3, height, width), dtype=np.uint8))


def session_for(frames, sam, tracker=None):
    return InteractiveSession(frames, sam, tracker or StaticTracker(), CONFIG, decode_rule="per_prompt", eager=False)


# -- choosing where to click -----------------------------------------------------------------

def test_largest_cluster_and_correction_points():
    region = np.zeros((40, 60), dtype=bool)
    region[2:8, 2:8] = True  # 36 px
    region[20:36, 30:50] = True  # 320 px: the largest
    assert largest_cluster(region, 100).sum() == 320
    # A largest cluster below the minimum falls back to the whole region, as in the original.
    assert largest_cluster(region, 1000).sum() == region.sum()
    x, y = correction_point(region, SimulationOptions(correction_point="interior", cluster_min_pixels=100),
                            np.random.default_rng(0))
    assert 30 + 6 <= x <= 50 - 6 and 20 + 6 <= y <= 36 - 6  # the middle of the big block
    for seed in range(3):
        x, y = correction_point(region, SimulationOptions(cluster_min_pixels=100), np.random.default_rng(seed))
        assert region[int(y), int(x)] and 30 <= x < 50  # a pixel of the largest cluster
    same = [correction_point(region, SimulationOptions(), np.random.default_rng(7)) for _ in range(2)]
    assert same[0] == same[1]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="correction_point"):
        SimulationOptions(correction_point="centre")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SimulationOptions(online_iou_threshold=1.5)
    with pytest.raises(ValueError, match="interactions_max"):
        SimulationOptions(interactions_max=0)


# -- the action order, by construction ---------------------------------------------------------

def test_actions_follow_the_original_order(tiny_sam):
    """Point categories depend only on the ground truth under each point, so the first actions are
    known whatever SAM predicts: the incorrect negative goes first, then the incorrect positive,
    then a point is added in the larger error region."""
    frames = textured_frames(num_frames=1)
    gt = np.zeros((48, 64), dtype=bool)
    gt[:, :32] = True  # the object is the left half
    session = session_for(frames, tiny_sam)
    session.add_object(1, 0, [(10.0, 10.0, True)])  # correct positive
    wrong_positive = session.add_point(1, 0, 50.0, 30.0, positive=True).point_ids[0]  # outside the object
    correct_negative = session.add_point(1, 0, 60.0, 5.0, positive=False).point_ids[0]
    wrong_negative = session.add_point(1, 0, 5.0, 30.0, positive=False).point_ids[0]  # inside the object
    options, rng = SimulationOptions(), np.random.default_rng(0)

    first = _correct(session, 1, 0, session.masks(0)[0].numpy(), gt, True, options, rng)
    assert (first["action"], first["type"], first["point_id"]) == ("remove", "negative", wrong_negative)
    second = _correct(session, 1, 0, session.masks(0)[0].numpy(), gt, True, options, rng)
    assert (second["action"], second["type"], second["point_id"]) == ("remove", "positive", wrong_positive)
    visible = {p.point_id for p, _, _ in session.visible_points(0)}
    assert wrong_negative not in visible and wrong_positive not in visible and correct_negative in visible

    mask = session.masks(0)[0].numpy()
    third = _correct(session, 1, 0, mask, gt, True, options, rng)
    false_negative, false_positive = ~mask & gt, mask & ~gt
    expected_type = "positive" if false_negative.sum() > false_positive.sum() else "negative"
    region = false_negative if expected_type == "positive" else false_positive
    assert third["action"] == "add" and third["type"] == expected_type
    assert region[int(third["y"]), int(third["x"])]
    added = session.points(1)[-1]
    assert added.point_id == third["point_id"] and added.positive == (expected_type == "positive")


# -- whole runs --------------------------------------------------------------------------------

def _object_gt(num_frames, height=48, width=64):
    gt = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        gt[t, 10:34, 8 + 2 * t : 36 + 2 * t] = True
    return gt


def test_online_run_respects_budgets_and_its_history_replays(tiny_sam):
    frames, gt = textured_frames(), _object_gt(4)
    options = SimulationOptions(online=True, online_iou_threshold=0.99, interactions_max=9, interactions_max_per_frame=2)
    session = session_for(frames, tiny_sam, LucasKanadeTracker())
    result = simulate_object(session, 1, 0, [(20.0, 20.0, True)], gt, options, np.random.default_rng(0))
    # The query point counts: 9 interactions = 1 query point + 8 corrections at most.
    assert len(result.history) == 8 and result.curve[0][0] == 1 and result.curve[-1][0] == 9
    assert [entry["interaction"] for entry in result.history] == list(range(2, 10))
    assert max(Counter(entry["frame"] for entry in result.history).values()) <= 2
    frames_visited = [entry["frame"] for entry in result.history]
    assert frames_visited == sorted(frames_visited)  # online: one pass, frame by frame
    # Each entry's overall scores are those of the point set after it.
    for before, after in zip(result.history, result.history[1:]):
        assert after["overall_j_before"] == before["overall_j_after"]
    # The final point set replays from its engine history to the same masks.
    replay = session_for(frames, tiny_sam, LucasKanadeTracker())
    for interaction in session.history:
        replay.apply(interaction)
    for t in range(4):
        assert torch.equal(replay.masks(t), session.masks(t))
    # Deterministic given the seed.
    again = simulate_object(session_for(frames, tiny_sam, LucasKanadeTracker()), 1, 0, [(20.0, 20.0, True)], gt,
                            options, np.random.default_rng(0))
    assert [(e["action"], e["type"], e["x"], e["y"], e["frame"]) for e in again.history] == \
           [(e["action"], e["type"], e["x"], e["y"], e["frame"]) for e in result.history]


def test_offline_ladder_keeps_the_best_pass(tiny_sam):
    frames, gt = textured_frames(), _object_gt(4)
    options = SimulationOptions(offline_iou_thresholds=(0.05, 0.5, 0.99), interactions_max=30,
                                interactions_max_per_frame=1)
    session = session_for(frames, tiny_sam, LucasKanadeTracker())
    result = simulate_object(session, 1, 0, [(20.0, 20.0, True)], gt, options, np.random.default_rng(0))
    assert [p["threshold"] for p in result.passes] == [0.05, 0.5, 0.99][: len(result.passes)]
    thresholds = [entry["threshold"] for entry in result.history]
    assert thresholds == sorted(thresholds)  # passes in ladder order
    final_j = float(np.mean([_j(session.masks(t)[0].numpy(), gt[t]) for t in range(4)]))
    best = max((p["mean_j"] for p in result.passes), default=-1.0)
    if result.kept_pass is not None:
        assert final_j == pytest.approx(best, abs=1e-9)
    else:
        assert final_j >= best - 1e-9


def _j(mask, gt):
    union = (mask | gt).sum()
    return 1.0 if union == 0 else (mask & gt).sum() / union


def test_baseline_without_tracking_prompts_each_frame_only_with_its_own_points(tiny_sam):
    frames, gt = textured_frames(), _object_gt(4)
    options = SimulationOptions(disable_point_tracking=True, interactions_max_per_frame=2)
    session = session_for(frames, tiny_sam, LucasKanadeTracker())
    result = simulate_object(session, 1, 0, [(20.0, 20.0, True)], gt, options, np.random.default_rng(0))
    assert result.curve[0][0] == 0  # no query points
    assert len(result.history) <= 2 * 4 and all(e["threshold"] == 1.0 for e in result.history)
    for point in session.points(1):
        assert not point.track
        assert session.tracked_point(point.point_id).visibility(0).nonzero()[:, 0].tolist() == [point.frame]


def test_sampt_test_runs_the_protocol_on_the_d17_layout(davis2017_sample, tmp_path, monkeypatch):
    from sampt.cli import main as sampt_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    sampt_main(["test", "--config", "configs/d17.yaml", "--config", "configs/model/sam_pt_interactive.yaml",
                "--config", "configs/test/tiny_sam.yaml", "--config", "configs/test/tiny.yaml",
                "--data.init_args.root", str(davis2017_sample), "--data.init_args.longest_size", "128",
                "--model.init_args.output_dir", str(out / "predictions"),
                "--trainer.logger.init_args.save_dir", str(out),
                "--model.init_args.method.init_args.tracker.class_path", "sampt.trackers.lk.LucasKanadeTracker",
                "--model.init_args.method.init_args.sam_pt.query.positive_points_per_mask", "1",
                "--model.init_args.method.init_args.sam_pt.query.negative_points_per_mask", "0",
                "--model.init_args.method.init_args.simulation.interactions_max", "6",
                "--model.init_args.method.init_args.annotated_video", "true"])
    assert (out / "global_results-val.csv").is_file()
    for video in ("blackswan", "car-shadow"):
        folder = out / "interactive" / video
        history = json.loads((folder / "history.json").read_text())
        assert history["simulation"]["online"] is True and history["simulation"]["interactions_max"] == 6
        (entry,) = history["objects"]
        assert entry["interactions_used"] <= 6 and len(entry["corrections"]) <= 5
        rows = list(csv.DictReader((folder / "curve.csv").open()))
        assert [int(r["interactions"]) for r in rows] == list(range(1, len(rows) + 1))
        last = rows[-1]
        assert float(last["J&F"]) == pytest.approx((float(last["J"]) + float(last["F"])) / 2, abs=2e-6)
        assert (folder / "curve.png").stat().st_size > 1000
        assert len(list((out / "predictions" / video).glob("*.png"))) == 5
        # One picture per correction, above each a caption strip.
        import av

        with av.open(str(folder / "corrections.mp4")) as container:
            pictures = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(pictures) == len(entry["corrections"]) > 0
        # 854x480 frames at longest side 128: 128x72, and the 22-pixel caption.
        # Enlarged to >= 480 px wide; the caption strip is darker than the picture.
        assert pictures[0].shape == (4 * 72 + 22, 4 * 128, 3) and pictures[0][:22].mean() < pictures[0][22:].mean()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "interactive/blackswan/object_1/J&F" in accumulator.Tags()["scalars"]


def test_the_protocol_needs_ground_truth(tiny_sam):
    from sampt.methods.interactive.method import InteractiveSimulationMethod
    from sampt.video import ObjectQuery, VideoItem

    method = InteractiveSimulationMethod.from_models(tiny_sam, StaticTracker(), CONFIG)
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:20, 10:20] = True
    video = VideoItem("clip", textured_frames(), [f"{t:05d}" for t in range(4)], [ObjectQuery(1, 0, mask=mask)],
                      (48, 64))
    with pytest.raises(ValueError, match="clip: the simulated annotator needs every frame's ground truth"):
        method.run(video, lambda output: None)


def test_correction_picture_shows_the_mask_the_outline_the_point_and_the_caption():
    from sampt.io.png import davis_palette
    from sampt.methods.interactive.annotated import RecordedCorrection, caption, correction_image

    frame = np.full((3, 60, 80), 90, dtype=np.uint8)
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 10:40] = True
    truth = np.zeros((60, 80), dtype=bool)
    truth[35:55, 45:75] = True
    entry = {"action": "add", "type": "negative", "x": 60.0, "y": 45.0, "frame": 3, "interaction": 7,
             "iou_before": 0.25, "iou_after": 0.5}
    recorded = RecordedCorrection.of(2, entry, mask)
    assert recorded.packed_mask.nbytes == 60 * 80 // 8 and (recorded.mask() == mask).all()
    image = correction_image(frame, recorded.mask(), truth, 2, entry, min_width=0)
    assert image.shape == (22 + 60, 80, 3)
    picture = image[22:].astype(int)
    green = np.array(davis_palette()[6:9])
    assert (np.abs(picture[20, 25] - (0.5 * green + 0.5 * 90)) <= 1).all()   # inside the mask: blended
    assert (picture[35, 50] >= 200).all() and (picture[45, 52] == 90).all()   # the outline; inside it, no fill
    assert (picture[45, 60] != 90).any()                                       # the point
    assert image[:22].max() > 100 and caption(2, entry).endswith("add negative  IoU 0.25 -> 0.50")
    # Small frames are enlarged by a whole factor (80 px -> 6 x 80 = 480 px): same picture, nearest pixels.
    large = correction_image(frame, recorded.mask(), truth, 2, entry)
    assert large.shape == (22 + 6 * 60, 6 * 80, 3)
    assert (large[22 + 6 * 20 + 3, 6 * 25 + 3] == image[22 + 20, 25]).all()
    assert (large[22 + 6 * 45 + 2, 6 * 60 + 2] != 90).any()  # the point, where it was
