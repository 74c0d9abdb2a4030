"""Point re-initialisation (SAM-PT-reinit): the choice of the next query frame.

(The options are ``sampt.methods.sam_pt.options.ReinitOptions``.)

After the objects whose query frame is ``s`` have been tracked and segmented on the window
``W = [s, e)``, each gets a new query frame inside ``W`` excluding ``s``. The choice looks at the
predicted mask areas ``A`` on frames ``s+1 .. e-1`` (``n = e - s - 1`` entries; entry ``j`` is
frame ``s + 1 + j``) and follows the original SAM-PT exactly, quirks included:

- an area ``<= 25`` pixels counts as missing, and so do the first ``reinit_horizon // 4``
  entries when that is fewer than the entries;
- ``reinit-on-horizon-and-sync-masks``: entry ``reinit_horizon - 2``, or the smaller of that and
  ``q - s - 1`` when some object's current query frame ``q`` is later than ``s`` (the earliest
  such ``q``); one entry for all objects;
- ``reinit-at-median-of-area-diff``: the entry holding the lower median of the non-missing areas
  (despite its name, the median of the areas, not of their differences);
- ``reinit-on-similar-mask-area``: the entry whose area is closest to the area on frame ``s``;
  missing entries are never chosen unless all are missing (then entry 0);
- ``reinit-on-similar-mask-area-and-sync-masks``: one entry for all objects, the argmin over
  entries of the summed relative differences ``|A - area_s| / area_s`` (a missing entry counts
  720), where entry ``q - s - 1`` gets a bonus of -36.

This module is pure (tensors in, tensors out); the pipeline runs the windows.
"""
from __future__ import annotations

from typing import Optional

import torch

REINIT_VARIANTS = (
    "reinit-on-horizon-and-sync-masks",
    "reinit-at-median-of-area-diff",
    "reinit-on-similar-mask-area",
    "reinit-on-similar-mask-area-and-sync-masks",
)

#: Masks of at most this many pixels are too small to re-initialise points on ("missing").
MISSING_AREA_MAX_PIXELS = 25
#: In the synced similar-area variant a missing entry costs this much per object ...
SYNC_MISSING_COST = 720.0
#: ... and the next other object's query frame gets this bonus, to prefer syncing, but not too much.
SYNC_QUERY_FRAME_BONUS = 36.0


def _check_areas(areas: torch.Tensor) -> torch.Tensor:
    if areas.ndim != 2:
        raise ValueError(f"areas must be (M, n) per-object, per-frame mask areas, got shape {tuple(areas.shape)}")
    if areas.shape[1] == 0:
        raise ValueError("areas has no entries: the window must have frames after its first one")
    return areas.to(torch.float32)


def missing_entries(areas: torch.Tensor, reinit_horizon: int) -> torch.Tensor:
    """Which entries cannot be re-initialised on.

    Args:
        areas: ``(M, n) float`` mask areas in pixels on frames ``s+1 .. e-1`` (NaN = missing).
        reinit_horizon: the window length option (``reinit_horizon``).

    Returns:
        ``(M, n) bool``: areas ``<= 25`` px (or NaN), and the first ``reinit_horizon // 4``
        entries when that is fewer than ``n``.
    """
    areas = _check_areas(areas)
    missing = torch.isnan(areas) | (areas <= MISSING_AREA_MAX_PIXELS)
    num_skipped = reinit_horizon // 4
    if num_skipped < areas.shape[1]:
        missing[:, :num_skipped] = True
    return missing


def all_missing(areas: torch.Tensor, reinit_horizon: int) -> torch.Tensor:
    """``(M,) bool``: objects whose every entry is missing (for ``reinit_stop_when_missing``).

    Args:
        areas: ``(M, n) float`` mask areas on frames ``s+1 .. e-1``.
        reinit_horizon: the window length option.
    """
    return missing_entries(areas, reinit_horizon).all(dim=1)


def _lower_median_entries(areas_with_nan: torch.Tensor) -> torch.Tensor:
    """Entry of the lower median of each row's non-NaN values; ``(n - 1) // 2`` for all-NaN rows.

    Matches ``torch.nanmedian(dim=1).indices`` on the CPU wherever a row has a value: the values
    are ordered by (value, entry) and the one at position ``(count - 1) // 2`` is taken, so among
    equal values the earlier entries come first. Computed explicitly so the result does not
    depend on the device (CUDA's nanmedian may return any of several tied entries). For an
    all-NaN row torch's index is an artefact of its selection algorithm; the issue pins it to
    ``(n - 1) // 2``.
    """
    num_entries = areas_with_nan.shape[1]
    valid = ~torch.isnan(areas_with_nan)
    num_valid = valid.sum(dim=1)
    sort_keys = torch.where(valid, areas_with_nan, torch.full_like(areas_with_nan, float("inf")))
    order = torch.sort(sort_keys, dim=1, stable=True).indices
    position = torch.clamp(num_valid - 1, min=0) // 2
    entries = order.gather(1, position[:, None]).squeeze(1)
    all_nan_entry = torch.full_like(entries, (num_entries - 1) // 2)
    return torch.where(num_valid > 0, entries, all_nan_entry)


def select_reinit_entries(
        areas: torch.Tensor,
        area_at_start: torch.Tensor,
        variant: str,
        reinit_horizon: int,
        next_other_query_offset: Optional[int] = None,
) -> torch.Tensor:
    """Choose each object's next query frame inside the window (as an entry index).

    Args:
        areas: ``(M, n) float`` predicted mask areas (pixels) of the M objects of the window on
            frames ``s+1 .. e-1`` (entry ``j`` = frame ``s + 1 + j``). Missing-entry rules are
            applied here (see :func:`missing_entries`); pass raw areas.
        area_at_start: ``(M,)`` mask areas on frame ``s`` (used by the similar-area variants).
        variant: one of :data:`REINIT_VARIANTS`.
        reinit_horizon: the ``reinit_horizon`` option.
        next_other_query_offset: ``q - s - 1`` where ``q`` is the earliest current query frame
            later than ``s`` among all objects (the entry of frame ``q``), or ``None`` when there
            is none. Used by the two sync variants. In the synced similar-area variant an offset
            past the last entry gets no bonus (the original would raise an IndexError there).

    Returns:
        ``(M,) int64`` entries in ``[0, n)`` on the areas' device; the new query frame of object
        ``m`` is ``s + 1 + entries[m]``. When every entry of an object is missing the original's
        choice is kept (median: ``(n - 1) // 2``; similar area: 0); use :func:`all_missing` to
        detect it.

    Raises:
        ValueError: unknown variant, bad shapes, a negative offset, or (horizon variant) an entry
            ``reinit_horizon - 2`` beyond the n entries.
    """
    if variant not in REINIT_VARIANTS:
        raise ValueError(f"unknown reinit_variant {variant!r}; valid variants: {', '.join(REINIT_VARIANTS)}")
    areas = _check_areas(areas)
    num_objects, num_entries = areas.shape
    area_at_start = torch.as_tensor(area_at_start, device=areas.device).to(torch.float32).reshape(-1)
    if area_at_start.shape[0] != num_objects:
        raise ValueError(f"area_at_start must have one area per object ({num_objects}), "
                         f"got shape {tuple(area_at_start.shape)}")
    if next_other_query_offset is not None and next_other_query_offset < 0:
        raise ValueError(f"next_other_query_offset must be q - s - 1 >= 0 for a later query frame q, "
                         f"got {next_other_query_offset}")

    if variant == "reinit-on-horizon-and-sync-masks":
        entry = reinit_horizon - 2
        if next_other_query_offset is not None:
            entry = min(entry, int(next_other_query_offset))
        if entry >= num_entries:
            raise ValueError(f"entry {entry} (reinit_horizon - 2) is past the {num_entries} area entries; "
                             f"a window ending before the video end has reinit_horizon - 1 entries")
        return torch.full((num_objects,), entry, dtype=torch.int64, device=areas.device)

    areas_with_nan = areas.masked_fill(missing_entries(areas, reinit_horizon), float("nan"))

    if variant == "reinit-at-median-of-area-diff":
        return _lower_median_entries(areas_with_nan)

    # Same float32 arithmetic as the original, so ties and the 720 / -36 weighting match it.
    area_difference = torch.abs(areas_with_nan - area_at_start[:, None])
    if variant == "reinit-on-similar-mask-area":
        area_difference = area_difference.masked_fill(torch.isnan(area_difference), float("inf"))
        return area_difference.argmin(dim=1)  # first minimum; all missing -> entry 0

    # reinit-on-similar-mask-area-and-sync-masks
    relative_difference = area_difference / area_at_start[:, None]
    relative_difference = relative_difference.masked_fill(torch.isnan(relative_difference), SYNC_MISSING_COST)
    cost_per_entry = relative_difference.sum(dim=0)
    if next_other_query_offset is not None and next_other_query_offset < num_entries:
        cost_per_entry[int(next_other_query_offset)] -= SYNC_QUERY_FRAME_BONUS
    entry = cost_per_entry.argmin(dim=0)
    return torch.full((num_objects,), int(entry), dtype=torch.int64, device=areas.device)
