"""A thin, backend-neutral handle on a SAM model.

All supported backends (``segment_anything``, ``segment_anything_hq``, ``mobile_sam`` and the
``custom`` tiny architecture) build a ``Sam``-like module with ``image_encoder``,
``prompt_encoder``, ``mask_decoder``, ``preprocess`` and ``postprocess_masks``. The only
difference the prompting code must know about is HQ-SAM: its image encoder also returns
intermediate embeddings and its mask decoder takes them (plus ``hq_token_only``).

The prompting code (:mod:`sampt.sam.prompting`) talks to a handle through five calls:
``embed_frames``, ``prompt_tokens``, ``mask_embedding``, ``decode`` and ``upscale_logits``
(plus ``feedback_logits`` for the low-resolution logits it passes back as the next call's mask
prompt). SAM 2's handle (:class:`sampt.sam.sam2_backend.Sam2Model`) implements the same calls.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn


@dataclass
class ImageEmbedding:
    """SAM's embedding of one frame, shared by every object prompted on that frame.

    Attributes:
        features: ``(1, C, h', w')`` image embedding.
        interm_features: HQ-SAM's intermediate ViT embeddings, else None.
        input_size: ``(h, w)`` of the frame after resizing to the longest side ``img_size``.
        original_size: ``(H, W)`` of the frame as given.
    """

    features: torch.Tensor
    interm_features: Optional[list[torch.Tensor]]
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class SamModel(nn.Module, ABC):
    """The calls the prompting code makes on a promptable image model; holds no per-image state
    (embeddings are returned, not stored).

    Implemented by :class:`SegmentAnythingModel` (SAM, HQ-SAM, MobileSAM and the tiny custom
    architecture) and :class:`sampt.sam.sam2_backend.Sam2Model` (SAM 2's image model). What
    they share is here; each implements the rest.

    Args:
        sam: the package's built module.
        variant: human-readable variant name, for logs and results (e.g. ``"sam/vit_b"``).
    """

    def __init__(self, sam: nn.Module, variant: str):
        super().__init__()
        self.sam = sam
        self.variant = variant
        self.weights_path: Optional[Any] = None  # set by the builder that loaded the weights

    @property
    def device(self) -> torch.device:
        return self.sam.device

    @property
    def backend(self) -> str:
        """The backend's name (``segment_anything``, ``mobile_sam``, ``sam2``, ...): the variant's prefix."""
        return self.variant.split("/")[0]

    @property
    @abstractmethod
    def prompt_encoder(self) -> nn.Module:
        """The package's prompt encoder (``_embed_masks``, ``no_mask_embed``, ``get_dense_pe``)."""

    @property
    @abstractmethod
    def mask_decoder(self) -> nn.Module:
        """The package's mask decoder."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """The square input side of the image encoder."""

    @property
    @abstractmethod
    def mask_threshold(self) -> float:
        """Logit above which a pixel is in the mask."""

    @property
    @abstractmethod
    def pads_prompts(self) -> bool:
        """Whether one :meth:`decode` call takes prompts of different lengths (padded and masked)."""

    @abstractmethod
    def embed_frames(self, frames: torch.Tensor) -> list[ImageEmbedding]:
        """Embed ``(K, 3, H, W) uint8`` RGB frames in one encoder call; returns K embeddings."""

    @abstractmethod
    def prompt_tokens(self, coords: torch.Tensor, labels: torch.Tensor, box: Optional[torch.Tensor],
                      original_size: tuple[int, int], box_in_frame_pixels: bool) -> torch.Tensor:
        """Sparse prompt tokens ``(n_tokens, C)`` of points ``coords (n, 2)`` and ``box (4,)`` in frame pixels."""

    @abstractmethod
    def decode(self, embedding: ImageEmbedding, tokens: torch.Tensor, valid: Optional[torch.Tensor],
               dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-decoder call, single-mask output: ``(B, 1, 4h, 4w)`` low-res logits, ``(B, 1)`` IoU."""

    @abstractmethod
    def upscale_logits(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """``(B, 1, h, w)`` low-res logits -> ``(B, 1, H, W)`` logits at the frame's original size."""

    def mask_embedding(self, mask_input: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """Dense prompt embeddings ``(B, C, h, w)``: of ``mask_input (B, 1, 4h, 4w)`` low-res
        logits, or the learnt "no mask" embedding for ``batch`` prompts without one."""
        encoder = self.prompt_encoder
        if mask_input is not None:
            return encoder._embed_masks(mask_input)
        h, w = encoder.image_embedding_size
        return encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)

    def dense_positional_encoding(self) -> torch.Tensor:
        return self.prompt_encoder.get_dense_pe()

    def feedback_logits(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """The low-res logits as the next call's mask prompt (``SamPredictor`` passes them as they are)."""
        return low_res_logits


class SegmentAnythingModel(SamModel):
    """A ``segment_anything``-style ``Sam`` module (SAM, HQ-SAM, MobileSAM, custom) behind the
    :class:`SamModel` calls.

    Args:
        sam: a ``Sam``-like module from one of the supported packages.
        hq: whether ``sam`` is an HQ-SAM model (decoder needs intermediate embeddings).
        hq_token_only: HQ-SAM's option to return the HQ mask only (HQ-SAM default: False).
        variant: human-readable variant name, for logs (e.g. ``"sam/vit_b"``).
    """

    def __init__(self, sam: nn.Module, hq: bool = False, hq_token_only: bool = False, variant: str = "custom"):
        super().__init__(sam, variant)
        self.hq = hq
        self.hq_token_only = hq_token_only
        # segment_anything's transforms pull in torchvision (about a second): imported on use.
        from segment_anything.utils.transforms import ResizeLongestSide

        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @property
    def image_encoder(self) -> nn.Module:
        return self.sam.image_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam.mask_decoder

    @property
    def image_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    @property
    def mask_threshold(self) -> float:
        return float(self.sam.mask_threshold)

    def resize_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """``(3, H, W) uint8`` -> ``(3, h, w) uint8`` resized so the longest side is ``image_size``.

        Uses the same (PIL) resize as ``SamPredictor.set_image`` so embeddings are identical.
        """
        image = frame.permute(1, 2, 0).cpu().numpy()
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        return torch.as_tensor(resized).permute(2, 0, 1).contiguous()

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> list[ImageEmbedding]:
        """Embed ``(K, 3, H, W) uint8`` RGB frames in one encoder call; returns K embeddings."""
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be (K, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
        original_size = (int(frames.shape[2]), int(frames.shape[3]))
        resized = torch.stack([self.resize_frame(frame) for frame in frames]).to(self.device)
        input_size = (int(resized.shape[2]), int(resized.shape[3]))
        encoded: Any = self.sam.image_encoder(self.sam.preprocess(resized.float()))
        if self.hq:
            features, interm = encoded
            return [
                ImageEmbedding(features[i : i + 1], [x[i : i + 1] for x in interm], input_size, original_size)
                for i in range(len(frames))
            ]
        return [ImageEmbedding(encoded[i : i + 1], None, input_size, original_size) for i in range(len(frames))]

    @property
    def pads_prompts(self) -> bool:
        return not self.hq  # HQ-SAM's decoder cannot mask its pad tokens: the prompter groups equal lengths

    def prompt_tokens(self, coords: torch.Tensor, labels: torch.Tensor, box: Optional[torch.Tensor],
                      original_size: tuple[int, int], box_in_frame_pixels: bool) -> torch.Tensor:
        """Sparse prompt tokens ``(n_tokens, C)`` exactly as ``PromptEncoder`` builds them.

        ``coords (n, 2)`` and ``box (4,)`` are in frame pixels; ``box_in_frame_pixels`` gives the
        box to the encoder unmapped, as SAM-PT does (see :mod:`sampt.sam.prompting`).
        """
        device = self.device
        points = (self.transform.apply_coords_torch(coords.to(device), original_size)[None].float(),
                  labels.to(device)[None].int())
        boxes = None
        if box is not None:
            boxes = box.to(device)[None]
            if not box_in_frame_pixels:
                boxes = self.transform.apply_boxes_torch(boxes, original_size)
        sparse, _ = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        return sparse[0]

    def decode(self, embedding: ImageEmbedding, tokens: torch.Tensor, valid: Optional[torch.Tensor],
               dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-decoder call, single-mask output: ``(B, 1, 4h, 4w)`` low-res logits, ``(B, 1)`` IoU.

        ``tokens (B, n, C)``; ``valid (B, n) bool`` marks real tokens (None: all are); ``dense``
        the mask prompts' embeddings ``(B, C, h, w)``.
        """
        from sampt.sam.masked_decoder import masked_decode

        if self.hq:
            if valid is not None:
                raise ValueError("HQ-SAM's decoder takes prompts of one length per call (pads_prompts is False)")
            return self.mask_decoder(
                image_embeddings=embedding.features, image_pe=self.dense_positional_encoding(),
                sparse_prompt_embeddings=tokens, dense_prompt_embeddings=dense, multimask_output=False,
                hq_token_only=self.hq_token_only, interm_embeddings=embedding.interm_features)
        return masked_decode(self.mask_decoder, embedding.features, self.dense_positional_encoding(),
                             tokens, valid, dense)

    def upscale_logits(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """``(B, 1, 256, 256)`` low-res logits -> ``(B, 1, H, W)`` logits at the frame's original size."""
        return self.sam.postprocess_masks(low_res_logits, embedding.input_size, embedding.original_size)
