"""Choice of the next query frame in SAM-PT-reinit, on hand-made area sequences.

Every case uses reinit_horizon = 8 unless said otherwise: a window not reaching the video end
has 8 frames s .. s+7, so the areas cover s+1 .. s+7, n = 7 entries, and the first 8 // 4 = 2
entries (frames s+1, s+2) count as missing. Entries whose area is <= 25 px are missing too.
"""
import math

import pytest
import torch

from sampt.methods.sam_pt.options import ReinitOptions
from sampt.methods.sam_pt.reinit_rules import (
    REINIT_VARIANTS,
    all_missing,
    missing_entries,
    select_reinit_entries,
)

NAN = math.nan
HORIZON = 8
MEDIAN = "reinit-at-median-of-area-diff"
SIMILAR = "reinit-on-similar-mask-area"
SIMILAR_SYNC = "reinit-on-similar-mask-area-and-sync-masks"
HORIZON_SYNC = "reinit-on-horizon-and-sync-masks"


def areas(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def torch_nanmedian_entries(area_rows, reinit_horizon):
    """What the original computes: nanmedian over the areas with missing entries set to NaN."""
    masked = area_rows.masked_fill(missing_entries(area_rows, reinit_horizon), NAN)
    return masked.nanmedian(dim=1).indices


# --------------------------------------------------------------------------------------------
# missing entries


def test_missing_entries_small_areas_and_the_first_quarter_of_the_horizon():
    rows = areas([1000, 1000, 300, 20, 500, 26, 25])
    expected = torch.tensor([[True, True, False, True, False, False, True]])
    assert torch.equal(missing_entries(rows, HORIZON), expected)


def test_first_quarter_is_kept_when_it_would_cover_every_entry():
    # A window cut by the video end can be shorter: with 2 entries and 8 // 4 = 2, "2 < 2" is
    # false, so the first entries stay available.
    rows = areas([100, 200])
    assert not missing_entries(rows, HORIZON).any()
    assert torch.equal(missing_entries(areas([100, 200, 300]), HORIZON), torch.tensor([[True, True, False]]))


def test_all_missing_per_object():
    rows = areas([1000, 1000, 0, 3, 25, 10, NAN],  # only the skipped entries are large
                 [0, 0, 0, 0, 0, 0, 26])  # one entry of 26 px is enough
    assert torch.equal(all_missing(rows, HORIZON), torch.tensor([True, False]))


# --------------------------------------------------------------------------------------------
# reinit-at-median-of-area-diff


def test_median_odd_number_of_valid_entries():
    # Valid: entry 2 = 300, entry 4 = 500, entry 5 = 400 (entries 0, 1 skipped, 3 and 6 small).
    # Sorted 300, 400, 500: the median 400 sits in entry 5.
    rows = areas([1000, 1000, 300, 20, 500, 400, 25])
    entries = select_reinit_entries(rows, torch.tensor([0.0]), MEDIAN, HORIZON)
    assert entries.tolist() == [5]
    assert entries.dtype == torch.int64
    assert torch.equal(entries, torch_nanmedian_entries(rows, HORIZON))


def test_median_even_number_of_valid_entries_takes_the_lower_one():
    # Valid 300 (2), 500 (4), 400 (5), 600 (6): sorted 300, 400, 500, 600 -> lower median 400.
    rows = areas([1000, 1000, 300, 20, 500, 400, 600])
    entries = select_reinit_entries(rows, torch.tensor([0.0]), MEDIAN, HORIZON)
    assert entries.tolist() == [5]
    assert torch.equal(entries, torch_nanmedian_entries(rows, HORIZON))


def test_median_ties_take_the_entry_torch_nanmedian_takes():
    # Valid 50 (2), 50 (3), 100 (4), 50 (5), 50 (6): ordered by (area, entry) the values read
    # 50@2, 50@3, 50@5, 50@6, 100@4; position (5 - 1) // 2 = 2 is entry 5.
    rows = areas([900, 900, 50, 50, 100, 50, 50],
                 [900, 900, 70, 30, 70, 30, 70])  # 70@2, 30@3, 70@4, 30@5, 70@6 -> 30@3 30@5 70@2 ..: entry 2
    entries = select_reinit_entries(rows, torch.zeros(2), MEDIAN, HORIZON)
    assert entries.tolist() == [5, 2]
    assert torch.equal(entries, torch_nanmedian_entries(rows, HORIZON))


def test_median_all_missing_takes_the_middle_entry():
    # The original re-initialises anyway (its validity check compares NaN with 0); the issue pins
    # the entry to (n - 1) // 2. (torch.nanmedian's own index for an all-NaN row depends on its
    # selection algorithm: 14 rather than 11 for n = 23 on torch 2.x CPU, so it is not used.)
    rows = areas([1000, 1000, 0, 3, 25, 10, NAN])
    assert select_reinit_entries(rows, torch.zeros(1), MEDIAN, HORIZON).tolist() == [(7 - 1) // 2]
    long_rows = torch.zeros(2, 23)
    assert select_reinit_entries(long_rows, torch.zeros(2), MEDIAN, 24).tolist() == [11, 11]


def test_median_matches_torch_nanmedian_on_random_sequences():
    generator = torch.Generator().manual_seed(0)
    for num_entries, reinit_horizon in [(7, 8), (23, 24), (5, 24), (11, 12)]:
        # Few distinct values so that ties are frequent; values <= 25 become missing.
        rows = torch.randint(0, 8, (200, num_entries), generator=generator).float() * 20
        rows = rows[~all_missing(rows, reinit_horizon)]
        entries = select_reinit_entries(rows, torch.zeros(len(rows)), MEDIAN, reinit_horizon)
        assert torch.equal(entries, torch_nanmedian_entries(rows, reinit_horizon))


# --------------------------------------------------------------------------------------------
# reinit-on-similar-mask-area


def test_similar_area_picks_the_closest_valid_entry_first_on_ties():
    # Start area 400: differences 100 (2), 100 (4), 10 (5), 10 (6); 20 (3) is missing and the
    # skipped entries 0, 1 would match exactly. The tie 5/6 goes to the first: entry 5.
    rows = areas([400, 400, 300, 20, 500, 410, 390])
    assert select_reinit_entries(rows, torch.tensor([400.0]), SIMILAR, HORIZON).tolist() == [5]


def test_similar_area_never_chooses_a_missing_entry():
    # Start area 20: the missing entry 3 has area 20 (difference 0) but is never chosen; the
    # closest valid area is 300 at entry 2.
    rows = areas([20, 20, 300, 20, 500, 410, 390])
    assert select_reinit_entries(rows, torch.tensor([20.0]), SIMILAR, HORIZON).tolist() == [2]


def test_similar_area_all_missing_takes_entry_zero():
    rows = areas([400, 400, 0, 3, 25, 10, NAN], [500, 500, 30, 30, 30, 30, 30])
    assert select_reinit_entries(rows, torch.tensor([400.0, 30.0]), SIMILAR, HORIZON).tolist() == [0, 2]


# --------------------------------------------------------------------------------------------
# reinit-on-similar-mask-area-and-sync-masks


SYNC_ROWS = areas(
    # object A, start area 100: relative differences  -, -, .5, .1, -, .1, 0
    [100, 100, 150, 90, 10, 110, 100],
    # object B, start area 200:                        -, -, 0, .3, .1, -, .1
    [200, 200, 200, 260, 180, 10, 220],
)
SYNC_START = torch.tensor([100.0, 200.0])
# Summed cost per entry (missing = 720): 1440, 1440, .5, .4, 720.1, 720.1, .1


def test_sync_similar_area_one_entry_for_all_objects():
    assert select_reinit_entries(SYNC_ROWS, SYNC_START, SIMILAR_SYNC, HORIZON).tolist() == [6, 6]


def test_sync_similar_area_bonus_for_the_next_query_frame():
    # A later object queries on frame s + 4 -> entry 3: .4 - 36 beats .1.
    assert select_reinit_entries(SYNC_ROWS, SYNC_START, SIMILAR_SYNC, HORIZON, 3).tolist() == [3, 3]
    # On a skipped entry the bonus is not enough: 1440 - 36 is still the worst.
    assert select_reinit_entries(SYNC_ROWS, SYNC_START, SIMILAR_SYNC, HORIZON, 0).tolist() == [6, 6]
    # Past the window there is no entry to favour (the original would raise IndexError).
    assert select_reinit_entries(SYNC_ROWS, SYNC_START, SIMILAR_SYNC, HORIZON, 7).tolist() == [6, 6]


def test_sync_similar_area_one_object_missing_everywhere():
    # Object B is missing everywhere: +720 on every entry, so object A alone decides (entry 6).
    rows = torch.stack([SYNC_ROWS[0], torch.tensor([0.0, 0, 0, 0, 0, 0, 0])])
    assert select_reinit_entries(rows, SYNC_START, SIMILAR_SYNC, HORIZON).tolist() == [6, 6]
    # Everything missing: all costs tie at 1440 -> entry 0.
    assert select_reinit_entries(torch.zeros(2, 7), SYNC_START, SIMILAR_SYNC, HORIZON).tolist() == [0, 0]


def test_sync_similar_area_ties_go_to_the_first_entry():
    # Relative differences .25 at entries 3 and 5 only (others missing): tie -> entry 3.
    rows = areas([100, 100, 0, 125, 0, 75, 0])
    assert select_reinit_entries(rows, torch.tensor([100.0]), SIMILAR_SYNC, HORIZON).tolist() == [3]


def test_sync_similar_area_with_an_empty_start_mask_prefers_missing_entries():
    # Original quirk: with area 0 on frame s, a valid area gives |A - 0| / 0 = inf while a missing
    # one costs 720, so the first missing entry wins.
    rows = areas([100, 100, 300, 20, 500, 400, 600])
    assert select_reinit_entries(rows, torch.tensor([0.0]), SIMILAR_SYNC, HORIZON).tolist() == [0]


# --------------------------------------------------------------------------------------------
# reinit-on-horizon-and-sync-masks


def test_horizon_variant_without_a_later_query_frame():
    # Entry reinit_horizon - 2 = 6 is the window's last frame s + 7, whatever the areas say.
    rows = areas([0, 0, 0, 0, 0, 0, 0], [100, 200, 300, 400, 500, 600, 700])
    assert select_reinit_entries(rows, torch.zeros(2), HORIZON_SYNC, HORIZON).tolist() == [6, 6]


def test_horizon_variant_syncs_with_an_earlier_later_query_frame():
    rows = torch.full((3, 7), 500.0)
    # Another object queries on frame s + 3 -> entry 2 < 6.
    assert select_reinit_entries(rows, torch.zeros(3), HORIZON_SYNC, HORIZON, 2).tolist() == [2, 2, 2]
    # A query frame beyond the window does not move the choice: min(6, 9) = 6.
    assert select_reinit_entries(rows, torch.zeros(3), HORIZON_SYNC, HORIZON, 9).tolist() == [6, 6, 6]
    # The frame right after s -> entry 0, even though entries 0 and 1 are "missing" for others.
    assert select_reinit_entries(rows, torch.zeros(3), HORIZON_SYNC, HORIZON, 0).tolist() == [0, 0, 0]


def test_horizon_variant_rejects_too_few_entries():
    with pytest.raises(ValueError, match="reinit_horizon - 2"):
        select_reinit_entries(torch.full((1, 4), 500.0), torch.zeros(1), HORIZON_SYNC, HORIZON)


# --------------------------------------------------------------------------------------------
# general contract and options


@pytest.mark.parametrize("variant", REINIT_VARIANTS)
def test_every_variant_returns_int64_entries_in_range(variant):
    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 600, (4, 23), generator=generator).float()
    entries = select_reinit_entries(rows, torch.tensor([100.0, 0.0, 250.0, 30.0]), variant, 24, 5)
    assert entries.shape == (4,) and entries.dtype == torch.int64
    assert bool(((entries >= 0) & (entries < 23)).all())


def test_no_objects():
    for variant in REINIT_VARIANTS:
        entries = select_reinit_entries(torch.zeros(0, 7), torch.zeros(0), variant, HORIZON)
        assert entries.shape == (0,)


def test_selection_errors_are_clear():
    with pytest.raises(ValueError, match="unknown reinit_variant 'median'.*reinit-at-median-of-area-diff"):
        select_reinit_entries(SYNC_ROWS, SYNC_START, "median", HORIZON)
    with pytest.raises(ValueError, match="area_at_start must have one area per object"):
        select_reinit_entries(SYNC_ROWS, torch.zeros(3), MEDIAN, HORIZON)
    with pytest.raises(ValueError, match="next_other_query_offset"):
        select_reinit_entries(SYNC_ROWS, SYNC_START, HORIZON_SYNC, HORIZON, -1)
    with pytest.raises(ValueError, match="no entries"):
        select_reinit_entries(torch.zeros(2, 0), SYNC_START, MEDIAN, HORIZON)


def test_reinit_config_defaults_and_validation():
    config = ReinitOptions()
    assert (config.use_point_reinit, config.reinit_point_tracker_horizon, config.reinit_horizon,
            config.reinit_variant, config.reinit_stop_when_missing) == (
        False, 24, 24, "reinit-at-median-of-area-diff", False)
    ReinitOptions(reinit_point_tracker_horizon=32, reinit_horizon=16)
    with pytest.raises(ValueError, match=r"reinit_horizon \(30\) must not exceed reinit_point_tracker_horizon \(24\)"):
        ReinitOptions(reinit_horizon=30)
    with pytest.raises(ValueError, match="reinit_variant must be one of .*reinit-at-median-of-area-diff.*got 'sometimes'"):
        ReinitOptions(reinit_variant="sometimes")
    with pytest.raises(ValueError, match="reinit_horizon must be an integer >= 2, got 1"):
        ReinitOptions(reinit_horizon=1)
