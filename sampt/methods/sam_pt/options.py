"""SAM-PT's options, in sections, with the names and VOS defaults of the original.

``SamPtConfig`` is what a config's ``sam_pt:`` block holds::

    sam_pt:
      query:          {positive_points_per_mask: 16, negative_points_per_mask: 1, ...}
      prompting:      {iterative_refinement_iterations: 12, sam_iou_threshold: 0.7, ...}
      reinit:         {use_point_reinit: false, reinit_horizon: 24, ...}
      patch_matching: {use_patch_matching_filtering: false, ...}
      batching:       {point_tracker_mask_batch_size: 5, frame_batch_size: 1, ...}
      seed: 0

Every section is a frozen dataclass validated on construction (a bad value fails when the
config is parsed, naming the option). Field names are the original SAM-PT's, so its configs
translate one to one: :meth:`SamPtConfig.from_flat` takes the original's flat option names and
puts each in its section.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from sampt.methods.sam_pt.patch_matching import COLOR_ORDERS
from sampt.methods.sam_pt.query_points import POINT_SELECTION_METHODS
from sampt.methods.sam_pt.reinit_rules import REINIT_VARIANTS


def _check_int(section: str, name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise ValueError(f"sam_pt.{section}.{name} must be {allowed}, got {value!r}")


def _check_choice(section: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"sam_pt.{section}.{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class QueryOptions:
    """Query points sampled from each object's mask on its query frame.

    Attributes:
        positive_point_selection_method: ``kmedoids``, ``shi-tomasi``, ``random`` or ``mixed``.
        negative_point_selection_method: same choices, for the points outside the mask.
        positive_points_per_mask / negative_points_per_mask: points sampled per object.
    """

    positive_point_selection_method: str = "kmedoids"
    negative_point_selection_method: str = "mixed"
    positive_points_per_mask: int = 16
    negative_points_per_mask: int = 1

    def __post_init__(self) -> None:
        _check_choice("query", "positive_point_selection_method", self.positive_point_selection_method,
                      POINT_SELECTION_METHODS)
        _check_choice("query", "negative_point_selection_method", self.negative_point_selection_method,
                      POINT_SELECTION_METHODS)
        _check_int("query", "positive_points_per_mask", self.positive_points_per_mask, 0)
        _check_int("query", "negative_points_per_mask", self.negative_points_per_mask, 0)


@dataclass(frozen=True)
class PromptingOptions:
    """The SAM stage: how tracked points become masks (``sampt.sam.prompting``).

    Attributes:
        add_other_objects_positive_points_as_negative_points: prompt other objects' visible
            positives as negatives.
        max_other_objects_positive_points: cap on those extra negatives (random subset).
        masks_batch_size: objects act as each other's negatives only within consecutive groups
            of this many, as in the original, which segments objects in batches (VOS: 5).
        iterative_refinement_iterations: box refinement calls after the point prompt.
        sam_iou_threshold: masks with a lower predicted IoU are emptied.
        refinement_box_in_frame_pixels: reproduce the original's box coordinates (see prompting).
        original_empty_mask_upsampling: reproduce the original's resize of an empty mask's
            ``-inf`` logits to the output size (default, as SAM-PT's published numbers were made).
            Bilinear upsampling gives NaN on row 0 and column 0 there (``-inf x 0``), and the
            original's VOS merge (softmax, then argmax) writes background on every NaN pixel,
            even where another object is foreground: at most ``(h + w - 1) / (h w)`` of a frame,
            0.28% at 720p, and only when frames are upsampled (input smaller than output, e.g.
            YouTube-VOS 1280x720 from 1024x576). False: empty masks get a finite floor
            (``EMPTY_LOGIT``) first, so the other objects keep those pixels.
    """

    add_other_objects_positive_points_as_negative_points: bool = True
    max_other_objects_positive_points: Optional[int] = None
    masks_batch_size: Optional[int] = 5
    iterative_refinement_iterations: int = 12
    sam_iou_threshold: float = 0.7
    refinement_box_in_frame_pixels: bool = True
    original_empty_mask_upsampling: bool = True

    def __post_init__(self) -> None:
        _check_int("prompting", "max_other_objects_positive_points", self.max_other_objects_positive_points, 0,
                   allow_none=True)
        _check_int("prompting", "masks_batch_size", self.masks_batch_size, 1, allow_none=True)
        _check_int("prompting", "iterative_refinement_iterations", self.iterative_refinement_iterations, 0)


@dataclass(frozen=True)
class ReinitOptions:
    """SAM-PT-reinit: point re-initialisation, run window by window (``sampt.methods.sam_pt.reinit``).

    Attributes:
        use_point_reinit: run SAM-PT-reinit instead of plain SAM-PT.
        reinit_point_tracker_horizon: frames the point tracker runs for from each start frame.
        reinit_horizon: frames of each window kept; must not exceed the tracker horizon and must
            be at least 2 (a next query frame is chosen among the window's frames after the first).
        reinit_variant: how the next query frame is chosen, one of :data:`REINIT_VARIANTS`.
        reinit_stop_when_missing: when every candidate mask is missing, stop the object (logits
            -inf, points not visible with reason REINIT_FAILED) instead of re-initialising on an
            empty mask as the original does.
        reinit_embedding_cache_mib: windows overlap; image embeddings of recent frames are cached
            (LRU) up to this many MiB on the SAM device (0: no cache).
    """

    use_point_reinit: bool = False
    reinit_point_tracker_horizon: int = 24
    reinit_horizon: int = 24
    reinit_variant: str = "reinit-at-median-of-area-diff"
    reinit_stop_when_missing: bool = False
    reinit_embedding_cache_mib: int = 1024

    def __post_init__(self) -> None:
        _check_choice("reinit", "reinit_variant", self.reinit_variant, REINIT_VARIANTS)
        _check_int("reinit", "reinit_point_tracker_horizon", self.reinit_point_tracker_horizon, 2)
        _check_int("reinit", "reinit_horizon", self.reinit_horizon, 2)
        _check_int("reinit", "reinit_embedding_cache_mib", self.reinit_embedding_cache_mib, 0)
        if self.reinit_horizon > self.reinit_point_tracker_horizon:
            raise ValueError(f"sam_pt.reinit.reinit_horizon ({self.reinit_horizon}) must not exceed "
                             f"reinit_point_tracker_horizon ({self.reinit_point_tracker_horizon}): the kept "
                             f"window cannot be longer than the tracked one")


@dataclass(frozen=True)
class PatchMatchingOptions:
    """The optional patch-matching filter of tracked points (``sampt.methods.sam_pt.patch_matching``).

    Attributes:
        use_patch_matching_filtering: drop points whose patch no longer matches the query's.
        patch_size: side of the compared patches (pixels).
        patch_similarity_threshold: lowest similarity of a kept point.
        patch_matching_color_order: the original converts BGR->LAB (``bgr``); ``rgb`` is correct colour.
    """

    use_patch_matching_filtering: bool = False
    patch_size: int = 3
    patch_similarity_threshold: float = 0.01
    patch_matching_color_order: str = "bgr"

    def __post_init__(self) -> None:
        _check_int("patch_matching", "patch_size", self.patch_size, 1)
        _check_choice("patch_matching", "patch_matching_color_order", self.patch_matching_color_order,
                      COLOR_ORDERS)


@dataclass(frozen=True)
class BatchingOptions:
    """How much work goes into one call: speed and memory only, never the result.

    Attributes:
        point_tracker_mask_batch_size: objects whose points are tracked in one tracker call.
        frame_batch_size: frames embedded per image-encoder call (more = faster on GPU, more memory).
        decoder_batch_size: prompts per mask-decoder call; None: 64 on CUDA, 1 on CPU.
    """

    point_tracker_mask_batch_size: int = 5
    frame_batch_size: int = 1
    decoder_batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        _check_int("batching", "point_tracker_mask_batch_size", self.point_tracker_mask_batch_size, 1)
        _check_int("batching", "frame_batch_size", self.frame_batch_size, 1)
        _check_int("batching", "decoder_batch_size", self.decoder_batch_size, 1, allow_none=True)


@dataclass(frozen=True)
class SamPtConfig:
    """All of SAM-PT's options (see the module docstring); ``seed`` seeds each video's random
    choices (query-point sampling, negative subsets) together with the video's name."""

    query: QueryOptions = field(default_factory=QueryOptions)
    prompting: PromptingOptions = field(default_factory=PromptingOptions)
    reinit: ReinitOptions = field(default_factory=ReinitOptions)
    patch_matching: PatchMatchingOptions = field(default_factory=PatchMatchingOptions)
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, kind in SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"sam_pt.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        _check_int("", "seed", self.seed, 0)

    @classmethod
    def from_flat(cls, **options: Any) -> "SamPtConfig":
        """A config from the original SAM-PT's flat option names (``positive_points_per_mask=8``,
        ``use_point_reinit=True``, ...), each put into its section."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        top: dict[str, Any] = {}
        for key, value in options.items():
            if key == "seed":
                top[key] = value
            elif key in SECTION_OF:
                sections[SECTION_OF[key]][key] = value
            else:
                valid = ", ".join(sorted([*SECTION_OF, "seed"]))
                raise ValueError(f"unknown SAM-PT option {key!r}; valid options: {valid}")
        return cls(**{name: SECTIONS[name](**values) for name, values in sections.items()}, **top)

    def flat(self) -> dict[str, Any]:
        """Every option under its flat (original SAM-PT) name."""
        options = {key: value for name in SECTIONS for key, value in dataclasses.asdict(getattr(self, name)).items()}
        return {**options, "seed": self.seed}

    def replace(self, **options: Any) -> "SamPtConfig":
        """A copy with some options changed, named flat as in :meth:`from_flat` (validated again)."""
        return SamPtConfig.from_flat(**{**self.flat(), **options})


SECTIONS: dict[str, type] = {
    "query": QueryOptions,
    "prompting": PromptingOptions,
    "reinit": ReinitOptions,
    "patch_matching": PatchMatchingOptions,
    "batching": BatchingOptions,
}
#: The section of each of the original's flat option names.
SECTION_OF: dict[str, str] = {f.name: section for section, kind in SECTIONS.items() for f in dataclasses.fields(kind)}
