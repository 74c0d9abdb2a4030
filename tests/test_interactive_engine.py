"""The interaction engine against SAM-PT run from scratch on the same final point set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sampt.methods.interactive import InteractiveSession
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import EMPTY_LOGIT, Queries, SamPt
from sampt.trackers.lk import LucasKanadeTracker
from sampt.trackers.trivial import StaticTracker

NUM_FRAMES, HEIGHT, WIDTH = 6, 48, 80
CONFIG = SamPtConfig.from_flat(positive_points_per_mask=1, negative_points_per_mask=1,
                               iterative_refinement_iterations=1, sam_iou_threshold=-1.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)  # later modules' reference tolerances assume the suite's 2 threads


def moving_texture(num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, seed=0):
    """A smooth random texture sliding 2 px right and 1 px down per frame (LK can follow it)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(3, height // 4 + 8, width // 4 + 8)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], scale_factor=4, mode="bicubic",
                                          align_corners=False)[0].clamp(0, 255)
    frames = [big[:, 16 - t : 16 - t + height, 16 - 2 * t : 16 - 2 * t + width] for t in range(num_frames)]
    return torch.stack(frames).round().to(torch.uint8)


class CountingTracker(LucasKanadeTracker):
    """LK, remembering every query tensor it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.lengths = []

    def forward(self, video, queries):
        self.calls.append(queries.clone())
        self.lengths.append(int(video.shape[1]))
        return super().forward(video, queries)


def from_scratch(frames, sam, session, config=CONFIG):
    """SAM-PT from scratch on the session's final point set: every point tracked (all at once,
    by ``SamPt.track``), the interactive rules applied to visibility, then ``SamPt.segment``."""
    object_ids = sorted({p.object_id for p in session.points()} | set(session.object_ids))
    per_object = {o: [p for p in session.points() if p.object_id == o] for o in object_ids}
    positives = {o: [p for p in per_object[o] if p.positive] for o in object_ids}
    negatives = {o: [p for p in per_object[o] if not p.positive] for o in object_ids}
    num_positive = max(len(v) for v in positives.values())
    num_negative = max(len(v) for v in negatives.values())
    points = torch.zeros(len(object_ids), num_positive + num_negative, 3)
    valid = torch.zeros(len(object_ids), num_positive + num_negative, dtype=torch.bool)
    slots = {}
    for m, o in enumerate(object_ids):
        for s, p in [(s, p) for s, p in enumerate(positives[o])] + \
                    [(num_positive + s, p) for s, p in enumerate(negatives[o])]:
            points[m, s] = torch.tensor([p.frame, p.x, p.y])
            valid[m, s] = True
            slots[p.point_id] = (m, s)
    pipeline = SamPt(sam, LucasKanadeTracker(), config)
    tracks = pipeline.track(frames, Queries(points, num_positive, valid, torch.zeros(0)))
    for p in session.points():
        m, s = slots[p.point_id]
        first = session.first_frame(p.object_id)
        start = first if p.backward else max(first, p.frame)
        tracks.visibilities[:start, m, s] = False
        if not p.track:
            tracks.visibilities[:, m, s] = False
        # The engine's rule: a point is visible at its own position on its own frame.
        tracks.trajectories[p.frame, m, s] = torch.tensor([p.x, p.y])
        tracks.visibilities[p.frame, m, s] = True
        if p.removed_from is not None:
            tracks.visibilities[p.removed_from:, m, s] = False
    outputs = pipeline.segment(frames, tracks, num_positive, (HEIGHT, WIDTH), np.random.default_rng(0))
    logits = [output.logits for output, _ in outputs]
    for m, o in enumerate(object_ids):
        for t in range(session.first_frame(o)):
            logits[t][m] = EMPTY_LOGIT  # an object does not exist before its first frame
    return logits


def assert_matches_from_scratch(session, frames, sam, config=CONFIG):
    expected = from_scratch(frames, sam, session, config)
    for t in range(NUM_FRAMES):
        got = session.logits(t).clamp(min=EMPTY_LOGIT)
        assert torch.equal(got > 0, expected[t] > 0), f"frame {t}"
        assert torch.allclose(got, expected[t], atol=1e-4, rtol=1e-4), f"frame {t}"


def all_masks(session):
    return torch.stack([session.masks(t) for t in range(session.num_frames)])


def test_each_operation_matches_sam_pt_from_scratch(tiny_sam):
    frames = moving_texture()
    session = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), CONFIG)
    session.add_object(3, 0, [(20.0, 20.0, True), (60.0, 30.0, False)])
    assert_matches_from_scratch(session, frames, tiny_sam)
    session.add_object(5, 2, [(50.0, 20.0, True)])  # an object that starts mid-video
    assert session.masks(0)[1].sum() == 0 and session.masks(1)[1].sum() == 0
    assert session.masks(2)[1].any()
    assert_matches_from_scratch(session, frames, tiny_sam)
    extra = session.add_point(3, 3, 30.0, 28.0, positive=True).point_ids[0]
    assert_matches_from_scratch(session, frames, tiny_sam)
    session.add_point(5, 4, 30.0, 10.0, positive=False, backward=True)  # backward, down to frame 2
    assert_matches_from_scratch(session, frames, tiny_sam)
    session.remove_point(extra, 4)
    assert_matches_from_scratch(session, frames, tiny_sam)
    session.add_object(4, 1, [(40.0, 35.0, True)])
    session.remove_object(5)
    assert session.object_ids == [3, 4]
    assert_matches_from_scratch(session, frames, tiny_sam)


@pytest.mark.parametrize("options", [
    # Objects act as each other's negatives in groups of 2: removing one regroups the others.
    dict(masks_batch_size=2, iterative_refinement_iterations=3, sam_iou_threshold=0.0),
    # No negative points: one decoder call per prompt, no positives-only first step.
    dict(negative_points_per_mask=0, iterative_refinement_iterations=0, sam_iou_threshold=-1.0),
])
def test_object_changes_match_sam_pt_from_scratch_with_other_options(tiny_sam, options):
    config = CONFIG.replace(**options)
    negative = config.query.negative_points_per_mask > 0
    frames = moving_texture()
    session = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), config)
    session.add_object(1, 0, [(20.0, 20.0, True)] + [(60.0, 30.0, False)] * negative)
    session.add_object(2, 1, [(50.0, 20.0, True)])
    session.add_object(3, 0, [(35.0, 36.0, True)])
    assert_matches_from_scratch(session, frames, tiny_sam, config)
    session.remove_object(2)
    assert_matches_from_scratch(session, frames, tiny_sam, config)
    session.undo()
    session.add_point(3, 2, 44.0, 30.0, positive=True, backward=True)
    assert_matches_from_scratch(session, frames, tiny_sam, config)


def test_per_prompt_decode_rule_follows_the_original_interactive_simulation(tiny_sam):
    from dataclasses import replace

    from sampt.methods.sam_pt.pipeline import prompter_config
    from sampt.sam.prompting import PointPrompt, SamPrompter

    frames = moving_texture()
    session = InteractiveSession(frames, tiny_sam, StaticTracker(), CONFIG.replace(masks_batch_size=1),
                                 decode_rule="per_prompt")
    session.add_object(1, 0, [(20.0, 20.0, True), (60.0, 30.0, False)])  # two-step: it has a negative
    session.add_object(2, 0, [(50.0, 20.0, True)])                       # one step: positives only
    session.add_object(3, 0, [(10.0, 40.0, False)])                      # no positive: no mask
    embedding = tiny_sam.embed_frames(frames[2:3])[0]
    base = prompter_config(CONFIG.replace(masks_batch_size=1))
    for object_row, (points, labels, negatives) in enumerate([([[20.0, 20.0], [60.0, 30.0]], [1, 0], 1),
                                                              ([[50.0, 20.0]], [1], 0)]):
        prompter = SamPrompter(tiny_sam, replace(base, negative_points_per_mask=negatives))
        prompt = PointPrompt(torch.tensor(points), torch.tensor(labels))
        expected = prompter.predict_frame(embedding, [prompt]).logits[0]
        assert torch.allclose(session.logits(2)[object_row], expected, atol=1e-4)
    assert not session.masks(2)[2].any() and session.scores(2)[2] == float("-inf")
    with pytest.raises(ValueError, match="decode_rule"):
        InteractiveSession(frames, tiny_sam, StaticTracker(), CONFIG, decode_rule="other")


def test_a_correction_tracks_one_point_and_decodes_only_changed_prompts(tiny_sam):
    frames = moving_texture()
    tracker = CountingTracker()
    session = InteractiveSession(frames, tiny_sam, tracker, CONFIG)
    first = session.add_object(1, 0, [(20.0, 20.0, True), (60.0, 30.0, False)])
    assert first.frames_encoded == NUM_FRAMES and first.embedding_cache_hits == 0
    session.add_object(2, 0, [(50.0, 20.0, True)])
    tracker.calls.clear()
    tracker.lengths.clear()
    encoded_before = session.cache.misses

    # A negative point for object 1 on frame 3: only object 1's prompts on frames 3.. change.
    report = session.add_point(1, 3, 10.0, 40.0, positive=False)
    assert len(tracker.calls) == 1 and tracker.calls[0].shape == (1, 1, 3)
    # Tracked forward only: the tracker sees frames 3.. with the query on their first frame.
    assert tracker.calls[0][0, 0].tolist() == [0.0, 10.0, 40.0] and tracker.lengths == [NUM_FRAMES - 3]
    visible = session.tracked_point(report.point_ids[0]).visibility(0)
    assert not visible[:3].any() and visible[3]
    new_id = report.point_ids[0]
    assert [p.point_id for p, _, _ in session.visible_points(3)].count(new_id) == 1
    assert new_id not in [p.point_id for p, _, _ in session.visible_points(2)]
    assert [(x, y) for p, x, y in session.visible_points(3) if p.point_id == new_id] == [(10.0, 40.0)]
    expected_frames = torch.nonzero(visible)[:, 0].tolist()
    assert report.frames_resegmented == expected_frames
    assert report.prompts_decoded == len(expected_frames)  # object 2 is untouched by a negative
    assert report.frames_encoded == 0 and report.embedding_cache_hits == len(expected_frames)
    assert session.cache.misses == encoded_before
    assert report.decoder_calls > 0 and report.seconds >= report.decoder_seconds > 0

    # A positive point of object 1 is also a negative of object 2 (other objects' positives).
    report = session.add_point(1, 4, 25.0, 22.0, positive=True)
    visible = session.tracked_point(report.point_ids[0]).visibility(0)
    assert report.prompts_decoded == 2 * int(visible.sum())
    assert report.frames_encoded == 0


def test_bounded_embedding_cache_evicts_least_recently_used(tiny_sam):
    frames = moving_texture()
    one = tiny_sam.embed_frames(frames[:1])[0].features
    mib = 2.5 * one.numel() * one.element_size() / 2 ** 20  # room for two embeddings
    session = InteractiveSession(frames, tiny_sam, StaticTracker(), CONFIG, embedding_cache_mib=mib)
    session.add_object(1, 0, [(20.0, 20.0, True)])
    assert len(session.cache) == 2 and session.cache.cached_frames() == [4, 5]
    report = session.add_point(1, 4, 30.0, 30.0, positive=False)  # frames 4, 5: both cached
    assert report.frames_encoded == 0 and report.embedding_cache_hits == 2
    cached_masks = all_masks(session)
    report = session.add_point(1, 1, 40.0, 30.0, positive=False)  # frames 1..5: 1, 2, 3 recomputed
    assert report.frames_encoded == 3 and report.embedding_cache_hits == 2
    assert session.cache.size_bytes <= mib * 2 ** 20

    uncached = InteractiveSession(frames, tiny_sam, StaticTracker(), CONFIG, embedding_cache_mib=0)
    uncached.add_object(1, 0, [(20.0, 20.0, True)])
    assert uncached.add_point(1, 4, 30.0, 30.0, positive=False).frames_encoded == 2
    assert len(uncached.cache) == 0
    assert torch.equal(all_masks(uncached), cached_masks)  # the cache changes the cost, not the masks


def test_undo_redo_round_trip_without_tracking(tiny_sam):
    frames = moving_texture()
    tracker = CountingTracker()
    session = InteractiveSession(frames, tiny_sam, tracker, CONFIG)
    session.add_object(1, 0, [(20.0, 20.0, True), (60.0, 30.0, False)])
    before = all_masks(session)
    point = session.add_point(1, 2, 45.0, 25.0, positive=True).point_ids[0]
    session.remove_point(point, 4)
    after = all_masks(session)
    assert not torch.equal(before, after)
    calls = len(tracker.calls)

    session.undo()
    assert session.points()[-1].removed_from is None
    undone = session.undo()
    assert torch.equal(all_masks(session), before)
    assert undone.frames_encoded == 0 and undone.prompts_decoded > 0
    assert [i.kind for i in session.history] == ["add_object"] and session.can_redo
    session.redo()
    redone = session.redo()
    assert torch.equal(all_masks(session), after)
    assert redone.frames_encoded == 0 and not session.can_redo
    assert len(tracker.calls) == calls  # tracks are kept, never recomputed on undo / redo
    assert [r.kind for r in session.log][-4:] == ["undo", "undo", "redo", "redo"]

    session.undo()
    session.add_point(1, 1, 10.0, 10.0, positive=False)  # a new branch drops the redo
    assert not session.can_redo
    with pytest.raises(ValueError, match="nothing to redo"):
        session.redo()


def test_replaying_the_history_is_deterministic(tiny_sam, tmp_path):
    frames = moving_texture()
    session = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), CONFIG)
    session.add_object(1, 0, [(20.0, 20.0, True), (60.0, 30.0, False)])
    session.add_object(2, 1, [(50.0, 20.0, True), (12.0, 40.0, False)])
    point = session.add_point(1, 2, 30.0, 30.0).point_ids[0]
    session.remove_point(point, 3)
    session.write_history(tmp_path / "history.json")
    data = json.loads((tmp_path / "history.json").read_text())
    assert [i["kind"] for i in data["interactions"]] == ["add_object", "add_object", "add_point", "remove_point"]
    assert len(data["calls"]) == 4 and all(c["seconds"] > 0 for c in data["calls"])

    replayed = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), CONFIG)
    for interaction in data["interactions"]:
        replayed.apply(interaction)
    assert torch.equal(all_masks(replayed), all_masks(session))
    for t in range(NUM_FRAMES):
        assert torch.equal(replayed.logits(t), session.logits(t))


def test_exports_vos_outputs_and_query_points(tiny_sam, tmp_path):
    from datamodules.generic import parse_query_points_file
    from sampt.io.png import read_index_png

    frames = moving_texture()
    session = InteractiveSession(frames, tiny_sam, StaticTracker(), CONFIG, name="clip")
    session.add_object(1, 0, [(20.0, 20.0, True), (60.0, 30.0, False)])
    session.add_object(7, 2, [(50.0, 12.5, True), (10.0, 40.0, False)])
    session.add_point(1, 3, 30.0, 30.0)
    written = session.write_vos_outputs(tmp_path, overlay=True)

    assert [p.name for p in written["pngs"]] == [f"{t:05d}.png" for t in range(NUM_FRAMES)]
    for t, path in enumerate(written["pngs"]):
        assert np.array_equal(read_index_png(path), session.index_mask(t).numpy())
    assert set(np.unique(session.index_mask(3).numpy())) <= {0, 1, 7}
    tracks = np.load(written["tracks_npz"])
    assert tracks["trajectories"].shape == (NUM_FRAMES, 2, 3, 2)  # object 1: 2 positives + 1 negative
    assert tracks["object_ids"].tolist() == [1, 7]
    assert not tracks["visibilities"][:3, 0, 1].any() and tracks["visibilities"][3:, 0, 1].all()
    assert written["overlay"].stat().st_size > 0

    session.write_query_points(tmp_path / "points.txt")
    num_positive, objects = parse_query_points_file(tmp_path / "points.txt")
    assert num_positive == 1
    assert [t for t, _ in objects] == [0, 2]
    assert np.allclose(objects[1][1], [[50.0, 12.5], [10.0, 40.0]])
    session.add_point(7, 2, 15.0, 15.0)  # now object 7 has 2 first-frame positives, object 1 one
    with pytest.raises(ValueError, match="same numbers of positive and negative"):
        session.write_query_points(tmp_path / "points.txt")


def test_bad_calls_fail_clearly(tiny_sam):
    frames = moving_texture()
    session = InteractiveSession(frames, tiny_sam, StaticTracker(), CONFIG)
    with pytest.raises(ValueError, match="unknown object 9"):
        session.add_point(9, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match="out of range"):
        session.add_object(1, NUM_FRAMES, [(1.0, 1.0, True)])
    session.add_object(1, 2, [(20.0, 20.0, True)])
    with pytest.raises(ValueError, match="already exists"):
        session.add_object(1, 0)
    with pytest.raises(ValueError, match="before object 1's first frame 2"):
        session.add_point(1, 1, 5.0, 5.0)
    with pytest.raises(ValueError, match="unknown point 42"):
        session.remove_point(42, 3)
    with pytest.raises(ValueError, match="out of range"):
        session.remove_point(0, -1)
    with pytest.raises(ValueError, match="unknown interaction kind"):
        session.apply({"kind": "move_point", "arguments": {}})
    with pytest.raises(ValueError, match="use_point_reinit"):
        InteractiveSession(frames, tiny_sam, StaticTracker(), CONFIG.replace(use_point_reinit=True))
    assert len(session.history) == 1  # failed calls change nothing
    session.undo()
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()


def _corrections(session):
    session.add_object(1, 0, [(20.0, 20.0, True), (60.0, 30.0, False)])
    session.add_object(2, 1, [(50.0, 20.0, True)])
    point = session.add_point(1, 2, 12.0, 36.0, positive=False).point_ids[0]
    session.remove_point(point, 4)
    session.add_point(2, 3, 40.0, 10.0, positive=True, track=False)


def test_lazy_session_decodes_on_demand_and_equals_the_eager_one(tiny_sam):
    frames = moving_texture()
    eager = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), CONFIG)
    lazy = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), CONFIG, eager=False)
    _corrections(eager)
    _corrections(lazy)
    assert all(r.prompts_decoded == 0 and r.frames_encoded == 0 for r in lazy.log)
    assert not any(lazy.is_up_to_date(t) for t in range(NUM_FRAMES))

    # One frame asked for: one frame encoded and decoded, the others stay pending.
    assert torch.equal(lazy.logits(3), eager.logits(3))
    assert lazy.on_demand.frames_encoded == 1 and lazy.is_up_to_date(3) and not lazy.is_up_to_date(2)

    seen = []
    stop_after_two = lambda: len(seen) >= 2  # noqa: E731
    report = lazy.propagate(on_frame=seen.append, should_stop=stop_after_two)
    assert report.cancelled and seen == [0, 1] and not lazy.is_up_to_date(2)
    report = lazy.propagate(on_frame=seen.append)
    assert not report.cancelled and seen == [0, 1, 0, 1, 2, 3, 4, 5]
    assert report.frames_encoded == NUM_FRAMES - 3  # frames 0, 1 and 3 were done before
    assert torch.equal(all_masks(lazy), all_masks(eager))
    assert_matches_from_scratch(lazy, frames, tiny_sam)


def test_untracked_point_prompts_its_frame_only_and_removal_has_its_reason(tiny_sam):
    from sampt.visibility import VisibilityReason

    frames = moving_texture()
    session = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), CONFIG)
    _corrections(session)
    untracked = session.points(2)[-1]
    visible = session.tracked_point(untracked.point_id).visibility(1)
    assert visible.tolist() == [t == 3 for t in range(NUM_FRAMES)]
    trajectories, visibilities, reasons, point_ids = session.tracks()
    removed = session.points(1)[-1]
    m, slot = 0, point_ids[0].index(removed.point_id)
    assert reasons[4:, m, slot].tolist() == [int(VisibilityReason.REMOVED_BY_USER)] * (NUM_FRAMES - 4)
    assert not visibilities[4:, m, slot].any() and visibilities[2, m, slot]
    assert torch.isnan(trajectories[:2, m, slot]).all()  # never tracked before the frame it was placed on
    with pytest.raises(ValueError, match="outside the frame"):
        session.add_point(1, 0, WIDTH + 1.0, 5.0)
    # A replayed history gives the same point set, the untracked point included.
    replay = InteractiveSession(frames, tiny_sam, LucasKanadeTracker(), CONFIG)
    for interaction in session.history_json()["interactions"]:
        replay.apply(interaction)
    assert torch.equal(all_masks(replay), all_masks(session))
