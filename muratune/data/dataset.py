"""Torch datasets over the image cache: augmented uint8 samples that keep their study index, and normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from muratune.constants import LABEL, STUDY_PATH
from muratune.data.cache import ImageCache


class CachedImageDataset(Dataset):
    """Samples ``(image, label, study_index)`` from an ImageCache.

    ``image`` is a ``1 x S x S`` uint8 tensor (or float, normalised, when a ``normalizer`` is given). Keeping
    uint8 through the loader makes worker-to-trainer transfers 4x smaller; normalise on the device instead.
    ``study_index`` indexes ``self.studies`` (the unique study paths, in order of first appearance).
    """

    def __init__(
        self,
        cache: ImageCache,
        frame: pd.DataFrame,
        transform: Callable | None = None,
        normalizer: Normalizer | None = None,
    ) -> None:
        rows = cache.rows_for(frame["image_path"])
        keep = rows >= 0
        self.frame = frame.loc[keep].reset_index(drop=True)
        self.rows = rows[keep]
        self.images = cache.images
        self.transform = transform
        self.normalizer = normalizer
        self.labels = self.frame[LABEL].to_numpy(dtype=np.float32)
        codes, uniques = pd.factorize(self.frame[STUDY_PATH], sort=False)
        self.study_index = codes.astype(np.int64)
        self.studies: list[str] = list(uniques)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = np.array(self.images[self.rows[i]])  # a writable copy of the memory-mapped row
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)
        if self.normalizer is not None:
            tensor = self.normalizer(tensor.unsqueeze(0)).squeeze(0)
        return tensor, torch.tensor(self.labels[i]), int(self.study_index[i])


class Normalizer:
    """Turns uint8 ``N x 1 x H x W`` batches into normalised float input with 1 or 3 channels.

    Mean and std come from the model's timm data config; a 1-channel model uses their channel averages.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_chans: int = 1) -> None:
        self.in_chans = in_chans
        if in_chans == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    @classmethod
    def from_model(cls, model: torch.nn.Module, in_chans: int) -> Normalizer:
        """Build from timm's resolved data config of ``model``."""
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        return cls(cfg["mean"], cfg["std"], in_chans)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(batch.device), self.std.to(batch.device)
        batch = batch.float()
        if self.in_chans == 3 and batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        return (batch - mean) / std


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """Build a DataLoader with persistent workers and a seeded shuffle.

    With workers, OpenCV in this process is set to one thread before they are forked: loader workers already
    run in parallel, and a worker that reconfigures a thread pool inherited from its parent deadlocks.
    """
    if num_workers > 0:
        _single_thread_opencv()
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker,
    )


def _single_thread_opencv() -> None:
    """Stop OpenCV's thread pool in this process, so forked loader workers inherit none.

    Calling ``cv2.setNumThreads`` in a forked child whose parent's pool had waiting threads hangs forever in
    ``pthread_cond_destroy``; doing it here, in the parent, is safe, and the children then run OpenCV inline.
    """
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own seed, including the albumentations pipeline's private generator."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
