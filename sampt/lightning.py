"""The Lightning edge of sampt for VOS: ``VosModule`` runs a ``VosMethod`` per video.

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

import torch
from tqdm import tqdm

from sampt.eval_vos import read_sequence_masks
from sampt.merge import VosMerger
from sampt.io.results import format_global_csv
from sampt.metrics.jf import DavisJF
from sampt.lightning_base import OutputOptions, VideoModule, say
from sampt.methods.base import MethodResult, VosMethod
from sampt.video import VideoItem, davis_palette
from sampt.errors import SamptError
from sampt.writers import (SequenceWriter, WrittenMasks, atomic_open, completed_sequence, unfinished_frames,
                           zip_annotations, zip_sequences)

log = logging.getLogger(__name__)


class OutputSizeFrames:
    """A frame source's frames upscaled to the output size when indexed (for overlays)."""

    def __init__(self, frames, size: tuple[int, int]):
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> torch.Tensor:
        from sampt.datamodules.io import resize_rgb

        return resize_rgb(self.frames[t], self.size)


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.0f} MiB" if num_bytes < 2**30 else f"{num_bytes / 2**30:,.1f} GiB"


def format_plan(plan: dict[str, Any]) -> str:
    """One line: how the frames are read, where they are cached, whether the tracker streams,
    and the expected peak memory beyond the models."""
    source, method = plan["source"], plan["method"]
    parts = [f"{source['frames']} frames {source['size'][1]}x{source['size'][0]}"]
    if source["kind"] == "TensorFrames":
        parts.append(f"held in memory ({_mib(source['memory_bytes'])})")
    elif source.get("cache") and source.get("cache_reused"):
        parts.append(f"from {source.get('file')}, reusing the frames an earlier run decoded into {source['cache']} "
                     f"(same file, size, mtime and options; {_mib(source['cache_disk_bytes'])} on disk)")
    elif source.get("cache"):
        parts.append(f"from {source.get('file')}, decoded once into {source['cache']} "
                     f"({_mib(source['cache_disk_bytes'])} on disk)")
    else:
        parts.append(f"read from {source.get('file', 'image files')}, decoded {source.get('decoding', 'per frame')}")
    if method:
        if method.get("tracker_window"):
            how = f"reads windows of {method['tracker_window']} frames (SAM-PT-reinit)"
        else:
            how = "streams the frames" if method.get("tracker_streams") else "reads the whole video"
        parts.append(f"tracker {method['tracker']} {how} ({_mib(method.get('tracker_bytes', 0))})")
        disk = method.get("tracker_disk") or {}
        if disk.get("bytes"):
            parts.append(f"tracker scratch on disk in {disk['dir']} ({_mib(disk['bytes'])})")
    parts.append("masks kept in memory" if plan["keep_masks"] else "masks written frame by frame")
    parts.append(f"expected peak beyond the models ~{_mib(plan['expected_peak_bytes'])}")
    return "plan: " + "; ".join(parts)

#: What a rerun does with a video an earlier run finished with another configuration.
STALE_RESULT_ACTIONS = ("recompute", "error")


class StaleResultsError(SamptError):
    """An output folder holds a video finished with another configuration, and the run was told
    not to overwrite it."""


class VosModule(VideoModule):
    """Video object segmentation (DAVIS, YouTube-VOS, MOSE, your own videos) with any ``VosMethod``.

    Args:
        method: the method (``sampt.methods.sam_pt.method.SamPtMethod``: ``sam``, ``tracker``,
            ``sam_pt``; see ``configs/sam``, ``configs/tracker``, ``configs/model``).
        output_dir: where predictions are written; None: ``<log_dir>/predictions``. Give it
            explicitly to resume an interrupted run: complete sequences are reused.
        outputs: which extra outputs are written (:class:`~sampt.lightning_base.OutputOptions`).
        skip_first_and_last: the official DAVIS protocol (exclude the first and last frame).
        on_stale_results: what a rerun into the same ``output_dir`` does with a video an earlier
            run finished with a different configuration, weights, input or sampt version (its
            completion marker records a fingerprint of all of them): ``recompute`` it (default;
            the run says which videos and what changed) or stop with an ``error``. Videos with an
            identical fingerprint are reused and counted in the run's summary.
    """

    def __init__(
        self,
        method: VosMethod,
        output_dir: Optional[str] = None,
        outputs: OutputOptions = OutputOptions(),
        skip_first_and_last: bool = True,
        on_stale_results: str = "recompute",
    ):
        super().__init__(method, output_dir, outputs)
        if on_stale_results not in STALE_RESULT_ACTIONS:
            raise ValueError(f"on_stale_results must be one of {', '.join(STALE_RESULT_ACTIONS)}, "
                             f"got {on_stale_results!r}")
        self.on_stale_results = on_stale_results
        self.skip_first_and_last = skip_first_and_last
        self.jf = DavisJF(skip_first_and_last=skip_first_and_last)
        self._resume_counts = {"computed": 0, "reused": 0, "stale": 0, "unfinished": 0, "unscored": 0}

    def protocol(self) -> dict[str, Any]:
        """The choices behind the numbers, logged and saved with every result."""
        return {
            "skip_first_and_last": self.skip_first_and_last,
            "query_mode": "each object's mask on the first frame it is annotated (semi-supervised VOS); "
                          "point queries for videos given as points",
            "evaluation_resolution": "dataset annotation size (480p for DAVIS)",
            **super().protocol(),
        }

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
            left = unfinished_frames(self.output_dir, video.name)
            if left:
                # An interrupted run: its PNGs are kept until this run rewrites them.
                say(f"sampt: {video.name}: {left} frames in {self.output_dir / video.name} from an earlier run that "
                    "did not finish the video (no completion marker); recomputing it")
                self._resume_counts["unfinished"] += 1
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
    def _run_video(self, video: VideoItem) \
            -> tuple[Optional[torch.Tensor], Optional[WrittenMasks], Optional[MethodResult]]:
        """Index masks ``(T, h, w) uint8`` (``None`` when not kept), the masks as written (read
        back frame by frame, for a streamed video's overlays), and the pipeline's result.

        A video that a previous run finished with the same fingerprint (see
        :meth:`video_determined_by`) is not recomputed: its masks are read back when evaluation
        needs them (every frame was saved), else ``(None, None, None)`` is returned.
        """
        frames_to_save = list(video.save_frames) if video.save_frames is not None else list(video.frame_names)
        determined_by = self.video_determined_by(video)
        if self._reusable(video, frames_to_save, determined_by):
            self._resume_counts["reused"] += 1
            if len(frames_to_save) == video.num_frames:
                log.info("%s: complete in %s, reading it back instead of recomputing", video.name, self.output_dir)
                paths = [self.output_dir / video.name / f"{name}.png" for name in video.frame_names]
                return torch.from_numpy(read_sequence_masks(paths, "saved prediction")), None, None
            if video.ground_truth is None:
                log.info("%s: complete in %s, skipped", video.name, self.output_dir)
                return None, None, None

        object_ids = [o.object_id for o in video.objects]
        # Short clips keep their masks (J&F, overlays); a streamed video writes each frame's PNG
        # as it comes, and its overlays read them back.
        keep_masks = video.frames.in_memory or video.ground_truth is not None
        index_masks = torch.zeros((video.num_frames, *video.output_size), dtype=torch.uint8) if keep_masks else None
        say(f"sampt: {video.name}: {format_plan(self.video_plan(video, keep_masks))}")
        video.frames.prepare()  # a video file is decoded into its cache here (with its own progress bar)
        writer = SequenceWriter(self.output_dir, video.name, video.frame_names, video.palette or davis_palette(),
                                video.save_frames, object_ids if self.outputs.save_object_pngs else None)
        bars: dict[str, tqdm] = {}
        show_bars = video.num_frames >= self.outputs.frame_progress_min_frames

        def advance(stage: str, steps: int, total: int) -> None:
            if not show_bars:
                return
            if stage not in bars:
                bars[stage] = tqdm(total=total, desc=f"{video.name} {stage}", leave=False, unit="frame")
            bars[stage].update(steps)

        started = time.perf_counter()
        merger: Optional[VosMerger] = None

        def on_queries(queries) -> None:
            nonlocal merger
            merger = VosMerger(object_ids, queries.query_frames.tolist(), queries.query_masks, video.output_size,
                               [o.output_mask for o in video.objects])

        def on_frame(output) -> None:
            mask = merger(output.t, output.logits).cpu()
            writer.write(output.t, mask.numpy())
            if index_masks is not None:
                index_masks[output.t] = mask

        try:
            result = self.method.run(
                video, on_frame, on_queries,
                progress=lambda t: advance("segmenting", 1, video.num_frames),
                tracking_progress=lambda steps, total: advance("tracking", steps, total))
        finally:
            for bar in bars.values():
                bar.close()
            video.frames.close()
        elapsed = time.perf_counter() - started
        self._frames_processed += video.num_frames
        self._seconds_processed += elapsed
        self._add_stage_seconds(result.timings)

        # Written last: the completion marker tells a rerun that this video is done.
        writer.finish(determined_by)
        self._resume_counts["computed"] += 1
        self._save_tracks(video, result.trajectories, result.visibilities, result.reasons, object_ids)
        if result.extras:
            for path in self.method.write_extras(video, result, self.output_dir.parent, self._experiment(),
                                                 self.global_step):
                log.info("%s: wrote %s", video.name, path)
        return index_masks, WrittenMasks(writer.written), result

    def video_plan(self, video: VideoItem, keep_masks: bool) -> dict[str, Any]:
        """How ``video`` will be read and what it will hold (see :func:`format_plan`)."""
        output_h, output_w = video.output_size
        source = video.frames.plan()
        method = self.method.memory_plan(video)
        parts = {
            "frames": source.get("memory_bytes", 0),
            "masks": video.num_frames * output_h * output_w if keep_masks else 0,
            # the merge's float logits of one frame, and its upscaled copy
            "frame_logits": 2 * max(1, len(video.objects)) * output_h * output_w * 4,
            **{k: v for k, v in method.items() if k.endswith("_bytes")},
        }
        return {"source": source, "method": method, "keep_masks": keep_masks, "bytes": parts,
                "expected_peak_bytes": sum(parts.values())}

    def _visualize(self, video: VideoItem, index_masks: Optional[torch.Tensor], written: Optional[WrittenMasks],
                   result: Optional[MethodResult]) -> None:
        """Overlay strip, gif and mp4 of a video: from its masks when they were kept, else from
        the PNGs as written, read back a frame at a time (the mp4 is then encoded frame by frame
        and the gif, which would hold every frame, is left out)."""
        if result is None or self._videos_seen >= self.outputs.num_visualized_videos:
            return
        shown = index_masks.numpy() if index_masks is not None else written
        if shown is None or not len(shown):
            return
        from sampt.overlay import DEFAULT_FPS, iter_overlay_video, overlay_strip, write_gif, write_mp4, write_png

        # Overlays are drawn at the frame (output) size, where the masks and trajectories are:
        # the model's input frames are upscaled to it (frame by frame, when drawn).
        frames = OutputSizeFrames(video.frames, tuple(video.output_size))
        drawing = dict(palette=video.palette or davis_palette(), trajectories=result.trajectories.numpy(),
                       visibilities=result.visibilities.numpy(), reasons=result.reasons.numpy(),
                       num_positive=result.queries.num_positive, object_ids=[o.object_id for o in video.objects])
        strip = overlay_strip(frames, shown, **drawing)
        folder = self.output_dir.parent / "overlays"
        write_png(folder / f"{video.name}.png", strip)
        experiment = self._experiment()
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image(f"overlay/{video.name}", strip, self.global_step, dataformats="HWC")
        gif, mp4 = self.outputs.write_overlay_gif, self.outputs.write_overlay_mp4
        fps = video.fps or DEFAULT_FPS  # a video file's overlay plays at its own speed
        if gif and index_masks is None:
            say(f"sampt: {video.name}: no overlay gif (the video is streamed and a gif holds all its frames in "
                f"memory){'; the mp4 is written frame by frame' if mp4 else ''}")
            gif = False
        if gif:
            images = list(iter_overlay_video(frames, shown, **drawing))  # drawn once for both files
            write_gif(folder / f"{video.name}.gif", images, fps=fps, max_side=480)
        elif mp4:
            images = iter_overlay_video(frames, shown, **drawing)
            if video.num_frames >= self.outputs.frame_progress_min_frames:
                images = tqdm(images, total=video.num_frames, desc=f"{video.name} overlay mp4", leave=False,
                              unit="frame")
        if mp4:
            write_mp4(folder / f"{video.name}.mp4", images, fps=fps)

    # -- Lightning hooks -----------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._reset_counters()

    def on_predict_epoch_start(self) -> None:
        self._reset_counters()

    def _reset_counters(self) -> None:
        super()._reset_counters()
        self._resume_counts = dict.fromkeys(self._resume_counts, 0)

    def test_step(self, video: VideoItem, batch_idx: int) -> None:
        index_masks, written, result = self._run_video(video)
        self._visualize(video, index_masks, written, result)
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
        index_masks, written, result = self._run_video(video)
        self._visualize(video, index_masks, written, result)
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
        if self.outputs.zip_results:
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
            return
        table = {k: float(v) for k, v in self.jf.compute().items()}
        per_sequence = self.jf.per_sequence_table()
        stage = "val" if self.trainer.validating else "test"
        self.log_dict({f"{stage}/{k}": v for k, v in table.items()}, rank_zero_only=True)
        if self.trainer.is_global_zero:
            self._write_results(rows)
            self._log_sequences(per_sequence)
            sys.stdout.flush()
            tqdm.write(format_global_csv(table).rstrip("\n"))
        self.jf.reset()

    def results_files(self) -> list[Path]:
        return [self.output_dir.parent / f"global_results-{self.split}.csv", self.output_dir.parent / "results.json"]

    def on_predict_epoch_end(self) -> None:
        self._finish_outputs()

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
        if total["unfinished"]:
            line += f", {total['unfinished']} recomputed because an earlier run stopped partway through them"
        if total["unscored"]:
            line += f"; {total['unscored']} excluded from J&F (fewer than 3 frames)"
        say(line)

    def _write_results(self, rows: list[dict[str, Any]]) -> None:
        """The official CSVs, the per-object CSV and ``results.json`` (the same files, byte for
        byte, as ``sampt eval`` writes for the saved PNGs), and ``protocol.json`` (the run's
        method, checkpoints and protocol)."""
        from sampt.io.results import vos_protocol, write_vos_results

        out = self.output_dir.parent
        write_vos_results(out, rows, self.split, extra={
            "protocol": vos_protocol("davis", self.skip_first_and_last, self.jf.bound_th)})
        with atomic_open(out / "protocol.json", "w", encoding="utf-8") as handle:
            json.dump({"protocol": self.protocol()}, handle, indent=2, default=str)

    @property
    def split(self) -> str:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return getattr(datamodule, "split", "val") if datamodule is not None else "val"

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
