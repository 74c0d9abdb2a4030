"""Per-object logits -> one index mask per frame, the way SAM-PT's VOS evaluation does it.

For each object, frames before its query frame are background and its query frame is its
given query mask (resized to the output size with nearest neighbour); then per pixel the
argmax over (background logit 0, object logits) wins: the strongest object with logit > 0.
A pixel where any object's logit is NaN is background, as the original's softmax + argmax
makes it (see ``SamPtConfig.original_empty_mask_upsampling``). Objects keep their dataset ids
in the index mask.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# The original writes +/-1e8 into the logits of query frames and frames before them.
_FORCED_LOGIT = 1e8


class VosMerger:
    """Turns each frame's ``(M, h, w)`` logits into a ``(h, w) uint8`` index mask.

    Args:
        object_ids: dataset id of each of the M objects (values written in the index mask).
        query_frames: ``(M,)`` query frame of each object.
        query_masks: ``(M, H, W) bool`` query masks at input resolution.
        output_size: ``(h, w)``.
        output_masks: optional ``(M, h, w) bool`` query masks at the output size, used as they
            are instead of resizing ``query_masks`` (the dataset's own annotation, when it has one
            at the output resolution: the query frame then reproduces the given mask exactly).
    """

    def __init__(self, object_ids: Sequence[int], query_frames: Sequence[int], query_masks: torch.Tensor,
                 output_size: tuple[int, int], output_masks: Optional[Sequence[Optional[torch.Tensor]]] = None):
        if len(object_ids) != len(query_frames) or len(object_ids) != len(query_masks):
            raise ValueError("object_ids, query_frames and query_masks must have one entry per object")
        if any(not 0 < int(i) < 256 for i in object_ids):
            raise ValueError(f"object ids must be in 1..255 to be written in an index PNG, got {list(object_ids)}")
        self.ids = torch.tensor([0, *[int(i) for i in object_ids]], dtype=torch.uint8)
        self.query_frames = [int(t) for t in query_frames]
        self.output_masks = F.interpolate(query_masks[None].float(), size=tuple(output_size), mode="nearest")[0].bool()
        for m, given in enumerate(output_masks or []):
            if given is not None:
                if tuple(given.shape) != tuple(output_size):
                    raise ValueError(f"output mask of object {object_ids[m]} is {tuple(given.shape)}, "
                                     f"expected the output size {tuple(output_size)}")
                self.output_masks[m] = given.bool().to(self.output_masks.device)

    def __call__(self, t: int, logits: torch.Tensor) -> torch.Tensor:
        """Index mask of frame ``t`` from its ``(M, h, w)`` logits."""
        logits = logits.float().clone()
        for m, query_frame in enumerate(self.query_frames):
            if t < query_frame:
                logits[m] = -_FORCED_LOGIT
            elif t == query_frame:
                mask = self.output_masks[m].to(logits.device)
                logits[m] = torch.where(mask, _FORCED_LOGIT, -_FORCED_LOGIT)
        background = logits.new_zeros((1, *logits.shape[1:]))
        nan = logits.isnan().any(dim=0)
        winner = torch.cat([background, logits.nan_to_num(nan=-_FORCED_LOGIT)]).argmax(dim=0)
        winner[nan] = 0
        return self.ids.to(winner.device)[winner]
