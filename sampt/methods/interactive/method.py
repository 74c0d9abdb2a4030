"""The simulated annotator as a VOS method: ``sampt test --config configs/d17.yaml
--config configs/model/sam_pt_interactive.yaml`` runs it on every video with ground truth.

Per video, each object is corrected in its own interaction session (sharing one image-embedding
cache), the final point sets are segmented once more and streamed as any method's frames (so the
VOS merge, PNG writer and J&F metric see them as for SAM-PT), and ``write_extras`` writes per video:

* ``interactive/<video>/history.json``: per object the corrections (the original's fields), the
  passes, the restored pass, and the engine's interactions (replayable with ``InteractiveSession.apply``);
* ``interactive/<video>/curve.csv`` and ``curve.png``: mean J, F and J&F against interactions used;
* TensorBoard scalars ``interactive/<video>/<object>/J&F`` (step: interactions) and the plot;
* with ``annotated_video``, ``interactive/<video>/corrections.mp4``: one picture per correction.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from sampt.datamodules.io import resize_masks_nearest
from sampt.io.atomic import write_text_atomic
from sampt.methods.base import FrameOutput, MethodResult
from sampt.methods.interactive.annotated import RecordedCorrection, write_corrections_video
from sampt.methods.interactive.engine import InteractiveSession
from sampt.methods.interactive.simulation import SimulationOptions, curve_rows, simulate_object
from sampt.methods.sam_pt.method import SamPtMethod
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import output_scale, resize_logits, video_rng, video_scores
from sampt.sam.backends import SamConfig
from sampt.trackers.base import PointTracker
from sampt.video import VideoItem
from sampt.visibility import VisibilityReason


class InteractiveSimulationMethod(SamPtMethod):
    """SAM-PT's simulated interactive point correction (the original's ``SamPtInteractive``).

    Args:
        sam, tracker, sam_pt: as for ``SamPtMethod``; the query section gives the query points
            (the original's interactive setting: 1 positive, 0 negative, no refinement).
        simulation: the annotator's rules and budgets (:class:`SimulationOptions`).
        embedding_cache_mib: bound of the image-embedding cache shared by a video's objects.
        annotated_video: also write ``interactive/<video>/corrections.mp4``, one picture per
            correction (the mask after it, the ground truth's outline, the point, a caption).
        annotated_video_fps: pictures per second of that video.
    """

    def __init__(self, sam: SamConfig, tracker: PointTracker, sam_pt: SamPtConfig = SamPtConfig(),
                 simulation: SimulationOptions = SimulationOptions(), embedding_cache_mib: float = 4096,
                 annotated_video: bool = False, annotated_video_fps: float = 2.0):
        super().__init__(sam, tracker, sam_pt)
        if sam_pt.reinit.use_point_reinit:
            raise ValueError("the simulated annotator runs plain SAM-PT: set sam_pt.reinit.use_point_reinit false")
        if annotated_video_fps <= 0:
            raise ValueError(f"annotated_video_fps must be positive, got {annotated_video_fps}")
        self.simulation = simulation
        self.embedding_cache_mib = embedding_cache_mib
        self.annotated_video = annotated_video
        self.annotated_video_fps = annotated_video_fps

    def session_config(self) -> SamPtConfig:
        # The original's simulation decodes every prompt and keeps every mask (no IoU threshold).
        return self.config.replace(sam_iou_threshold=float("-inf"), masks_batch_size=1,
                                   max_other_objects_positive_points=None)

    def run(self, video: VideoItem, on_frame: Callable[[FrameOutput], None],
            on_queries: Optional[Callable[[Any], None]] = None,
            progress: Optional[Callable[[int], None]] = None,
            tracking_progress: Optional[Callable[[int, int], None]] = None) -> MethodResult:
        if video.ground_truth is None:
            raise ValueError(f"{video.name}: the simulated annotator needs every frame's ground truth; this video has "
                             "none (use an annotated split, e.g. DAVIS 2017 val)")
        if any(o.mask is None for o in video.objects):
            raise ValueError(f"{video.name}: the simulated annotator starts from query masks; this video's objects "
                             "are given as points")
        pipeline = self.pipeline
        rng = video_rng(self.config.seed, video.name)
        queries = pipeline.make_queries(video, rng)
        if on_queries is not None:
            on_queries(queries)
        frames = video.frames.to_tensor()  # corrections revisit any frame: the clip is held whole
        num_frames, _, height, width = (int(s) for s in frames.shape)
        ground_truth = input_size_ground_truth(video.ground_truth, (height, width))
        config = self.session_config()
        tic = time.perf_counter()
        cache, simulations, recorded = None, [], []
        for m, obj in enumerate(video.objects):
            session = InteractiveSession(frames, self.sam, self.tracker, config, self.embedding_cache_mib,
                                         video.frame_names, video.name, decode_rule="per_prompt", eager=False,
                                         embedding_cache=cache)
            cache = session.cache
            points = [(float(x), float(y), k < queries.num_positive)
                      for k, (_, x, y) in enumerate(queries.points[m].tolist()) if bool(queries.valid[m, k])]
            record = None
            if self.annotated_video:
                def record(entry, session=session, object_id=obj.object_id):
                    # The frame was just decoded to score the correction: its mask costs nothing.
                    recorded.append(RecordedCorrection.of(object_id, entry, session.masks(entry["frame"])[0].numpy()))
            simulations.append(simulate_object(session, obj.object_id, obj.query_frame, points,
                                               ground_truth == obj.object_id, self.simulation, rng,
                                               on_interaction=record))
        simulation_seconds = time.perf_counter() - tic

        scores_per_frame = torch.full((num_frames, len(simulations)), float("-inf"))
        for t in range(num_frames):
            logits = torch.stack([s.session.logits(t)[0] for s in simulations])
            scores = torch.stack([s.session.scores(t)[0] for s in simulations])
            scores_per_frame[t] = scores
            on_frame(FrameOutput(t, resize_logits(logits, video.output_size), scores, torch.isfinite(scores)))
            if progress is not None:
                progress(t)
        trajectories, visibilities, reasons, num_positive = _stack_tracks(simulations, num_frames)
        scale = output_scale((height, width), video.output_size)
        result = MethodResult(
            # Overlays read positives per object: corrections add positives after the negatives.
            queries=dataclasses.replace(queries, num_positive=num_positive),
            trajectories=trajectories * scale, visibilities=visibilities, reasons=reasons,
            scores_per_frame=scores_per_frame, scores=video_scores(scores_per_frame, torch.isfinite(scores_per_frame)),
            timings={"simulation": simulation_seconds},
            num_decoder_calls=sum(s.session.on_demand.decoder_calls + sum(r.decoder_calls for r in s.session.log)
                                  for s in simulations),
            num_encoded_frames=cache.misses if cache is not None else 0,
        )
        result.extras["simulations"] = [(obj.object_id, obj.query_frame, s) for obj, s in zip(video.objects, simulations)]
        result.extras["recorded_corrections"] = recorded
        return result

    def write_extras(self, video: VideoItem, result: MethodResult, run_dir: Path, experiment: Any = None,
                     step: int = 0) -> list[Path]:
        from sampt.charts import line_chart
        from sampt.overlay import write_png

        simulations = result.extras.get("simulations", [])
        folder = Path(run_dir) / "interactive" / video.name
        objects, rows = [], []
        for object_id, query_frame, simulation in simulations:
            objects.append({"object_id": object_id, "query_frame": query_frame,
                            "interactions_used": simulation.interactions_used, "kept_pass": simulation.kept_pass,
                            "passes": simulation.passes, "corrections": simulation.history,
                            "engine_interactions": [asdict(i) for i in simulation.session.history]})
            rows += curve_rows(video.name, object_id, simulation)
        history = {"video": video.name, "num_frames": video.num_frames, "simulation": asdict(self.simulation),
                   "objects": objects}
        written = [folder / "history.json", folder / "curve.csv", folder / "curve.png"]
        write_text_atomic(written[0], json.dumps(history, indent=1))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["video", "object", "interactions", "J", "F", "J&F"],
                                lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
        write_text_atomic(written[1], buffer.getvalue())
        series = {f"object {object_id}": ([n for n, _, _ in s.curve], [(j + f) / 2 for _, j, f in s.curve])
                  for object_id, _, s in simulations}
        chart = line_chart(series, title=f"{video.name}: J&F against interactions", x_label="interactions",
                           y_label="J&F")
        write_png(written[2], chart)
        if experiment is not None and hasattr(experiment, "add_scalar"):
            for row in rows:
                experiment.add_scalar(f"interactive/{video.name}/object_{row['object']}/J&F", row["J&F"],
                                      row["interactions"])
            experiment.add_image(f"interactive/{video.name}/curve", chart, step, dataformats="HWC")
        recorded = result.extras.get("recorded_corrections") or []
        if recorded:
            frames = video.frames.to_tensor()
            ground_truth = input_size_ground_truth(video.ground_truth, tuple(frames.shape[-2:]))
            if write_corrections_video(folder / "corrections.mp4", frames, ground_truth, recorded,
                                       self.annotated_video_fps):
                written.append(folder / "corrections.mp4")
        return written

    def description(self) -> dict[str, Any]:
        return {**super().description(), "method": "sam_pt_interactive_simulation", "simulation": self.simulation,
                "session_config": self.session_config()}

    def describe_model(self) -> str:
        return super().describe_model().replace("SAM-PT:", "SAM-PT simulated annotator:", 1)


def input_size_ground_truth(ground_truth: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(T, h, w) uint8`` index masks at output size -> ``(T, H, W)`` at the frames' size (nearest)."""
    return resize_masks_nearest(ground_truth.cpu().to(torch.uint8), size).numpy()


def _stack_tracks(simulations, num_frames: int):
    """Every object's final points ``(T, M, P, 2)`` (positives first, NaN padding), visibilities,
    reasons and the positives per object."""
    per_object = [s.session.tracks() for s in simulations]
    slots = max((t[0].shape[2] for t in per_object), default=0)
    trajectories = torch.full((num_frames, len(per_object), slots, 2), float("nan"))
    visibilities = torch.zeros(num_frames, len(per_object), slots, dtype=torch.bool)
    reasons = torch.full((num_frames, len(per_object), slots), int(VisibilityReason.OCCLUDED), dtype=torch.int8)
    num_positive = []
    for m, ((traj, vis, why, _), simulation) in enumerate(zip(per_object, simulations)):
        n = traj.shape[2]
        trajectories[:, m, :n], visibilities[:, m, :n], reasons[:, m, :n] = traj[:, 0], vis[:, 0], why[:, 0]
        num_positive.append(sum(p.positive for p in simulation.session.points()))
    return trajectories, visibilities, reasons, num_positive
