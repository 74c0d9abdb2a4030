"""What every sampt data module shares: one video per item, unpadded distributed splitting.

A data module family (DAVIS, YouTube-VOS, MOSE, UVO, generic) subclasses ``VideoDataModule``
and implements ``build_dataset(stage)`` returning a ``VideoDataset``: an indexable collection
that reads one video lazily per item and returns a ``sampt.video.VideoItem``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Optional, Sequence

import lightning.pytorch as pl
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from sampt.video import VideoItem


class VideoDataset(Dataset, ABC):
    """Lazily reads one video per index.

    Subclasses implement ``__len__``, ``video_names`` and ``load(index) -> VideoItem``.
    """

    @property
    @abstractmethod
    def video_names(self) -> Sequence[str]:
        """The names of the videos, in item order."""

    @abstractmethod
    def load(self, index: int) -> VideoItem:
        """Read video ``index`` from disk."""

    def __len__(self) -> int:
        return len(self.video_names)

    def __getitem__(self, index: int) -> VideoItem:
        return self.load(index)


class UnpaddedDistributedSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets items ``r, r + w, r + 2w, ...``: every item exactly once overall.

    Unlike ``torch.utils.data.DistributedSampler`` nothing is repeated to even out the ranks, so
    no video is evaluated (or written) twice. Ranks may get different numbers of items, which is
    fine for evaluation: there is no gradient synchronisation, and metrics sync once at the end.
    When ``lengths`` are given, items are first sorted longest first so that the ranks' total
    work is balanced (a greedy longest-processing-time assignment).
    """

    def __init__(self, num_items: int, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 lengths: Optional[Sequence[int]] = None):
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.num_items = num_items
        self.num_replicas = num_replicas
        self.rank = rank
        self.indices = self._assign(num_items, num_replicas, lengths)[rank]

    @staticmethod
    def _assign(num_items: int, num_replicas: int, lengths: Optional[Sequence[int]]) -> list[list[int]]:
        if lengths is None:
            return [list(range(r, num_items, num_replicas)) for r in range(num_replicas)]
        order = sorted(range(num_items), key=lambda i: (-lengths[i], i))
        loads = [0] * num_replicas
        assignment: list[list[int]] = [[] for _ in range(num_replicas)]
        for index in order:
            target = min(range(num_replicas), key=lambda r: (loads[r], r))
            assignment[target].append(index)
            loads[target] += lengths[index]
        return [sorted(a) for a in assignment]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _single_item(batch: list[VideoItem]) -> VideoItem:
    # One video per step: videos differ in length, size and number of objects.
    return batch[0]


class VideoDataModule(pl.LightningDataModule, ABC):
    """Base of the per-family data modules.

    Args:
        num_workers: DataLoader worker processes reading videos ahead of the model.
        max_videos: keep only the first ``max_videos`` videos (quick runs).
        max_frames: keep only the first ``max_frames`` frames of each video (quick runs).
    """

    def __init__(self, num_workers: int = 0, max_videos: Optional[int] = None, max_frames: Optional[int] = None):
        super().__init__()
        self.num_workers = num_workers
        self.max_videos = max_videos
        self.max_frames = max_frames
        self._dataset: Optional[VideoDataset] = None

    @abstractmethod
    def build_dataset(self) -> VideoDataset:
        """Index the dataset on disk (validating the layout) and return it."""

    @property
    def dataset(self) -> VideoDataset:
        if self._dataset is None:
            self._dataset = self.build_dataset()
        return self._dataset

    def setup(self, stage: Optional[str] = None) -> None:
        self.dataset  # index (and validate) once per process, before the first step

    def video_lengths(self) -> Optional[Sequence[int]]:
        """Frame counts per video for load balancing across ranks, when cheaply known."""
        return None

    def _dataloader(self) -> DataLoader:
        sampler = UnpaddedDistributedSampler(len(self.dataset), lengths=self.video_lengths())
        return DataLoader(
            self.dataset,
            batch_size=1,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_single_item,
            persistent_workers=False,
        )

    def test_dataloader(self) -> DataLoader:
        return self._dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._dataloader()

    def val_dataloader(self) -> DataLoader:
        return self._dataloader()
