"""Tests of the cached dataset: samples keep label and study, normalisation, and distinct augmentation per worker."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from muratune.data.augment import create_transform
from muratune.data.cache import ImageCache, build_cache
from muratune.data.dataset import CachedImageDataset, Normalizer, make_loader
from muratune.data.index import load_index

SIZE = 32


@pytest.fixture(scope="module")
def frame(synthetic_root) -> pd.DataFrame:
    return load_index(synthetic_root)


@pytest.fixture(scope="module")
def cache(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    return build_cache(frame, SIZE, cache_dir=tmp_path_factory.mktemp("cache"), workers=2, progress=False)


def test_samples_carry_their_label_and_study(frame, cache) -> None:
    dataset = CachedImageDataset(cache, frame)
    assert len(dataset) == len(frame)
    assert len(dataset.studies) == frame["study_path"].nunique()
    rows = cache.rows_for(frame["image_path"])
    for i in [0, 1, 2, 100, len(frame) // 2, len(frame) - 1]:
        image, label, study_index = dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (1, SIZE, SIZE)
        np.testing.assert_array_equal(image[0].numpy(), cache.images[rows[i]])
        assert float(label) == frame["label"].iloc[i]
        assert dataset.studies[study_index] == frame["study_path"].iloc[i]


def test_a_shuffled_subset_keeps_its_own_order(frame, cache) -> None:
    subset = frame.sample(frac=0.2, random_state=0)
    dataset = CachedImageDataset(cache, subset)
    for i in range(0, len(subset), 17):
        _, label, study_index = dataset[i]
        assert dataset.studies[study_index] == subset["study_path"].iloc[i]
        assert float(label) == subset["label"].iloc[i]


@pytest.fixture(scope="module")
def data_config() -> dict:
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=1)
    return timm.data.resolve_model_data_config(model)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_normalizer_shapes_and_values(data_config, in_chans: int) -> None:
    mean, std = np.array(data_config["mean"]), np.array(data_config["std"])
    batch = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    out = Normalizer(mean, std, in_chans)(batch)
    assert out.dtype == torch.float32 and out.shape == (2, in_chans, 8, 8)
    pixels = batch.float().numpy()[:, 0]
    if in_chans == 1:
        expected = (pixels / 255 - mean.mean()) / std.mean()
        np.testing.assert_allclose(out[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    for channel in range(in_chans if in_chans == 3 else 0):
        expected = (pixels / 255 - mean[channel]) / std[channel]
        np.testing.assert_allclose(out[:, channel].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_normalizer_from_model_and_inside_the_dataset(data_config, frame, cache) -> None:
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=1)
    normalizer = Normalizer.from_model(model, in_chans=3)
    assert torch.allclose(normalizer.mean.flatten(), torch.tensor(data_config["mean"]) * 255)
    image, _, _ = CachedImageDataset(cache, frame, normalizer=normalizer)[0]
    raw, _, _ = CachedImageDataset(cache, frame)[0]
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(image, normalizer(raw.unsqueeze(0))[0])


def test_loader_workers_draw_different_augmentations(frame, cache) -> None:
    same = frame.iloc[[0] * 8].reset_index(drop=True)  # one image eight times
    transform = create_transform("mura-paper", SIZE, seed=0)
    dataset = CachedImageDataset(cache, same, transform=transform)
    loader = make_loader(dataset, batch_size=1, shuffle=False, num_workers=2)
    images = [batch[0][0, 0].numpy() for batch in loader]  # workers alternate: 0, 1, 0, 1, ...
    assert len(images) == 8
    distinct = {image.tobytes() for image in images}
    assert len(distinct) == 8
    assert not np.array_equal(images[0], images[1])  # the first sample of each worker
