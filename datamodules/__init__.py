"""Data modules, one per benchmark family; each yields one ``sampt.video.VideoItem`` per video."""
from sampt.datamodules.base import UnpaddedDistributedSampler, VideoDataModule, VideoDataset
from sampt.datamodules.davis import D16, D17
from sampt.datamodules.generic import Generic
from sampt.datamodules.mose import MOSE
from sampt.datamodules.uvo import UVO
from sampt.datamodules.ytvos import Y18

__all__ = ["D16", "D17", "Generic", "MOSE", "UnpaddedDistributedSampler", "UVO", "VideoDataModule", "VideoDataset", "Y18"]
