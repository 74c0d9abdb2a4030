"""Video instance segmentation (UVO) with SAM-PT: ``SamPtVisModule``.

Per video (SAM-PT's ``SamBasedVisToVosAdapter``):

1. SAM's automatic mask generator proposes objects on frame 0 (``sampt.proposals``), at most
   ``proposals.max_num_masks`` in the generator's order; no proposal = no instance.
2. The proposals become query masks at frame 0 and are tracked through the video by SAM-PT in
   chunks of ``proposals_per_run`` proposals, each chunk a separate ``SamPt.run`` (as the original;
   smaller chunks lower peak memory).
3. Each track's mask on frame t is ``logits > 0`` at the JSON's (height, width), encoded to RLE
   as the frame is produced (no ``(M, T, H, W)`` tensor is ever held); its score is SAM-PT's video
   score (``score`` option below); its class is UVO's single category 1.
4. Tracks feed ``sampt.metrics.vis_ap.VideoAP`` (test / validate) and a YouTube-VIS results
   file ``<output_dir>/results.json`` (``video_id``, ``score``, ``category_id``, ``segmentations``
   with string RLE counts) that ``sampt eval-vis --gt GT --pred results.json`` scores to the same
   numbers. With a GT subset (``max_videos`` / ``max_annotations`` / ``max_frames`` / the tiny
   split) the evaluated GT is saved as ``<output_dir>/ground_truth.json`` for that purpose.

Differences from the original: everything runs in float32 (the original's detectron2 test loop
wrapped inference in CUDA ``autocast``, i.e. fp16 where autocast applies); query points are
sampled with the per-video generator (``sampt.methods.sam_pt.pipeline.video_rng``), not the global NumPy state;
a video without proposals yields no instance (the original fails stacking an empty list). As in
the original, frame 0 is embedded by the generator and again by every SAM-PT run.

Distributed runs: each rank streams its videos' entries to a part file
``<output_dir>/.results_parts/rank<r>.jsonl`` (nothing accumulates in memory during the epoch);
at epoch end each rank reads its part back and sends it to rank 0 (``gather_object``: no shared
storage needed), which writes them in video-id order, so the file does not depend on the number
of processes. The metric gathers its per-video records itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from sampt.eval_vis import format_stats_table, masks_to_rles, write_results_json
from sampt.lightning_base import OutputOptions, VideoModule
from sampt.methods.base import MethodResult
from sampt.methods.sam_pt.method import SamPtMethod
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import output_scale
from sampt.proposals import ProposalConfig, propose_masks
from sampt.video import ObjectQuery, VideoItem, davis_palette
from sampt.writers import atomic_open

log = logging.getLogger(__name__)

#: UVO's single class ("object").
UVO_CATEGORY_ID = 1
SCORE_MODES = ("original", "prompted_frames_mean")
PARTS_FOLDER = ".results_parts"


def vis_sam_pt_defaults() -> SamPtConfig:
    """SAM-PT's VIS setting: no iterative refinement, other objects' points not used as
    negatives, all proposals of a chunk tracked in one tracker call."""
    return SamPtConfig.from_flat(iterative_refinement_iterations=0,
                                 add_other_objects_positive_points_as_negative_points=False,
                                 point_tracker_mask_batch_size=100)


def track_scores(result: MethodResult, mode: str, nan_aware: bool = False) -> torch.Tensor:
    """``(M,) float32`` video scores of SAM-PT's tracks.

    ``original``: the mean of ``scores_per_frame`` over *all* frames, as the original computes it
    (``scores_per_frame.mean(0)``; ``nanmean`` with ``nan_aware``, the original's SAM-PT-reinit
    path); a frame without any visible point has score -inf, so such a track scores -inf (it ranks
    last, it is still a detection). ``prompted_frames_mean``: the mean over the frames SAM was
    prompted on (``MethodResult.scores``; 0 for a track never prompted).
    """
    if mode == "original":
        scores = result.scores_per_frame.float()
        return scores.nanmean(0) if nan_aware else scores.mean(0)
    if mode == "prompted_frames_mean":
        return result.scores.float()
    raise ValueError(f"score must be one of {SCORE_MODES}, got {mode!r}")


class SamPtVisModule(VideoModule):
    """SAM-PT for class-agnostic video instance segmentation (UVO); see the module docstring.

    Args:
        method: a ``SamPtMethod`` (its SAM also proposes the objects); SAM-PT's VIS setting is
            :func:`vis_sam_pt_defaults` (``configs/uvo.yaml``).
        proposals: the automatic mask generator's settings and ``max_num_masks``.
        proposals_per_run: proposals tracked per SAM-PT run (each chunk a separate run).
        score: ``"original"`` (default; reproduces SAM-PT's numbers) or ``"prompted_frames_mean"``,
            see :func:`track_scores`.
        output_dir, outputs: as for ``VosModule`` (trajectories are saved per video with the
            proposal index, 1-based, as object id; the overlay GIF/mp4, object PNG and zip
            options do not apply).
    """

    def __init__(
        self,
        method: SamPtMethod,
        proposals: ProposalConfig = ProposalConfig(),
        proposals_per_run: int = 100,
        score: str = "original",
        output_dir: Optional[str] = None,
        outputs: OutputOptions = OutputOptions(save_trajectories=False),
    ):
        if isinstance(proposals_per_run, bool) or not isinstance(proposals_per_run, int) or proposals_per_run < 1:
            raise ValueError(f"proposals_per_run must be a positive integer, got {proposals_per_run!r}")
        if score not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, got {score!r}")
        if not isinstance(method, SamPtMethod):
            raise ValueError(f"SamPtVisModule's method must be a SamPtMethod (its SAM proposes the objects), "
                             f"got {type(method).__name__}")
        super().__init__(method, output_dir, outputs)
        self.proposal_config = proposals
        self.proposals_per_run = proposals_per_run
        self.score_mode = score
        self.vis_ap = None  # built per epoch from the data module's GT
        self._parts_file = None
        self._parts_handle = None
        self.last_stats: dict[str, float] = {}

    # -- proposals and tracking (overridable: tests replace them by oracles) --------------------
    def propose(self, video: VideoItem) -> torch.Tensor:
        """``(M, H, W) bool`` proposals on frame 0 at input resolution."""
        return propose_masks(self.method.sam, video.frames[0], self.proposal_config)

    def tracking_pipeline(self):
        """What tracks the proposals: the method (anything with ``VosMethod.run``'s signature)."""
        return self.method

    def protocol(self) -> dict[str, Any]:
        info = super().protocol()
        info.update({
            "task": "class-agnostic video instance segmentation (YouTube-VIS video mask AP)",
            "query_mode": "SAM automatic mask proposals on frame 0, each tracked by SAM-PT",
            "proposals": dataclasses.asdict(self.proposal_config),
            "proposals_per_run": self.proposals_per_run,
            "score": self.score_mode,
            "evaluation_resolution": "(height, width) of the ground-truth JSON",
        })
        return info

    def _run_vis_video(self, video: VideoItem) -> tuple[list[dict], dict[str, Any]]:
        """The video's result entries (tracks in proposal order) and what the overlays need."""
        proposals = self.propose(video)
        if proposals.ndim != 3 or tuple(proposals.shape[1:]) != tuple(video.frames.shape[-2:]):
            raise ValueError(f"proposals of {video.name!r} must be (M, H, W) at the input size "
                             f"{tuple(video.frames.shape[-2:])}, got {tuple(proposals.shape)}")
        video_id = int(video.meta["video_id"])
        num_frames = video.num_frames
        visualize = self._videos_seen < self.outputs.num_visualized_videos
        index_masks = torch.zeros((num_frames, *video.output_size), dtype=torch.uint8) if visualize else None
        entries: list[dict] = []
        results: list[MethodResult] = []
        bar = None
        if num_frames >= self.outputs.frame_progress_min_frames and len(proposals):
            bar = tqdm(total=num_frames * -(-len(proposals) // self.proposals_per_run), leave=False, unit="frame",
                       desc=f"{video.name} frames")
        started = time.perf_counter()
        pipeline = self.tracking_pipeline()
        try:
            for start in range(0, len(proposals), self.proposals_per_run):
                chunk = proposals[start:start + self.proposals_per_run].bool()
                objects = [ObjectQuery(object_id=start + i + 1, query_frame=0, mask=chunk[i])
                           for i in range(len(chunk))]
                rles: list[list] = [[None] * num_frames for _ in objects]

                def on_frame(output, rles=rles, first_id=start + 1) -> None:
                    # (M, h, w) bool of this frame only; encoded right away, never stacked over time.
                    masks = (output.logits > 0).cpu()
                    for i, rle in enumerate(masks_to_rles(masks)):
                        rles[i][output.t] = rle
                    if index_masks is not None:
                        # Later proposals are painted over earlier ones (display only).
                        for i in range(min(masks.shape[0], 256 - first_id)):
                            index_masks[output.t][masks[i]] = first_id + i

                result = pipeline.run(dataclasses.replace(video, objects=objects), on_frame,
                                      progress=(lambda t: bar.update(1)) if bar else None)
                scores = track_scores(result, self.score_mode, nan_aware=self.method.config.reinit.use_point_reinit)
                for i in range(len(objects)):
                    entries.append({"video_id": video_id, "score": float(scores[i]), "category_id": UVO_CATEGORY_ID,
                                    "segmentations": rles[i]})
                self._add_stage_seconds(result.timings)
                results.append(result)
        finally:
            if bar is not None:
                bar.close()
        self._frames_processed += num_frames
        self._seconds_processed += time.perf_counter() - started
        if results:
            self._save_tracks(video, torch.cat([r.trajectories for r in results], 1),
                              torch.cat([r.visibilities for r in results], 1),
                              torch.cat([r.reasons for r in results], 1), list(range(1, len(proposals) + 1)))
        return entries, {"proposals": proposals, "index_masks": index_masks, "results": results}

    # -- outputs --------------------------------------------------------------------------------
    def _visualize_vis(self, video: VideoItem, extra: dict[str, Any]) -> None:
        if extra["index_masks"] is None:
            return
        from sampt.overlay import overlay_strip, write_png

        palette = davis_palette()
        proposals = extra["proposals"]
        proposal_map = torch.zeros(proposals.shape[1:], dtype=torch.uint8)
        for i in range(min(len(proposals), 255)):
            proposal_map[proposals[i]] = i + 1
        # A one-frame strip: the same display height as the tracks' strip.
        proposal_image = overlay_strip(video.frames[:1], proposal_map[None].numpy(), palette, max_frames=1)
        trajectories = visibilities = reasons = None
        num_positive = None
        results = extra["results"]
        if results:
            to_input = 1 / output_scale(tuple(video.frames.shape[-2:]), video.output_size)
            trajectories = (torch.cat([r.trajectories for r in results], 1) * to_input).numpy()
            visibilities = torch.cat([r.visibilities for r in results], 1).numpy()
            reasons = torch.cat([r.reasons for r in results], 1).numpy()
            num_positive = results[0].queries.num_positive
        strip = overlay_strip(video.frames, extra["index_masks"].numpy(), palette, trajectories, visibilities,
                              reasons, num_positive=num_positive)
        folder = self.output_dir.parent / "overlays"
        write_png(folder / f"{video.name}_proposals.png", proposal_image)
        write_png(folder / f"{video.name}_tracks.png", strip)
        experiment = self._experiment()
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image(f"proposals/{video.name}", proposal_image, self.global_step, dataformats="HWC")
            experiment.add_image(f"tracks/{video.name}", strip, self.global_step, dataformats="HWC")

    def _parts_dir(self) -> Path:
        return self.output_dir / PARTS_FOLDER

    def _epoch_start(self, stage: str) -> None:
        self._reset_counters()
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        ground_truth = getattr(datamodule, "ground_truth", None)
        self.vis_ap = None
        if stage != "predict":
            if ground_truth is None:
                log.warning("the data module has no `ground_truth`: video AP is not computed")
            else:
                from sampt.metrics.vis_ap import VideoAP

                self.vis_ap = VideoAP(ground_truth).to(self.device)
        parts = self._parts_dir()
        parts.mkdir(parents=True, exist_ok=True)
        rank = self.global_rank
        self._parts_file = atomic_open(parts / f"rank{rank:05d}.jsonl", "w", encoding="utf-8")
        self._parts_handle = self._parts_file.__enter__()

    def _close_part(self, error: bool = False) -> None:
        if self._parts_file is not None:
            if error:
                self._parts_file.__exit__(RuntimeError, RuntimeError("aborted"), None)
            else:
                self._parts_file.__exit__(None, None, None)
            self._parts_file = None

    def _step(self, video: VideoItem) -> list[dict]:
        entries, extra = self._run_vis_video(video)
        self._visualize_vis(video, extra)
        self._videos_seen += 1
        video_id = int(video.meta["video_id"])
        if self.vis_ap is not None:
            self.vis_ap.update(video_id, entries)
        self._parts_handle.write(json.dumps({"video_id": video_id, "name": video.name, "entries": entries}) + "\n")
        self._parts_handle.flush()
        log.info("%s (video %d): %d proposals tracked", video.name, video_id, len(entries))
        return entries

    def _gather_parts(self) -> list[dict]:
        """Every rank's per-video lines on rank 0 (in video-id order), [] on the other ranks.

        Each rank reads back its own part file and sends it to rank 0, so ``output_dir`` need not
        be on storage the ranks (nodes) share.
        """
        path = self._parts_dir() / f"rank{self.global_rank:05d}.jsonl"
        with open(path, encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
        path.unlink()
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: Optional[list] = [None] * self.trainer.world_size if self.trainer.is_global_zero else None
            torch.distributed.gather_object(lines, gathered, dst=0)
            lines = [line for part in gathered for line in part] if gathered is not None else []
        lines.sort(key=lambda line: line["video_id"])
        return lines

    def _epoch_end(self, stage: str) -> None:
        self._close_part()
        self._log_speed()
        stats: dict[str, float] = {}
        if self.vis_ap is not None:
            stats = {name: float(value) for name, value in self.vis_ap.compute().items()}
            self.vis_ap.reset()
            prefix = "val" if stage == "validate" else "test"
            self.log_dict({f"{prefix}/{name}": value for name, value in stats.items()}, rank_zero_only=True)
        self.last_stats = stats
        lines = self._gather_parts()
        if self.trainer.is_global_zero:
            entries = [entry for line in lines for entry in line["entries"]]
            count = write_results_json(self.output_dir / "results.json", entries)
            log.info("wrote %s (%d instances, %d videos)", self.output_dir / "results.json", count, len(lines))
            datamodule = self.trainer.datamodule
            if stats and getattr(datamodule, "ground_truth_is_subset", False):
                with atomic_open(self.output_dir / "ground_truth.json", "w", encoding="utf-8") as handle:
                    json.dump(datamodule.ground_truth, handle)
            with atomic_open(self.output_dir / "vis_metrics.json", "w", encoding="utf-8") as handle:
                json.dump({"results": stats, "instances_per_video": {str(line["video_id"]): len(line["entries"])
                                                                     for line in lines},
                           "protocol": self.protocol()}, handle, indent=2, default=str)
            self._log_instances(lines)
            if stats:
                print(format_stats_table(stats))
            with contextlib.suppress(OSError):  # other ranks' parts are gone once they were gathered
                self._parts_dir().rmdir()

    def results_files(self) -> list[Path]:
        return [self.output_dir / "results.json", self.output_dir / "vis_metrics.json"]

    def _log_instances(self, lines: list[dict]) -> None:
        experiment = self._experiment()
        if experiment is None or not hasattr(experiment, "add_scalar"):
            return
        for line in lines:
            experiment.add_scalar("vis/instances_per_video", len(line["entries"]), line["video_id"])
        if lines:
            from sampt.charts import bar_chart

            counts = [len(line["entries"]) for line in lines]
            chart = bar_chart([line["name"] for line in lines], counts, title="instances per video",
                              value_range=(0.0, float(max(max(counts), 1))))
            experiment.add_image("vis/instances_per_video_chart", chart, self.global_step, dataformats="HWC")
        experiment.add_text("protocol", "```\n" + json.dumps(self.protocol(), indent=2, default=str) + "\n```")

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_exception(self, exception: BaseException) -> None:
        self._close_part(error=True)  # leaves no half-written part behind

    def on_test_epoch_start(self) -> None:
        self._epoch_start("test")

    def on_validation_epoch_start(self) -> None:
        self._epoch_start("validate")

    def on_predict_epoch_start(self) -> None:
        self._epoch_start("predict")

    def test_step(self, video: VideoItem, batch_idx: int) -> None:
        self._step(video)

    def validation_step(self, video: VideoItem, batch_idx: int) -> None:
        self._step(video)

    def predict_step(self, video: VideoItem, batch_idx: int) -> dict[str, Any]:
        """A per-video summary; the tracks themselves go to ``results.json`` (Lightning keeps
        every returned prediction in memory until the end)."""
        entries = self._step(video)
        return {"name": video.name, "video_id": int(video.meta["video_id"]), "num_instances": len(entries),
                "scores": [entry["score"] for entry in entries]}

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("validate")

    def on_predict_epoch_end(self) -> None:
        self._epoch_end("predict")
