"""Frame sources (``sampt.frames``): every kind gives the frames the in-memory path gives, the
disk cache is reused only for the same file and options and falls back when unwritable, a
truncated video names its last good frame, and the streaming trackers equal their whole-video
results."""
from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import pytest
import torch

from conftest import VECTORS
from sampt.errors import InputFormatError
from sampt.frames import ImageFilesFrames, TensorFrames, VideoFileFrames

av = pytest.importorskip("av")


def _write_mp4(path, num_frames=40, size=(96, 160), faststart=False):
    container = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    stream = container.add_stream("libx264", rate=25, options={"g": "12"})
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    for t in range(num_frames):
        image = background.copy()
        image[20:50, (3 * t) % (size[1] - 30):(3 * t) % (size[1] - 30) + 30] = (255, 40, 40)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return _write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4")


def _decoded_whole(path, longest_size=None, stride=1):
    """Reference: every frame decoded in one sequential pass, resized like the data modules."""
    from sampt.datamodules.io import longest_side_shape, resize_rgb

    container = av.open(str(path))
    frames = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]
    container.close()
    size = longest_side_shape(frames[0].shape[1], frames[0].shape[2], longest_size)
    return torch.stack([resize_rgb(f, size) for f in frames[::stride]])


def test_video_file_cached_and_on_demand_equal_a_sequential_decode(mp4, tmp_path, caplog):
    expected = _decoded_whole(mp4, longest_size=128, stride=2)
    cached = VideoFileFrames(mp4, longest_size=128, frame_stride=2, cache_dir=tmp_path)
    assert cached.shape == expected.shape
    assert cached.fps == 12.5 and VideoFileFrames(mp4, use_cache=False).fps == 25.0  # every other frame of 25 fps
    assert torch.equal(cached[3], expected[3]) and cached.cached
    assert torch.equal(cached.to_tensor(), expected)
    # Backward reads of the on-demand decoder (chunks ending at t) and random access.
    on_demand = VideoFileFrames(mp4, longest_size=128, frame_stride=2, use_cache=False, chunk_frames=4)
    backwards = torch.stack([on_demand[t] for t in reversed(range(len(on_demand)))]).flip(0)
    assert torch.equal(backwards, expected)
    assert torch.equal(on_demand[[7, 2, 3, 15]], expected[[7, 2, 3, 15]])
    assert torch.equal(on_demand[1:9], expected[1:9])
    # A second source over the same file and options reuses the cache (and says so).
    with caplog.at_level(logging.INFO, logger="sampt.frames"):
        again = VideoFileFrames(mp4, longest_size=128, frame_stride=2, cache_dir=tmp_path)
        again.prepare()
    assert again._reused_cache and "reusing the decoded frames" in caplog.text
    assert torch.equal(again.to_tensor(), expected)
    # Other options: another cache entry, not a reuse.
    other = VideoFileFrames(mp4, longest_size=96, frame_stride=2, cache_dir=tmp_path)
    other.prepare()
    assert not other._reused_cache and other.cache_folder != again.cache_folder


def test_unwritable_cache_falls_back_to_decoding_on_demand(mp4, tmp_path, caplog):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    os.chmod(read_only, 0o500)
    try:
        if os.access(read_only, os.W_OK):
            # root ignores permissions: a file where the cache folder should be fails the same way
            read_only = tmp_path / "a-file"
            read_only.write_text("not a folder")
        source = VideoFileFrames(mp4, cache_dir=read_only)
        with caplog.at_level(logging.WARNING, logger="sampt.frames"):
            frames = source.to_tensor()
        assert "cannot write the decoded-frames cache" in caplog.text and "on demand" in caplog.text
        assert not source.cached and torch.equal(frames, _decoded_whole(mp4))
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_truncated_video_names_the_file_and_the_last_good_frame(tmp_path):
    whole = _write_mp4(tmp_path / "whole.mp4", num_frames=60, faststart=True)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    good = sum(1 for _ in _frames_until_error(truncated))
    for use_cache in (True, False):
        source = VideoFileFrames(truncated, use_cache=use_cache, cache_dir=tmp_path / "cache")
        assert len(source) == 60  # the container's count: the loss shows when decoding
        with pytest.raises(InputFormatError) as error:
            source.to_tensor()
        message = str(error.value)
        assert str(truncated) in message and f"last good frame is {good - 1}" in message
        if use_cache:
            assert not (source.cache_folder / "meta.json").exists()  # a partial cache is never reused


def _frames_until_error(path):
    container = av.open(str(path))
    try:
        for frame in container.decode(video=0):
            yield frame
    except av.FFmpegError:
        return
    finally:
        container.close()


def test_image_files_source_equals_the_in_memory_read(tmp_path, mp4):
    from sampt.datamodules.ytvos import read_frames_resized
    from PIL import Image

    frames = _decoded_whole(mp4)[:6]
    paths = []
    for t, frame in enumerate(frames):
        paths.append(tmp_path / f"{t:05d}.png")
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(paths[-1])
    expected, original = read_frames_resized(paths, 64)
    source = ImageFilesFrames(paths, tuple(expected.shape[-2:]), original, chunk_frames=2)
    assert torch.equal(source.to_tensor(), expected) and torch.equal(source[4], expected[4])
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(paths[5])
    with pytest.raises(InputFormatError, match="00005.png"):
        ImageFilesFrames(paths, tuple(expected.shape[-2:]), original)[5]


class _CountingFrames(TensorFrames):
    """Frames in memory that remember the largest range read at once (and do not offer the
    tensor whole: ``to_tensor`` reads every frame, as a streaming source would)."""

    in_memory = False

    def __init__(self, frames):
        super().__init__(frames)
        self.largest_read = 0

    def _read(self, start, stop):
        self.largest_read = max(self.largest_read, stop - start)
        return super()._read(start, stop)

    def gather(self, indices):
        return torch.stack([self[int(i)] for i in indices])

    def to_tensor(self):
        return self.read(0, self.num_frames)


def _cotracker_checkpoint(tmp_path):
    ref = VECTORS / "cotracker"
    spec = importlib.util.spec_from_file_location("cotracker_init_weights", ref / "init_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "v1.pth"
    torch.save(module.build_state_dict(str(ref / "state_dict_v1.json")), path)
    return str(path)


@pytest.mark.parametrize("tracker_name", ["LucasKanadeTracker", "CoTrackerTracker", "RaftTracker"])
def test_streaming_trackers_equal_the_whole_video_result(tracker_name, tmp_path, mp4):
    """Bit-identical on these frames: each step reads the same frames and does the same float
    operations in the same order as the whole-video path."""
    from sampt.trackers.base import build_tracker

    video = torch.load(VECTORS / "cotracker" / "video.pt", weights_only=True)["video"][:, :12]
    if tracker_name == "CoTrackerTracker":
        # A quarter of the default model pixels: the equality does not depend on the size.
        tracker = build_tracker(tracker_name, checkpoint_path=_cotracker_checkpoint(tmp_path), reuse_features=False,
                                interp_shape=(192, 256))
    elif tracker_name == "RaftTracker":
        torch.manual_seed(0)
        tracker = build_tracker(tracker_name, model="raft_small", num_flow_updates=2, batch_size=3, downscale=2)
    else:
        tracker = build_tracker(tracker_name)
    queries = torch.tensor([[0, 100.0, 120.0], [5, 200.0, 100.0], [11, 300.0, 50.0], [7, 50.0, 200.0]])
    with torch.no_grad():
        whole_traj, whole_vis = tracker(video, queries[None])
    steps = []
    streamed = _CountingFrames(video[0])
    traj, vis = tracker.track_frames(streamed, queries, progress=steps.append)
    assert torch.equal(traj, whole_traj[0]) and torch.equal(vis, whole_vis[0])
    assert sum(steps) == 2 * video.shape[1]
    assert len(steps) > 2 and all(n > 0 for n in steps)  # progress within each pass, not once a pass
    assert streamed.largest_read < video.shape[1]  # never the whole video at once


def test_streamed_cotracker_reuses_its_encoder_maps_through_a_spill_file(tmp_path, caplog):
    """reuse_features on a streamed clip: the backward pass reads the forward pass's maps back
    from a temporary file (within the reference tolerance of the whole-video path, which
    encodes other batches of frames); a spill file that cannot be written falls back to
    encoding again (bit-identical to reuse_features=False), with a warning."""
    from sampt.trackers.base import build_tracker
    from sampt.trackers import cotracker

    video = torch.load(VECTORS / "cotracker" / "video.pt", weights_only=True)["video"][:, :12]
    checkpoint = _cotracker_checkpoint(tmp_path)
    queries = torch.tensor([[0, 100.0, 120.0], [5, 200.0, 100.0], [11, 300.0, 50.0]])

    def tracker(reuse):
        return build_tracker("CoTrackerTracker", checkpoint_path=checkpoint, reuse_features=reuse,
                             interp_shape=(192, 256), feature_spill_dir=str(tmp_path))

    encoded = []
    original_encode = cotracker.CoTrackerV1.encode

    def counting_encode(self, rgbs, chunk=8):
        encoded.append(rgbs.shape[0])
        return original_encode(self, rgbs, chunk)

    reusing = tracker(True)
    with torch.no_grad():
        whole_traj, whole_vis = reusing(video, queries[None])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cotracker.CoTrackerV1, "encode", counting_encode)
        traj, vis = reusing.track_frames(_CountingFrames(video[0]), queries)
    assert sum(encoded) == 12  # every frame once: the backward pass read the spill file
    assert (traj - whole_traj[0]).abs().max() < 1e-3
    assert (vis == whole_vis[0]).float().mean() > 0.99

    re_encoding = tracker(False).track_frames(_CountingFrames(video[0]), queries)

    class FullDisk:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def seek(self, offset):
            pass

        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING, logger="sampt.trackers.cotracker"):
        patch.setattr(cotracker.tempfile, "TemporaryFile", FullDisk)
        fallback = reusing.track_frames(_CountingFrames(video[0]), queries)
    assert "No space left on device" in caplog.text and "encodes the frames again" in caplog.text
    assert torch.equal(fallback[0], re_encoding[0]) and torch.equal(fallback[1], re_encoding[1])


def test_memory_plans_say_what_each_tracker_holds_for_the_source_it_gets(tmp_path):
    """The plan asks the tracker about the very source it will track: CoTracker v1 reads a clip
    in memory whole (with every frame's encoder maps in RAM) and streams any other source, whose
    spill file on disk is the size the plan says; Lucas-Kanade streams both."""
    import os

    from sampt.lightning import format_plan
    from sampt.trackers.base import build_tracker
    from sampt.trackers import cotracker

    video = torch.load(VECTORS / "cotracker" / "video.pt", weights_only=True)["video"][0, :12]
    queries = torch.tensor([[0, 100.0, 120.0], [5, 200.0, 100.0]])
    tracker = build_tracker("CoTrackerTracker", checkpoint_path=_cotracker_checkpoint(tmp_path),
                            interp_shape=(192, 256), feature_spill_dir=str(tmp_path))
    in_memory, streamed = TensorFrames(video), _CountingFrames(video)
    whole_plan, streamed_plan = tracker.memory_plan(in_memory, 2), tracker.memory_plan(streamed, 2)
    feature_bytes = 128 * (192 // 4) * (256 // 4) * 4
    assert (tracker.streams(in_memory), tracker.streams(streamed)) == (False, True)
    assert whole_plan["streams"] is False and whole_plan["disk_bytes"] == 0
    long = video[:1].expand(1200, -1, -1, -1)  # a 1200-frame clip, for the plans only
    assert tracker.memory_plan(TensorFrames(long), 2)["bytes"] > 1200 * feature_bytes
    assert tracker.memory_plan(_CountingFrames(long), 2)["bytes"] < 100 * feature_bytes
    assert streamed_plan["disk_dir"] == str(tmp_path)

    spill_sizes = []
    original = cotracker.tempfile.TemporaryFile

    class MeasuredSpill:
        def __init__(self, *args, **kwargs):
            self.file = original(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            spill_sizes.append(os.fstat(self.file.fileno()).st_size)
            self.file.close()
            return False

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cotracker.tempfile, "TemporaryFile", MeasuredSpill)
        tracker.track_frames(streamed, queries)
    assert spill_sizes == [streamed_plan["disk_bytes"]] == [12 * feature_bytes]

    lk = build_tracker("LucasKanadeTracker")
    assert lk.streams(in_memory) and lk.streams(streamed) and lk.memory_plan(streamed, 2)["disk_bytes"] == 0
    plan = {"source": {"kind": "VideoFileFrames", "frames": 12, "size": [64, 96], "file": "clip.mp4"},
            "method": {"tracker": "CoTrackerTracker", "tracker_streams": True,
                       "tracker_bytes": streamed_plan["bytes"],
                       "tracker_disk": {"bytes": streamed_plan["disk_bytes"], "dir": streamed_plan["disk_dir"]}},
            "keep_masks": False, "expected_peak_bytes": 2**20}
    assert f"tracker scratch on disk in {tmp_path} (18 MiB)" in format_plan(plan)


def test_sampt_predict_streams_a_video_file_and_resumes(tmp_path, mp4, monkeypatch, capsys):
    """A video larger than ``stream_frames_above_mib`` (0 here) is decoded once into the cache
    and its masks written frame by frame; they and its overlay mp4 (encoded frame by frame from
    the PNGs read back) equal the in-memory run's, the plan is logged and says when the decoded
    frames are reused, and a rerun reuses the finished video."""
    from conftest import REPO, TINY_SAM
    from sampt.cli import main as sampt_main
    from PIL import Image

    def read_png(path):
        return (np.asarray(Image.open(path)),)

    monkeypatch.chdir(REPO)
    points = tmp_path / "points.txt"
    points.write_text("2\n0 ; 45,35 40,30 150,90\n")

    def predict(out, stream_above):
        sampt_main(["predict", "--config", "configs/demo.yaml", "--config", "configs/demo_tiny.yaml",
                    "--model.init_args.method.init_args.sam.checkpoint_path", str(TINY_SAM),
                    "--data.init_args.frames", str(mp4), "--data.init_args.query_points", str(points),
                    "--data.init_args.max_frames", "12", "--data.init_args.stream_frames_above_mib", stream_above,
                    "--data.init_args.frame_cache_dir", str(tmp_path / "cache"),
                    "--model.init_args.outputs.write_overlay_gif", "true",
                    "--model.init_args.outputs.write_overlay_mp4", "true",
                    "--model.init_args.output_dir", str(out / "predictions"),
                    "--trainer.logger.init_args.save_dir", str(out)])
        return capsys.readouterr()

    streamed = predict(tmp_path / "streamed", "0")
    said = streamed.out + streamed.err
    assert "plan: 12 frames" in said and "masks written frame by frame" in said
    assert f"decoded once into {tmp_path / 'cache'}" in said and "reusing the frames" not in said
    assert "clip: no overlay gif (the video is streamed" in said and "the mp4 is written frame by frame" in said
    in_memory = predict(tmp_path / "memory", "null")
    assert "held in memory" in in_memory.out + in_memory.err
    names = sorted(p.stem for p in (tmp_path / "memory/predictions/clip").glob("*.png"))
    assert len(names) == 12
    for name in names:
        a = read_png(tmp_path / "streamed/predictions/clip" / f"{name}.png")[0]
        b = read_png(tmp_path / "memory/predictions/clip" / f"{name}.png")[0]
        assert np.array_equal(a, b), name
    assert (tmp_path / "streamed/overlays/clip.png").is_file()
    assert not (tmp_path / "streamed/overlays/clip.gif").exists() and (tmp_path / "memory/overlays/clip.gif").is_file()

    def decoded(path):
        with av.open(str(path)) as container:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])

    streamed_mp4, memory_mp4 = decoded(tmp_path / "streamed/overlays/clip.mp4"), decoded(tmp_path / "memory/overlays/clip.mp4")
    assert streamed_mp4.shape[0] == 12 and np.array_equal(streamed_mp4, memory_mp4)
    for run in ("streamed", "memory"):  # the overlay plays at the source video's rate
        with av.open(str(tmp_path / run / "overlays/clip.mp4")) as container:
            assert container.streams.video[0].average_rate == 25
    with Image.open(tmp_path / "memory/overlays/clip.gif") as gif:
        assert gif.info["duration"] == 40
    again = predict(tmp_path / "streamed", "0")
    assert "1 reused" in again.out + again.err
    elsewhere = predict(tmp_path / "elsewhere", "0")
    assert f"reusing the frames an earlier run decoded into {tmp_path / 'cache'}" in elsewhere.out + elsewhere.err
    # What an interrupted run leaves: some PNGs, no completion marker. The rerun says so and
    # recomputes the video.
    from sampt.writers import COMPLETION_MARKER

    folder = tmp_path / "elsewhere/predictions/clip"
    (folder / COMPLETION_MARKER).unlink()
    for name in names[7:]:
        (folder / f"{name}.png").unlink()
    resumed = predict(tmp_path / "elsewhere", "0")
    said = resumed.out + resumed.err
    assert f"clip: 7 frames in {folder} from an earlier run that did not finish the video" in said
    assert "1 videos: 1 computed, 1 recomputed because an earlier run stopped partway through them" in said
    assert (folder / COMPLETION_MARKER).is_file() and len(list(folder.glob("*.png"))) == 12


def test_sam_pt_reinit_over_a_streaming_source_equals_the_in_memory_run(tiny_sam, mp4):
    """SAM-PT-reinit reads each window's frames from the source (both passes), never the whole
    clip, and gives bit-identical frames, tracks and scores."""
    from sampt.methods.sam_pt.method import SamPtMethod
    from sampt.methods.sam_pt.options import SamPtConfig
    from sampt.trackers.lk import LucasKanadeTracker
    from sampt.video import ObjectQuery, VideoItem

    frames = _decoded_whole(mp4)[:10]
    height, width = frames.shape[-2:]
    first = torch.zeros(height, width, dtype=torch.bool)
    first[20:60, 30:90] = True
    second = torch.zeros(height, width, dtype=torch.bool)
    second[50:80, 100:150] = True
    config = SamPtConfig.from_flat(positive_points_per_mask=4, negative_points_per_mask=1,
                                   iterative_refinement_iterations=1, sam_iou_threshold=-1.0, use_point_reinit=True,
                                   reinit_horizon=3, reinit_point_tracker_horizon=4)

    def run(source):
        video = VideoItem("clip", source, [f"{t:05d}" for t in range(10)],
                          [ObjectQuery(1, 0, first), ObjectQuery(2, 4, second)], (height, width))
        outputs = []
        result = SamPtMethod.from_models(tiny_sam, LucasKanadeTracker(), config).run(video, outputs.append)
        return result, outputs

    whole, whole_outputs = run(frames)
    streamed_source = _CountingFrames(frames)
    streamed, streamed_outputs = run(streamed_source)
    assert [o.t for o in streamed_outputs] == list(range(10))
    for a, b in zip(whole_outputs, streamed_outputs):
        assert torch.equal(a.logits, b.logits) and torch.equal(a.scores, b.scores)
    assert any((o.logits > 0).any() for o in whole_outputs)  # not a comparison of empty masks
    # NaN where a point is not tracked, in both runs alike.
    assert torch.equal(whole.trajectories.nan_to_num(-1.0), streamed.trajectories.nan_to_num(-1.0))
    assert torch.equal(whole.scores, streamed.scores)
    assert 0 < streamed_source.largest_read <= 4  # one tracker window at most


def test_reinit_plan_counts_one_tracker_window_and_the_embedding_cache(tiny_sam):
    """With SAM-PT-reinit the tracker only ever gets one window's clip, in memory: the plan asks
    it about such a clip, not the whole video, and adds the window, the embedding cache (capped by
    ``reinit_embedding_cache_mib``) and the logits waiting to be emitted."""
    from sampt.lightning import format_plan
    from sampt.methods.sam_pt.method import SamPtMethod
    from sampt.methods.sam_pt.options import SamPtConfig
    from sampt.trackers.base import build_tracker
    from sampt.video import ObjectQuery, VideoItem

    frames = torch.zeros(1, 3, 72, 128, dtype=torch.uint8).expand(3000, -1, -1, -1)
    mask = torch.zeros(72, 128, dtype=torch.bool)
    mask[10:30, 10:30] = True
    video = VideoItem("long", _CountingFrames(frames), [f"{t:05d}" for t in range(3000)],
                      [ObjectQuery(1, 0, mask), ObjectQuery(2, 100, mask)], (72, 128))
    tracker = build_tracker("CoTrackerTracker", interp_shape=(192, 256))  # plans need no weights
    plain = SamPtMethod.from_models(tiny_sam, tracker, SamPtConfig()).memory_plan(video)
    config = SamPtConfig.from_flat(use_point_reinit=True, reinit_point_tracker_horizon=24, reinit_horizon=12,
                                   reinit_embedding_cache_mib=64)
    reinit = SamPtMethod.from_models(tiny_sam, tracker, config).memory_plan(video)
    points = config.query.positive_points_per_mask + config.query.negative_points_per_mask
    window = tracker.memory_plan(TensorFrames(frames[:24]), min(2, config.batching.point_tracker_mask_batch_size) * points)
    assert reinit["tracker_window"] == 24 and reinit["tracker_streams"] is False
    assert reinit["tracker_bytes"] == window["bytes"] and reinit["tracker_disk"]["bytes"] == 0
    assert plain["tracker_streams"] is True and plain["tracker_disk"]["bytes"] > 50 * reinit["tracker_bytes"]
    assert reinit["reinit_window_bytes"] == 24 * 3 * 72 * 128
    assert reinit["reinit_cache_bytes"] == 64 * 2**20
    assert reinit["reinit_pending_bytes"] == (12 + 100) * 2 * 256 * 256 * 4
    line = format_plan({"source": {"kind": "ImageFilesFrames", "frames": 3000, "size": [72, 128]}, "method": reinit,
                        "keep_masks": False, "expected_peak_bytes": 0})
    assert "tracker CoTrackerTracker reads windows of 24 frames (SAM-PT-reinit)" in line
