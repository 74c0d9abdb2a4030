"""Object proposals for video instance segmentation: SAM's automatic mask generator on one frame.

SAM-PT's VIS recipe (``SamBasedVisToVosAdapter``) asks ``segment_anything``'s
``SamAutomaticMaskGenerator`` for masks on the first frame and tracks at most ``max_num_masks`` of
them, in the generator's order. :func:`propose_masks` does that with the *same* SAM module that
SAM-PT prompts (no second copy of the weights): for HQ-SAM and MobileSAM the generator class of
their own package is used, since only it knows how to run their modules (HQ-SAM's encoder returns
intermediate features); HQ-SAM's generator runs with ``hq_token_only=False`` (its default).

Frame 0 is embedded twice per video (once by the generator's predictor, once per SAM-PT run):
the pipeline embeds every frame itself, and the generator keeps its embedding inside its
``SamPredictor``; sharing it would need a hook in ``SamPt`` for precomputed embeddings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sampt.sam.model import SamModel


@dataclass
class ProposalConfig:
    """``SamAutomaticMaskGenerator`` settings (SAM-PT's UVO values as defaults) and the proposal cap.

    Attributes:
        points_per_side: the generator's grid of ``points_per_side ** 2`` point prompts.
        points_per_batch: prompts per mask-decoder call (memory vs speed).
        pred_iou_thresh: drop masks whose predicted IoU is at most this.
        stability_score_thresh: drop masks whose stability score is at most this.
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU of the non-maximum suppression between masks.
        crop_n_layers: extra layers of image crops (0: the whole image only).
        crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor: crop options.
        min_mask_region_area: remove holes / islands smaller than this (needs OpenCV); 0 = off.
        max_num_masks: keep at most this many proposals, in the generator's order.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_num_masks: int = 100

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"proposals.{name} must be a positive integer, got {value!r}")
        for name in ("crop_n_layers", "min_mask_region_area", "max_num_masks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"proposals.{name} must be a non-negative integer, got {value!r}")
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"proposals.{name} must be in [0, 1], got {value!r}")

    def generator_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``SamAutomaticMaskGenerator`` (everything but ``max_num_masks``)."""
        kwargs = asdict(self)
        kwargs.pop("max_num_masks")
        return kwargs


def generator_class(sam: SamModel) -> type:
    """The ``SamAutomaticMaskGenerator`` of the package that built ``sam.sam``."""
    package = type(sam.sam).__module__.split(".")[0]
    if package == "sam2":
        from sampt.errors import SamptError

        raise SamptError(f"VIS proposals need a SAM 1 automatic mask generator; {sam.variant} (backend sam2) "
                          "is not supported for VIS yet: use a SAM 1 backend for the UVO configs")
    if package == "segment_anything_hq":
        from segment_anything_hq import SamAutomaticMaskGenerator
    elif package == "mobile_sam":
        from mobile_sam import SamAutomaticMaskGenerator
    else:
        from segment_anything import SamAutomaticMaskGenerator
    return SamAutomaticMaskGenerator


@torch.no_grad()
def propose_masks(sam: SamModel, frame: torch.Tensor, config: ProposalConfig = ProposalConfig()) -> torch.Tensor:
    """SAM's automatic masks on one frame.

    Args:
        sam: the SAM handle; its module (and device) is used as is.
        frame: ``(3, H, W) uint8`` RGB, any device.
        config: generator settings and ``max_num_masks``.

    Returns:
        ``(M, H, W) bool`` on the CPU, ``M <= config.max_num_masks`` (possibly 0), in the
        generator's order.
    """
    if frame.ndim != 3 or frame.shape[0] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f"frame must be (3, H, W) uint8, got {tuple(frame.shape)} {frame.dtype}")
    height, width = int(frame.shape[1]), int(frame.shape[2])
    if config.max_num_masks == 0:
        return torch.zeros((0, height, width), dtype=torch.bool)
    generator = generator_class(sam)(sam.sam, output_mode="binary_mask", **config.generator_kwargs())
    image = np.ascontiguousarray(frame.permute(1, 2, 0).cpu().numpy())
    try:
        records = generator.generate(image)
    finally:
        generator.predictor.reset_image()  # drop the embedding it holds
    kept = records[: config.max_num_masks]
    if not kept:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(np.stack([np.asarray(r["segmentation"], dtype=bool) for r in kept]))
