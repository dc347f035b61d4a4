"""A trial's data: the internal train/val subsets over the shared cache, their loaders and the loss weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from muratune.config import ExperimentConfig
from muratune.constants import BODY_PART, LABEL, SUBSET, SUBSET_TRAIN, SUBSET_VAL
from muratune.data.cache import ImageCache
from muratune.data.dataset import CachedImageDataset
from muratune.errors import UserError


@dataclass
class TrialData:
    """Everything a trial reads: the cache and the internal train/val frames with per-image loss weights."""

    cache: ImageCache
    train: pd.DataFrame
    val: pd.DataFrame
    class_weights: dict[str, tuple[float, float]]


def class_weights_by_part(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """MURA paper weights per body part T: ``w_T,0 = |A_T| / (|A_T|+|N_T|)``, ``w_T,1 = |N_T| / (|A_T|+|N_T|)``."""
    weights = {}
    for part, labels in frame.groupby(BODY_PART)[LABEL]:
        abnormal = int(labels.sum())
        total = len(labels)
        if abnormal == 0 or abnormal == total:
            weights[str(part)] = (0.5, 0.5)
        else:
            weights[str(part)] = (abnormal / total, (total - abnormal) / total)
    return weights


def prepare_data(config: ExperimentConfig) -> TrialData:
    """Index the dataset, split it (internally, or into folds with ``data.folds``), open (or build) the shared cache.

    With ``data.folds`` and ``data.fold`` set the trial trains on the other folds of the official train split and
    validates on fold ``data.fold``, so its val predictions are out-of-fold predictions (see ``muratune refit``).
    With ``data.whole_train`` it trains on the whole official train split and its val subset is empty
    (``muratune refit --full``).
    """
    from muratune.data.cache import build_cache
    from muratune.data.index import load_index
    from muratune.data.split import fold_split, internal_split

    data = config.data
    if not data.root:
        raise UserError("data.root: no dataset given; set it in the config or pass --data ROOT")
    index = load_index(data.root)
    cache = build_cache(
        index,
        data.image_size,
        data.resize_mode,
        cache_dir=data.cache_dir,
        skip_bad_images=data.skip_bad_images,
        progress=False,
    )
    if data.folds is not None and data.fold is not None:
        frame = fold_split(index, data.folds, data.fold, data.split_seed)
    else:
        frame = internal_split(index, data.val_fraction, data.split_seed)
        if data.whole_train:
            frame.loc[frame[SUBSET] == SUBSET_VAL, SUBSET] = SUBSET_TRAIN
    if data.body_parts:
        frame = frame[frame[BODY_PART].isin(data.body_parts)]
    train = frame[frame[SUBSET] == SUBSET_TRAIN].reset_index(drop=True)
    val = frame[frame[SUBSET] == SUBSET_VAL].reset_index(drop=True)
    return TrialData(cache=cache, train=train, val=val, class_weights=class_weights_by_part(train))


def sample_weights(frame: pd.DataFrame, weights: dict[str, tuple[float, float]]) -> np.ndarray:
    """Per-image loss weights from the body part and label."""
    return np.array(
        [weights.get(part, (0.5, 0.5))[int(label)] for part, label in zip(frame[BODY_PART], frame[LABEL], strict=True)],
        dtype=np.float32,
    )


def study_weights(dataset: CachedImageDataset, weights: dict[str, tuple[float, float]]) -> torch.Tensor:
    """Loss weights indexed by the dataset's study index (what its loader yields), not by image position.

    Every view of a study shares its body part and label, so one weight per study is exact.
    """
    out = np.zeros(len(dataset.studies), dtype=np.float32)
    out[dataset.study_index] = sample_weights(dataset.frame, weights)
    return torch.from_numpy(out)


def create_loaders(
    data: TrialData, hparams: dict, config: ExperimentConfig
) -> tuple[CachedImageDataset, CachedImageDataset, DataLoader, DataLoader]:
    """The internal train and val datasets and their loaders (train augmented and shuffled with ``train.seed``)."""
    from muratune.data.augment import create_transform
    from muratune.data.dataset import make_loader

    seed = config.train.seed
    # Seeded: with num_workers 0 no worker_init_fn reseeds the pipeline, and albumentations would draw from OS entropy.
    transform = create_transform(hparams["augment_policy"], config.data.image_size, seed=seed)
    train_set = CachedImageDataset(data.cache, data.train, transform=transform)
    val_set = CachedImageDataset(data.cache, data.val)
    workers = config.data.num_workers
    drop_last = len(train_set) > hparams["batch_size"]
    train_loader = make_loader(train_set, hparams["batch_size"], True, workers, seed, drop_last=drop_last)
    val_loader = make_loader(val_set, config.train.eval_batch_size, False, workers, seed)
    return train_set, val_set, train_loader, val_loader
