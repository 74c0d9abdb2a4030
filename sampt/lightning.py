"""The Lightning edge of sampt: ``SamPtModule`` runs the plain ``SamPt`` pipeline per video.

Only glue lives here: reading a ``VideoItem`` from the data module, calling the pipeline,
merging, writing outputs (atomically, resumable), updating the J&F metric and logging.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from tqdm import tqdm

from sampt.eval_vos import read_sequence_masks
from sampt.merge import VosMerger
from sampt.metrics.jf import DavisJF, official_sequence_rows
from sampt.methods.base import MethodResult, VosMethod
from sampt.methods.sam_pt.method import SamPtMethod
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.sam.backends import SamConfig
from sampt.trackers.base import PointTracker
from sampt.video import VideoItem, davis_palette
from sampt.errors import SamptError
from sampt.writers import (atomic_open, completed_sequence, write_object_pngs, write_sequence_pngs,
                           write_trajectories, zip_annotations, zip_sequences)

log = logging.getLogger(__name__)

GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
#: What a rerun does with a video an earlier run finished with another configuration.
STALE_RESULT_ACTIONS = ("recompute", "error")


class StaleResultsError(SamptError):
    """An output folder holds a video finished with another configuration, and the run was told
    not to overwrite it."""


def say(message: str) -> None:
    """One line for the user on stderr, printed cleanly above any progress bar."""
    tqdm.write(message, file=sys.stderr)


class SamPtModule(pl.LightningModule):
    """SAM-PT for video object segmentation (DAVIS, YouTube-VOS, MOSE, your own videos).

    Args:
        sam: which SAM to build and its checkpoint (``configs/sam/*.yaml``).
        tracker: the point tracker (``configs/tracker/*.yaml``).
        sam_pt: SAM-PT's options (``configs/model/*.yaml``).
        output_dir: where predictions are written; None: ``<log_dir>/predictions``. Give it
            explicitly to resume an interrupted run: complete sequences are skipped.
        skip_first_and_last: the official DAVIS protocol (exclude the first and last frame).
        save_trajectories: write each video's tracks as ``trajectories/<video>.npz``.
        save_trajectories_csv: also as CSV (frame, object, point, x, y, visible, reason).
        num_visualized_videos: overlays (masks + points) of this many first videos per process
            go to TensorBoard and ``overlays/``.
        write_overlay_gif: also write an animated overlay GIF of those videos.
        write_overlay_mp4: also write an overlay video (mp4) of those videos.
        save_object_pngs: also write one binary PNG per object and frame
            (``<output_dir>/<video>/<object id>/<frame>.png``).
        zip_results: after the run, zip the PNGs as evaluation servers expect into
            ``<output_dir's parent>/submission.zip``: ``Annotations/<video>/<frame>.png`` when
            ``output_dir`` is an ``Annotations`` folder (YouTube-VOS, MOSE), else
            ``<video>/<frame>.png`` (DAVIS test-dev).
        frame_progress_min_frames: show a per-frame progress bar for videos at least this long.
        on_stale_results: what a rerun into the same ``output_dir`` does with a video an earlier
            run finished with a different configuration, weights, input or sampt version (its
            completion marker records a fingerprint of all of them): ``recompute`` it (default;
            the run says which videos and what changed) or stop with an ``error``. Videos with an
            identical fingerprint are reused and counted in the run's summary.
    """

    def __init__(
        self,
        sam: SamConfig,
        tracker: PointTracker,
        sam_pt: SamPtConfig = SamPtConfig(),
        output_dir: Optional[str] = None,
        skip_first_and_last: bool = True,
        save_trajectories: bool = True,
        save_trajectories_csv: bool = False,
        num_visualized_videos: int = 3,
        write_overlay_gif: bool = False,
        write_overlay_mp4: bool = False,
        save_object_pngs: bool = False,
        zip_results: bool = False,
        frame_progress_min_frames: int = 100,
        on_stale_results: str = "recompute",
    ):
        super().__init__()
        if on_stale_results not in STALE_RESULT_ACTIONS:
            raise ValueError(f"on_stale_results must be one of {', '.join(STALE_RESULT_ACTIONS)}, "
                             f"got {on_stale_results!r}")
        self.on_stale_results = on_stale_results
        # The method builds SAM in ``prepare`` (called from ``setup``): weights resolve (and may
        # fail with a clear CheckpointError) only when a run starts, not when a config is parsed.
        self.method: VosMethod = SamPtMethod(sam, tracker, sam_pt)
        self.output_dir_option = output_dir
        self.skip_first_and_last = skip_first_and_last
        self.save_trajectories = save_trajectories
        self.save_trajectories_csv = save_trajectories_csv
        self.num_visualized_videos = num_visualized_videos
        self.write_overlay_gif = write_overlay_gif
        self.write_overlay_mp4 = write_overlay_mp4
        self.save_object_pngs = save_object_pngs
        self.zip_results = zip_results
        self.frame_progress_min_frames = frame_progress_min_frames
        self.jf = DavisJF(skip_first_and_last=skip_first_and_last)
        self._frames_processed = 0
        self._seconds_processed = 0.0
        self._stage_seconds: dict[str, float] = {}
        self._videos_seen = 0
        self._resume_counts = {"computed": 0, "reused": 0, "stale": 0, "unscored": 0}
        # Temporaries older than this process come from an interrupted earlier run.
        self._started_at = time.time()
        self._checkpoints_ensured = False

    def ensure_checkpoints(self) -> None:
        """Every checkpoint the run needs, listed and fetched at once (one error offline)."""
        from sampt.checkpoints import ensure_checkpoints

        if not self._checkpoints_ensured:
            ensure_checkpoints(self.method.required_checkpoints())
            self._checkpoints_ensured = True

    def setup(self, stage: str) -> None:
        self.ensure_checkpoints()
        # Lightning moves the method (a submodule) to the run's device after setup.
        self.method.prepare()

    def _experiment(self):
        """The logger's backend (a TensorBoard ``SummaryWriter``), or None without a logger."""
        return getattr(self.logger, "experiment", None) if self.logger is not None else None

    def _add_stage_seconds(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self._stage_seconds[stage] = self._stage_seconds.get(stage, 0.0) + seconds

    # -- paths and run information ------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        if self.output_dir_option is not None:
            return Path(self.output_dir_option)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or ".") / "predictions"

    def protocol(self) -> dict[str, Any]:
        """The choices behind the numbers, logged and saved with every result."""
        from sampt.fingerprint import canonical

        info: dict[str, Any] = {
            "skip_first_and_last": self.skip_first_and_last,
            "query_mode": "each object's mask on the first frame it is annotated (semi-supervised VOS); "
                          "point queries for videos given as points",
            "evaluation_resolution": "dataset annotation size (480p for DAVIS)",
            "model": self.method.describe_model(),
            "method": canonical(self.method.description()),
        }
        md5 = self.weights_md5()
        for role, path in self.method.weight_files().items():
            info[f"{role}_checkpoint"] = {"path": str(path), "md5": md5[role]}
        return info

    def weights_md5(self) -> dict[str, str]:
        """md5 of every weights file the method loaded (memoised per file by ``file_md5``)."""
        from sampt.checkpoints import file_md5

        return {role: file_md5(path) for role, path in self.method.weight_files().items()}

    def video_determined_by(self, video: VideoItem) -> dict[str, Any]:
        """Everything ``video``'s predicted masks depend on (its fingerprint's description)."""
        from sampt.fingerprint import sampt_version

        objects = [{"id": o.object_id, "query_frame": o.query_frame,
                    "mask": o.mask, "points": o.points} for o in video.objects]
        return {
            "sampt_version": sampt_version(),
            "method": self.method.description(),
            "weights_md5": self.weights_md5(),
            "video": {"name": video.name, "frames": list(video.frame_names),
                      "input_size": list(video.frames.shape[-2:]), "output_size": list(video.output_size),
                      "objects": objects},
        }

    def _reusable(self, video: VideoItem, frames_to_save: list[str], determined_by: dict[str, Any]) -> bool:
        """Whether an earlier run's masks of ``video`` may be reused; says why not when stale."""
        from sampt.fingerprint import canonical, changed_keys, fingerprint

        manifest = completed_sequence(self.output_dir, video.name, frames_to_save)
        if manifest is None:
            return False
        if manifest.get("fingerprint") == fingerprint(determined_by):
            return True
        previous = manifest.get("determined_by")
        changed = changed_keys(previous, canonical(determined_by)) if isinstance(previous, dict) else \
            ["(the earlier run recorded no fingerprint)"]
        what = ", ".join(changed[:8]) + (f", ... ({len(changed)} in all)" if len(changed) > 8 else "")
        if self.on_stale_results == "error":
            raise StaleResultsError(
                f"{video.name}: {self.output_dir / video.name} was finished by an earlier run with a different "
                f"configuration (changed: {what}). Write to another output_dir, or rerun with "
                "--model.init_args.on_stale_results recompute to overwrite it.")
        say(f"sampt: {video.name}: earlier results in {self.output_dir / video.name} came from a different "
            f"configuration (changed: {what}); recomputing")
        self._resume_counts["stale"] += 1
        return False

    # -- per video -----------------------------------------------------------------------------
    def _run_video(self, video: VideoItem) -> tuple[Optional[torch.Tensor], Optional[MethodResult]]:
        """Index masks ``(T, h, w) uint8`` and the pipeline's result for the video.

        A video that a previous run finished with the same fingerprint (see
        :meth:`video_determined_by`) is not recomputed: its masks are read back when evaluation
        needs them (every frame was saved), else ``(None, None)`` is returned.
        """
        frames_to_save = list(video.save_frames) if video.save_frames is not None else list(video.frame_names)
        determined_by = self.video_determined_by(video)
        if self._reusable(video, frames_to_save, determined_by):
            self._resume_counts["reused"] += 1
            if len(frames_to_save) == video.num_frames:
                log.info("%s: complete in %s, reading it back instead of recomputing", video.name, self.output_dir)
                paths = [self.output_dir / video.name / f"{name}.png" for name in video.frame_names]
                return torch.from_numpy(read_sequence_masks(paths, "saved prediction")), None
            if video.ground_truth is None:
                log.info("%s: complete in %s, skipped", video.name, self.output_dir)
                return None, None

        object_ids = [o.object_id for o in video.objects]
        index_masks = torch.zeros((video.num_frames, *video.output_size), dtype=torch.uint8)
        bar = None
        if video.num_frames >= self.frame_progress_min_frames:
            bar = tqdm(total=video.num_frames, desc=f"{video.name} frames", leave=False, unit="frame")
        started = time.perf_counter()
        merger: Optional[VosMerger] = None

        def on_queries(queries) -> None:
            nonlocal merger
            merger = VosMerger(object_ids, queries.query_frames.tolist(), queries.query_masks, video.output_size,
                               [o.output_mask for o in video.objects])

        def on_frame(output) -> None:
            index_masks[output.t] = merger(output.t, output.logits).cpu()

        try:
            result = self.method.run(video, on_frame, on_queries,
                                       progress=(lambda t: bar.update(1)) if bar else None)
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - started
        self._frames_processed += video.num_frames
        self._seconds_processed += elapsed
        self._add_stage_seconds(result.timings)

        if self.save_object_pngs:
            write_object_pngs(self.output_dir, video.name, video.frame_names, index_masks.numpy(), object_ids)
        # Written last: its completion marker tells a rerun that this video is done.
        write_sequence_pngs(self.output_dir, video.name, video.frame_names, index_masks.numpy(),
                            video.palette or davis_palette(), video.save_frames, determined_by=determined_by)
        self._resume_counts["computed"] += 1
        self._save_tracks(video, result.trajectories, result.visibilities, result.reasons, object_ids)
        return index_masks, result

    def _save_tracks(self, video: VideoItem, trajectories: torch.Tensor, visibilities: torch.Tensor,
                     reasons: torch.Tensor, object_ids: list[int]) -> None:
        """``trajectories/<video>.npz`` (and ``.csv``) when ``save_trajectories`` is on."""
        if not self.save_trajectories:
            return
        folder = self.output_dir.parent / "trajectories"
        write_trajectories(
            folder / f"{video.name}.npz",
            folder / f"{video.name}.csv" if self.save_trajectories_csv else None,
            trajectories.numpy(), visibilities.numpy(), object_ids,
            reasons=reasons.numpy(), frame_names=list(video.frame_names))

    def _visualize(self, video: VideoItem, index_masks: torch.Tensor, result: Optional[MethodResult]) -> None:
        if result is None or index_masks is None or self._videos_seen >= self.num_visualized_videos:
            return
        from sampt.overlay import overlay_strip, render_overlay_video, write_gif, write_mp4, write_png

        from sampt.datamodules.io import resize_rgb

        # Overlays are drawn at the frame (output) size, where the masks and trajectories are:
        # the model's input frames are upscaled to it when they were resized for the model.
        frames = torch.stack([resize_rgb(frame, tuple(video.output_size)) for frame in video.frames.cpu()])
        trajectories = result.trajectories.numpy()
        palette = video.palette or davis_palette()
        num_positive = result.queries.num_positive
        object_ids = [o.object_id for o in video.objects]
        strip = overlay_strip(frames, index_masks.numpy(), palette, trajectories,
                              result.visibilities.numpy(), result.reasons.numpy(),
                              num_positive=num_positive, object_ids=object_ids)
        folder = self.output_dir.parent / "overlays"
        write_png(folder / f"{video.name}.png", strip)
        experiment = self._experiment()
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image(f"overlay/{video.name}", strip, self.global_step, dataformats="HWC")
        if self.write_overlay_gif or self.write_overlay_mp4:
            images = render_overlay_video(frames, index_masks.numpy(), palette, trajectories,
                                          result.visibilities.numpy(), result.reasons.numpy(),
                                          num_positive=num_positive, object_ids=object_ids)
            if self.write_overlay_gif:
                write_gif(folder / f"{video.name}.gif", images, max_side=480)
            if self.write_overlay_mp4:
                write_mp4(folder / f"{video.name}.mp4", images)

    # -- Lightning hooks -----------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._reset_counters()

    def on_predict_epoch_start(self) -> None:
        self._reset_counters()

    def _reset_counters(self) -> None:
        from sampt.io.atomic import remove_stray_temporaries

        self._frames_processed, self._seconds_processed, self._videos_seen = 0, 0.0, 0
        self._stage_seconds = {}
        self._resume_counts = dict.fromkeys(self._resume_counts, 0)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.trainer.is_global_zero:
            removed = remove_stray_temporaries(self.output_dir.parent, older_than=self._started_at)
            if removed:
                say(f"sampt: removed {len(removed)} temporary file(s) an interrupted earlier run left in "
                    f"{self.output_dir.parent}")

    def test_step(self, video: VideoItem, batch_idx: int) -> None:
        index_masks, result = self._run_video(video)
        self._visualize(video, index_masks, result)
        self._videos_seen += 1
        if video.ground_truth is None or index_masks is None:
            return
        if self.skip_first_and_last and video.ground_truth.shape[0] < 3:
            # The official protocol scores frames 1..T-2: a video this short has none to score.
            say(f"sampt: warning: {video.name} has {video.ground_truth.shape[0]} frame(s); the protocol "
                "(skip_first_and_last) scores none of them, so it is excluded from J&F "
                "(its predictions are written)")
            self._resume_counts["unscored"] += 1
            return
        self.jf.update(video.name, None, video.ground_truth.cpu(), index_masks)

    def predict_step(self, video: VideoItem, batch_idx: int) -> dict[str, Any]:
        index_masks, result = self._run_video(video)
        self._visualize(video, index_masks, result)
        self._videos_seen += 1
        prediction: dict[str, Any] = {"name": video.name, "index_masks": index_masks,
                                      "object_ids": [o.object_id for o in video.objects]}
        if result is not None:
            prediction.update(scores=result.scores, scores_per_frame=result.scores_per_frame,
                              trajectories=result.trajectories, visibilities=result.visibilities)
        return prediction

    def validation_step(self, video: VideoItem, batch_idx: int) -> None:
        self.test_step(video, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.on_test_epoch_end()

    def _finish_outputs(self) -> None:
        self._log_speed()
        self._report_resume()
        if self.zip_results:
            self.trainer.strategy.barrier()  # every rank has written its videos
            if self.trainer.is_global_zero:
                zip_path = self.output_dir.parent / "submission.zip"
                if self.output_dir.name == "Annotations" or (self.output_dir / "Annotations").is_dir():
                    members = zip_annotations(self.output_dir, zip_path)  # YouTube-VOS, MOSE
                else:
                    members = zip_sequences(self.output_dir, zip_path)  # DAVIS: sequences at the top
                log.info("wrote %s (%d PNGs)", zip_path, len(members))

    def on_test_epoch_end(self) -> None:
        self._finish_outputs()
        rows = self.jf.per_object_table() if self.jf.update_count else []
        if not rows:
            self.jf.reset()
            self._report_outputs()
            return
        table = {k: float(v) for k, v in self.jf.compute().items()}
        per_sequence = self.jf.per_sequence_table()
        stage = "val" if self.trainer.validating else "test"
        self.log_dict({f"{stage}/{k}": v for k, v in table.items()}, rank_zero_only=True)
        if self.trainer.is_global_zero:
            self._write_results(table, rows)
            self._log_sequences(per_sequence)
            sys.stdout.flush()
            tqdm.write(format_global_table(table).rstrip("\n"))
        self.jf.reset()
        split = getattr(self.trainer.datamodule, "split", "val") if self.trainer.datamodule is not None else "val"
        self._report_outputs(self.output_dir.parent / f"global_results-{split}.csv")

    def on_predict_epoch_end(self) -> None:
        self._finish_outputs()
        self._report_outputs()

    def _report_resume(self) -> None:
        """One summary line: how many videos were computed, reused and excluded (all ranks)."""
        keys = list(self._resume_counts)
        counts = self.all_gather(torch.tensor([float(self._resume_counts[k]) for k in keys], dtype=torch.float64))
        if counts.ndim > 1:
            counts = counts.sum(0)
        if not self.trainer.is_global_zero:
            return
        total = dict(zip(keys, (int(c) for c in counts.tolist())))
        line = f"sampt: {total['computed'] + total['reused']} videos: {total['computed']} computed"
        if total["reused"] or total["stale"]:
            line += f", {total['reused']} reused from an earlier run in {self.output_dir} (same fingerprint)"
        if total["stale"]:
            line += f", {total['stale']} recomputed because their configuration changed"
        if total["unscored"]:
            line += f"; {total['unscored']} excluded from J&F (fewer than 3 frames)"
        say(line)

    def _report_outputs(self, results: Optional[Path] = None) -> None:
        """The run's last line: where its outputs are."""
        if not self.trainer.is_global_zero:
            return
        where = f"sampt: predictions in {self.output_dir}"
        if results is not None:
            where += f"; results in {results}"
        say(where + f"; config and logs in {self.output_dir.parent}")

    def _log_speed(self) -> None:
        frames = torch.tensor([float(self._frames_processed), self._seconds_processed], dtype=torch.float64)
        totals = self.all_gather(frames)
        if totals.ndim > 1:
            totals = totals.sum(0)
        if totals[1] > 0 and self.trainer.is_global_zero:
            fps = float(totals[0] / totals[1])
            experiment = self._experiment()
            if experiment is not None and hasattr(experiment, "add_scalar"):
                experiment.add_scalar("speed/fps", fps, self.global_step)
                for stage, seconds in self._stage_seconds.items():
                    experiment.add_scalar(f"speed/seconds_{stage}", seconds, self.global_step)
            log.info("processed %d frames at %.2f frames/s", int(totals[0]), fps)

    def _write_results(self, table: dict[str, float], rows: list[dict[str, Any]]) -> None:
        split = getattr(self.trainer.datamodule, "split", "val") if self.trainer.datamodule is not None else "val"
        out = self.output_dir.parent
        with atomic_open(out / f"global_results-{split}.csv", "w", encoding="utf-8") as handle:
            handle.write(format_global_table(table))
        with atomic_open(out / f"per-sequence_results-{split}.csv", "w", encoding="utf-8") as handle:
            handle.write("Sequence,J-Mean,F-Mean\n")
            for name, j, f in official_sequence_rows(rows):
                handle.write(f"{name},{j:.15g},{f:.15g}\n")
        with atomic_open(out / "protocol.json", "w", encoding="utf-8") as handle:
            json.dump({"results": table, "protocol": self.protocol()}, handle, indent=2, default=str)

    def _log_sequences(self, per_sequence: list[dict[str, Any]]) -> None:
        experiment = self._experiment()
        if experiment is None or not hasattr(experiment, "add_scalar"):
            return
        for row in per_sequence:
            experiment.add_scalar(f"sequence/{row['sequence']}/J&F", row["J&F-Mean"], self.global_step)
        from sampt.charts import bar_chart

        chart = bar_chart([r["sequence"] for r in per_sequence], [r["J&F-Mean"] for r in per_sequence],
                          title="J&F per sequence")
        experiment.add_image("sequence/J&F_bar_chart", chart, self.global_step, dataformats="HWC")
        experiment.add_text("protocol", "```\n" + json.dumps(self.protocol(), indent=2, default=str) + "\n```")


def format_global_table(table: dict[str, float]) -> str:
    """The official global CSV: a header line, then the values."""
    return ",".join(GLOBAL_COLUMNS) + "\n" + ",".join(f"{table[c]:.15g}" for c in GLOBAL_COLUMNS) + "\n"

