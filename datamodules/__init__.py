"""Data modules, one per benchmark family; each yields one ``sampt.video.VideoItem`` per video."""
from sampt.datamodules.base import UnpaddedDistributedSampler, VideoDataModule, VideoDataset
from sampt.datamodules.davis import D16, D17

__all__ = ["D16", "D17", "UnpaddedDistributedSampler", "VideoDataModule", "VideoDataset"]
