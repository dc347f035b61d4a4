"""Tests of reading any PNG flavour as uint8 grayscale, and of square resizing that can be undone exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from muratune.data.images import (
    IMAGE_FORMATS,
    MAX_PIXELS,
    ImageReadError,
    ImageTooLarge,
    read_header,
    read_image,
    read_square,
    resize_square,
    sniff_image,
    unsquare,
)
from muratune.errors import UserError


def _save(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(pixels, mode=mode).save(path) if mode else Image.fromarray(pixels).save(path)
    return path


def test_reads_12_bit_data_in_16_bit_png_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    path = _save(tmp_path / "ramp12.png", ramp)
    assert Image.open(path).mode.startswith("I;16")
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    np.testing.assert_array_equal(out, np.rint(ramp * (255 / 4095)).astype(np.uint8))


def test_reads_full_range_16_bit_png_divided_by_257(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    out = read_image(_save(tmp_path / "ramp16.png", ramp))
    assert np.abs(out.astype(float) - ramp / 257).max() <= 1.0
    assert out.min() == 0 and out.max() == 255


def test_reads_16_bit_png_larger_than_max_side(tmp_path: Path) -> None:
    pixels = np.full((600, 1000), 4095, dtype=np.uint16)
    out = read_image(_save(tmp_path / "large16.png", pixels), max_side=100)
    assert max(out.shape) <= 2 * 100 * 2 and out.shape[1] > out.shape[0]
    assert (out == 255).all()


def test_rgba_is_composited_over_black(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128  # half-transparent red
    rgba[:, 4:, 3] = 0  # fully transparent half
    out = read_image(_save(tmp_path / "rgba.png", rgba, "RGBA"))
    expected = np.asarray(Image.new("RGB", (1, 1), (128, 0, 0)).convert("L"))[0, 0]
    assert abs(int(out[0, 0]) - int(expected)) <= 1
    assert (out[:, 4:] == 0).all()


def test_reads_palette_png(tmp_path: Path) -> None:
    gray = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    path = tmp_path / "palette.png"
    Image.fromarray(gray, mode="L").convert("P").save(path)
    assert Image.open(path).mode == "P"
    assert np.abs(read_image(path).astype(int) - gray).max() <= 1


def test_reads_1_bit_png(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    Image.fromarray(np.eye(9, dtype=bool)).save(path)
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read_image(path), np.eye(9, dtype=np.uint8) * 255)
    white = tmp_path / "white.png"
    Image.new("1", (40, 30), 1).save(white)
    reduced = read_image(white, max_side=5)  # 1-bit images are reduced while decoding too
    assert reduced.shape[1] < 40 and (reduced == 255).all()


def test_reads_1x1_image_and_resizes_it(tmp_path: Path) -> None:
    out = read_image(_save(tmp_path / "pixel.png", np.full((1, 1), 7, np.uint8), "L"))
    assert out.shape == (1, 1) and out[0, 0] == 7
    square, geo = resize_square(out, 16)
    assert square.shape == (16, 16) and (square == 7).all()
    assert unsquare(square, geo).shape == (1, 1)


def test_huge_png_is_read_reduced_without_memory_blow_up(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("L", (6_000, 6_000)).save(path)  # zeros compress to ~40 kB; 36 megapixels, under the cap
    script = (
        "import resource, sys\n"
        "from muratune.data.images import read_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "image = read_image(sys.argv[1], max_side=256)\n"
        "growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024\n"
        "print(image.shape[0], image.shape[1], growth)\n"
    )
    # A fresh process, so the 100 MB of writing the file does not hide the reader's peak.
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    height, width, growth_mb = result.stdout.split()
    assert 256 <= int(height) == int(width) <= 4 * 256
    assert float(growth_mb) < 400


def truncate_png(path: Path) -> None:
    """Write a PNG of noise at ``path`` cut short after 150 bytes."""
    full = path.with_name(f"full-{path.name}")
    _save(full, np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), "L")
    path.write_bytes(full.read_bytes()[:150])
    full.unlink()


_BAD_FILES = {
    "truncated.png": truncate_png,
    "empty.png": lambda path: path.write_bytes(b""),
    "notes.png": lambda path: path.write_text("not an image\n"),
    "missing.png": lambda path: None,
}


@pytest.mark.parametrize("name", list(_BAD_FILES))
def test_unreadable_files_raise_image_read_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _BAD_FILES[name](path)
    with pytest.raises(ImageReadError, match=name) as info:
        read_image(path)
    assert isinstance(info.value, UserError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("height", "width"), [(100, 50), (50, 100), (64, 64), (3, 97)])
def test_resize_square_shapes(height: int, width: int) -> None:
    image = np.full((height, width), 200, np.uint8)
    padded, geo = resize_square(image, 32, "pad")
    stretched, _ = resize_square(image, 32, "stretch")
    assert padded.shape == stretched.shape == (32, 32)
    assert padded.dtype == np.uint8 and (stretched == 200).all()
    if height != width:
        assert (padded == 0).any()  # pad fills the short side with zeros
    assert geo.scale_x == pytest.approx(geo.scale_y, rel=0.1)


@pytest.mark.parametrize(
    ("height", "width", "size"), [(300, 180, 64), (180, 300, 64), (250, 250, 64), (1000, 90, 224), (90, 60, 224)]
)
def test_unsquare_puts_a_marker_back_in_place(height: int, width: int, size: int) -> None:
    image = np.zeros((height, width), np.uint8)
    top, left = height * 3 // 5, width // 4
    box_h, box_w = max(12, height // 6), max(12, width // 6)
    image[top : top + box_h, left : left + box_w] = 255
    square, geo = resize_square(image, size, "pad")
    back = unsquare(square, geo)
    assert back.shape == image.shape
    rows, cols = np.nonzero(back > 127)
    # Within one pixel of the model input (1 / scale original pixels when downscaling, else 1).
    tol_y, tol_x = max(1.0, 1 / geo.scale_y), max(1.0, 1 / geo.scale_x)
    assert abs(rows.min() - top) <= tol_y and abs(rows.max() - (top + box_h - 1)) <= tol_y
    assert abs(cols.min() - left) <= tol_x and abs(cols.max() - (left + box_w - 1)) <= tol_x


def test_unsquare_maps_a_float_heatmap_of_another_size(tmp_path: Path) -> None:
    image = np.zeros((120, 80), np.uint8)
    _, geo = resize_square(image, 224, "pad")
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[3, 3] = 1.0
    back = unsquare(heatmap, geo)
    assert back.shape == (120, 80) and back.dtype == np.float32
    row, col = np.unravel_index(np.argmax(back), back.shape)
    assert abs(row - 60) <= 10 and abs(col - 40) <= 10


@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_read_square_of_a_large_image_keeps_the_original_geometry(tmp_path: Path, mode: str) -> None:
    pixels = np.zeros((600, 1000), np.uint8)
    pixels[200:400, 300:700] = 255
    path = _save(tmp_path / "wide.png", pixels, "L")
    square, geo = read_square(path, 64, mode)  # decoded at a reduced size first
    direct, direct_geo = resize_square(pixels, 64, mode)
    assert geo == direct_geo and (geo.orig_height, geo.orig_width) == (600, 1000)
    assert square.shape == (64, 64) and np.abs(square.astype(int) - direct).mean() < 2
    assert unsquare(square, geo).shape == (600, 1000)


def test_unknown_resize_mode_is_a_user_error() -> None:
    with pytest.raises(UserError, match="crop"):
        resize_square(np.zeros((4, 4), np.uint8), 8, "crop")


# ------------------------------------------------------------------------------------------------ formats and caps
@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "WEBP", "PPM"])
def test_formats_outside_the_list_are_refused_alike_whatever_the_name(tmp_path: Path, fmt: str) -> None:
    assert IMAGE_FORMATS == ("PNG", "JPEG", "DICOM")
    path = tmp_path / "view.png"
    Image.new("L", (20, 10), 90).save(path, format=fmt)
    data = path.read_bytes()
    expected = f"{path}: not a PNG, JPEG or DICOM file"
    assert sniff_image(path) == expected  # data check, predict's pre-check
    for reader in (read_image, lambda p: read_square(p, 16), read_header):  # check --deep, cache, serve
        with pytest.raises(ImageReadError) as info:
            reader(path)
        assert str(info.value) == expected
    assert path.read_bytes() == data


def test_the_pixel_cap_is_read_from_the_header_and_applies_before_pillows_limit(tmp_path: Path) -> None:
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    path = tmp_path / "wide.png"
    Image.new("L", (20_000, 10), 0).save(path)  # few pixels, but a side above the cap
    with pytest.raises(ImageTooLarge, match=r"wide.png: image too large \(20000x10 pixels"):
        read_image(path)
    assert "image too large" in str(sniff_image(path))
    assert read_header(path, max_side=30_000).width == 20_000


def test_unreadable_paths_are_one_line_errors(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    cases = {
        loop: "loop.png: cannot read the file (Too many levels of symbolic links)",
        folder: "folder.png: cannot read the file (Is a directory)",
        tmp_path / "nul\x00.png": "nul\\x00.png: cannot read the file (embedded null byte)",
    }
    for path, message in cases.items():
        assert str(sniff_image(path)).endswith(message)
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert str(info.value).endswith(message) and "\n" not in str(info.value) and "\x00" not in str(info.value)
