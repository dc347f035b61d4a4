import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from muratune.data.augment import (
    FlipAffine,
    HoleDropout,
    affine_matrix,
    create_transform,
    list_policies,
    register_policy,
)
from muratune.data.preview import preview_policy
from muratune.errors import UserError

POLICIES = ["none", "flip", "mura-paper", "light", "medium", "heavy", "histeq-crop-rotate"]


def _image(size: int, seed: int = 0) -> np.ndarray:
    """A grayscale uint8 image with a gradient (so flips show) plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size, dtype=np.float32)[None, :].repeat(size, axis=0)
    return (ramp + rng.integers(0, 55, (size, size))).astype(np.uint8)


def _apply(transform, image: np.ndarray, times: int) -> list[np.ndarray]:
    return [transform(image=image)["image"] for _ in range(times)]


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_keeps_shape_and_dtype_without_warnings(policy: str, size: int) -> None:
    image = _image(size)
    before = image.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transform = create_transform(policy, size, seed=1)
        outputs = _apply(transform, image, 20)
    for out in outputs:
        assert out.shape == (size, size)
        assert out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)  # the input is never modified in place


def test_list_policies_names_all_policies_with_one_line_descriptions() -> None:
    policies = list_policies()
    assert list(policies) == POLICIES
    for description in policies.values():
        assert description and "\n" not in description


def test_none_is_identity() -> None:
    image = _image(64)
    for out in _apply(create_transform("none", 64, seed=0), image, 5):
        np.testing.assert_array_equal(out, image)


def test_flip_flips_horizontally_about_half_the_time() -> None:
    image = _image(64)
    outputs = _apply(create_transform("flip", 64, seed=0), image, 40)
    flipped = [np.array_equal(out, np.fliplr(image)) for out in outputs]
    unchanged = [np.array_equal(out, image) for out in outputs]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert 5 < sum(flipped) < 35


@pytest.mark.parametrize("affine_p", [0.0, 1.0])
def test_flip_affine_flip_alone_matches_fliplr_exactly(affine_p: float) -> None:
    image = _image(64)
    out = FlipAffine(flip_p=1.0, affine_p=affine_p)(image=image)["image"]
    np.testing.assert_array_equal(out, np.fliplr(image))


def test_affine_matrix_identity_and_zoom_about_centre() -> None:
    np.testing.assert_allclose(affine_matrix(10, 10, 0.0, 1.0, 0.0, 0.0, False), [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    matrix = affine_matrix(9, 9, 0.0, 2.0, 0.0, 0.0, False)
    np.testing.assert_allclose(matrix @ [4.0, 4.0, 1.0], [4.0, 4.0])  # the centre stays put


def test_flip_affine_rotates_like_numpy_rot90() -> None:
    image = _image(32)
    out = FlipAffine(rotate=(90, 90), flip_p=0.0)(image=image)["image"]
    np.testing.assert_array_equal(out, np.rot90(image))  # counter-clockwise


def test_hole_dropout_zeroes_rectangles_and_copies() -> None:
    image = np.full((64, 64), 255, np.uint8)
    out = HoleDropout(num_holes=(3, 3), hole_size=(0.1, 0.1), p=1.0)(image=image)["image"]
    assert 0 < (out == 0).sum() <= 3 * 6 * 6
    assert (image == 255).all()


def test_unknown_policy_names_closest_and_known_policies() -> None:
    with pytest.raises(UserError) as info:
        create_transform("mura_paper", 64)
    message = str(info.value)
    assert "did you mean 'mura-paper'" in message
    for name in POLICIES:
        assert name in message


def test_bad_size_is_a_user_error() -> None:
    with pytest.raises(UserError):
        create_transform("flip", 0)


def test_register_policy_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_policy("flip")(lambda size: [])


@pytest.mark.parametrize("policy", ["mura-paper", "heavy", "histeq-crop-rotate"])
def test_same_seed_gives_same_outputs(policy: str) -> None:
    image = _image(64)
    first = _apply(create_transform(policy, 64, seed=7), image, 8)
    second = _apply(create_transform(policy, 64, seed=7), image, 8)
    other = _apply(create_transform(policy, 64, seed=8), image, 8)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other, strict=True))


def test_set_random_seed_restarts_the_sequence() -> None:
    image = _image(64)
    transform = create_transform("heavy", 64, seed=3)
    first = _apply(transform, image, 5)
    transform.set_random_seed(3)
    for a, b in zip(first, _apply(transform, image, 5), strict=True):
        np.testing.assert_array_equal(a, b)


def test_preview_writes_a_readable_png(tmp_path) -> None:
    images = [_image(100), _image(80, seed=1), np.stack([_image(50)] * 3, axis=-1), _image(40)[..., None]]
    out = preview_policy(images, "medium", tmp_path / "sub" / "preview.png", size=64, per_image=3)
    assert out == tmp_path / "sub" / "preview.png"
    assert out.stat().st_size > 0
    with Image.open(out) as png:
        assert png.format == "PNG"
        width, height = png.size
    assert width >= 4 * 64 and height >= 4 * 64
    assert [p.name for p in out.parent.iterdir()] == ["preview.png"]  # no temporary file left behind


def test_preview_is_deterministic(tmp_path) -> None:
    images = [_image(64)]
    a = preview_policy(images, "heavy", tmp_path / "a.png", size=64, seed=5).read_bytes()
    b = preview_policy(images, "heavy", tmp_path / "b.png", size=64, seed=5).read_bytes()
    assert a == b


def test_preview_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(UserError):
        preview_policy([], "flip", tmp_path / "x.png")
    with pytest.raises(UserError):
        preview_policy([_image(64)], "flip", tmp_path / "x.png", per_image=0)
    with pytest.raises(UserError, match="did you mean"):
        preview_policy([_image(64)], "flips", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_transform_pickles_for_loader_workers() -> None:
    image = _image(64)
    transform = create_transform("heavy", 64, seed=2)
    clone = pickle.loads(pickle.dumps(transform))
    for a, b in zip(_apply(transform, image, 5), _apply(clone, image, 5), strict=True):
        np.testing.assert_array_equal(a, b)
