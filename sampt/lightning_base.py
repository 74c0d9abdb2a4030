"""What the Lightning run modules share: a ``VosMethod``, where outputs go, which outputs are
written (:class:`OutputOptions`), checkpoints fetched before a run, speed and track logging.

``sampt.lightning.VosModule`` (VOS: index PNGs, J&F) and ``sampt.lightning_vis.SamPtVisModule``
(VIS: proposals, RLE results, video AP) are siblings on :class:`VideoModule`.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from tqdm import tqdm

from sampt.methods.base import VosMethod
from sampt.video import VideoItem
from sampt.writers import write_trajectories

log = logging.getLogger(__name__)


def say(message: str) -> None:
    """One line for the user on stderr, printed cleanly above any progress bar."""
    tqdm.write(message, file=sys.stderr)


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs a run writes besides its predictions and results.

    Attributes:
        save_trajectories: each video's tracks as ``trajectories/<video>.npz``.
        save_trajectories_csv: also as CSV (frame, object, point, x, y, visible, reason).
        num_visualized_videos: overlays (masks + points) of this many first videos per process
            go to TensorBoard and ``overlays/``.
        write_overlay_gif / write_overlay_mp4: also an animated overlay GIF / an mp4 of those
            videos, at the frame size (VOS).
        save_object_pngs: also one binary PNG per object and frame,
            ``<output_dir>/<video>/<object id>/<frame>.png`` (VOS).
        zip_results: after the run, zip the PNGs as evaluation servers expect into
            ``<output_dir's parent>/submission.zip``: ``Annotations/<video>/<frame>.png`` when
            ``output_dir`` is an ``Annotations`` folder (YouTube-VOS, MOSE), else
            ``<video>/<frame>.png`` (DAVIS test-dev) (VOS).
        frame_progress_min_frames: show a per-frame progress bar for videos at least this long.
    """

    save_trajectories: bool = True
    save_trajectories_csv: bool = False
    num_visualized_videos: int = 3
    write_overlay_gif: bool = False
    write_overlay_mp4: bool = False
    save_object_pngs: bool = False
    zip_results: bool = False
    frame_progress_min_frames: int = 100

    def __post_init__(self) -> None:
        for name in ("num_visualized_videos", "frame_progress_min_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"outputs.{name} must be an integer >= 0, got {value!r}")


class VideoModule(pl.LightningModule):
    """The shared half of the run modules (see the module docstring).

    Args:
        method: the method run on every video (``configs/*.yaml``'s ``model.init_args.method``).
        output_dir: where predictions are written; None: ``<log_dir>/predictions``.
        outputs: which extra outputs are written.
    """

    def __init__(self, method: VosMethod, output_dir: Optional[str] = None, outputs: OutputOptions = OutputOptions()):
        super().__init__()
        if not isinstance(method, VosMethod):
            raise ValueError(f"model.init_args.method must be a VosMethod (e.g. sampt.methods.sam_pt.method.SamPtMethod), "
                             f"got {type(method).__name__}")
        # The method loads its weights in ``prepare`` (called from ``setup``): they resolve (and
        # may fail with a clear CheckpointError) only when a run starts, not when a config is parsed.
        self.method = method
        self.output_dir_option = output_dir
        self.outputs = outputs
        self._frames_processed = 0
        self._seconds_processed = 0.0
        self._stage_seconds: dict[str, float] = {}
        self._videos_seen = 0
        # Temporaries older than this process come from an interrupted earlier run.
        self._started_at = time.time()
        self._checkpoints_ensured = False

    def protocol(self) -> dict[str, Any]:
        """The choices behind the numbers, logged and saved with every result."""
        from sampt.fingerprint import canonical

        info: dict[str, Any] = {"model": self.method.describe_model(), "method": canonical(self.method.description())}
        md5 = self.weights_md5()
        for role, path in self.method.weight_files().items():
            info[f"{role}_checkpoint"] = {"path": str(path), "md5": md5[role]}
        return info

    def _reset_counters(self) -> None:
        from sampt.io.atomic import remove_stray_temporaries

        self._frames_processed, self._seconds_processed, self._videos_seen = 0, 0.0, 0
        self._stage_seconds = {}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.trainer.is_global_zero:
            # Only where this run writes: the predictions, the track and overlay folders and the
            # result files beside them (the parent may hold other runs that are writing now).
            run_dir = self.output_dir.parent
            removed = remove_stray_temporaries(self.output_dir, older_than=self._started_at)
            for folder in (run_dir / "trajectories", run_dir / "overlays"):
                removed += remove_stray_temporaries(folder, older_than=self._started_at)
            removed += remove_stray_temporaries(run_dir, older_than=self._started_at, recursive=False)
            if removed:
                say(f"sampt: removed {len(removed)} temporary file(s) an interrupted earlier run left in "
                    f"{self.output_dir.parent}")

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

    @property
    def output_dir(self) -> Path:
        if self.output_dir_option is not None:
            return Path(self.output_dir_option)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or ".") / "predictions"

    def weights_md5(self) -> dict[str, str]:
        """md5 of every weights file the method loaded (memoised per file by ``file_md5``)."""
        from sampt.checkpoints import file_md5

        return {role: file_md5(path) for role, path in self.method.weight_files().items()}

    def _save_tracks(self, video: VideoItem, trajectories: torch.Tensor, visibilities: torch.Tensor,
                     reasons: torch.Tensor, object_ids: list[int]) -> None:
        """``trajectories/<video>.npz`` (and ``.csv``) when ``save_trajectories`` is on."""
        if not self.outputs.save_trajectories:
            return
        folder = self.output_dir.parent / "trajectories"
        write_trajectories(
            folder / f"{video.name}.npz",
            folder / f"{video.name}.csv" if self.outputs.save_trajectories_csv else None,
            trajectories.numpy(), visibilities.numpy(), object_ids,
            reasons=reasons.numpy(), frame_names=list(video.frame_names))

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

    def results_files(self) -> list[Path]:
        """The result files the finished run wrote (for the final line); none by default."""
        return []

    def report_outputs(self) -> None:
        """The run's last line (printed by the CLI after Lightning's table): where its outputs are."""
        if self._trainer is not None and not self.trainer.is_global_zero:
            return
        where = f"sampt: predictions in {self.output_dir}"
        results = [str(path) for path in self.results_files() if path.is_file()]
        if results:
            where += f"; results in {', '.join(results)}"
        say(where + f"; config and logs in {self.output_dir.parent}")
