"""SAM-PT's options in sections: the original's flat names, validation, immutability."""
from __future__ import annotations

import dataclasses

import pytest

from sampt.methods.sam_pt.options import SECTION_OF, BatchingOptions, QueryOptions, SamPtConfig


def test_flat_names_round_trip_through_their_sections():
    config = SamPtConfig.from_flat(positive_points_per_mask=8, use_point_reinit=True, frame_batch_size=4, seed=7)
    assert (config.query.positive_points_per_mask, config.reinit.use_point_reinit,
            config.batching.frame_batch_size, config.seed) == (8, True, 4, 7)
    assert SamPtConfig.from_flat(**config.flat()) == config
    assert set(config.flat()) == set(SECTION_OF) | {"seed"}
    # Every original option lives in exactly one section.
    assert SECTION_OF["masks_batch_size"] == "prompting" and SECTION_OF["decoder_batch_size"] == "batching"


def test_bad_values_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown SAM-PT option 'reinit_horizn'; valid options: .*reinit_horizon"):
        SamPtConfig.from_flat(reinit_horizn=8)
    with pytest.raises(ValueError, match=r"sam_pt.query.positive_point_selection_method must be one of .*kmedoids"):
        QueryOptions(positive_point_selection_method="median")
    with pytest.raises(ValueError, match=r"sam_pt.batching.frame_batch_size must be an integer >= 1, got 0"):
        BatchingOptions(frame_batch_size=0)
    with pytest.raises(ValueError, match="sam_pt.query must be a QueryOptions"):
        SamPtConfig(query={"positive_points_per_mask": 4})


def test_options_are_frozen_and_replace_validates_again():
    config = SamPtConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.prompting.sam_iou_threshold = 0.0
    changed = config.replace(sam_iou_threshold=0.5)
    assert changed.prompting.sam_iou_threshold == 0.5 and config.prompting.sam_iou_threshold == 0.7
    with pytest.raises(ValueError, match="must not exceed"):
        config.replace(reinit_horizon=30)
