"""Deflated DICOM: decoded within a cap, a bomb refused fast in bounded memory, a corrupt stream one bad image."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from muratune.data.dicom import encode_dicom
from muratune.data.dicom_inflate import MAX_HEADER_BYTES, read_meta
from muratune.data.images import ImageReadError, read_header, read_image, sniff_image
from tests.helpers.mura import make_mura
from tests.test_bad_data import _single_view_train_image, assert_one_line_error, make_ensemble, run

REPO = Path(__file__).resolve().parents[1]
BOMB_BYTES = 400 * 1024 * 1024  # inflated Pixel Data of the bomb; its file is about 0.4 MB
_PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW, explicit VR little endian


def _ramp(height: int = 40, width: int = 60) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) * 255 // (height * width - 1)).astype(np.uint8)


def deflated_dicom(image: np.ndarray, pixel_bytes: int | None = None, corrupt_pixels: bool = False) -> bytes:
    """``image`` as a Deflated Explicit VR Little Endian DICOM file, written by zlib.

    Args:
        image: the 2-D uint8 image (its header is kept).
        pixel_bytes: write this many zero bytes of Pixel Data instead of the image's (a bomb when large).
        corrupt_pixels: end the stream inside the Pixel Data with a block of the reserved type 3 (the header still
            inflates; the pixels give zlib's "invalid block type").
    """
    ds = pydicom.dcmread(io.BytesIO(encode_dicom(image)))
    pixels = ds.PixelData
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    written = io.BytesIO()
    ds.save_as(written, enforce_file_format=True)
    stream = io.BytesIO(written.getvalue())
    read_meta(stream)
    meta_end = stream.tell()
    header = zlib.decompress(written.getvalue()[meta_end:], -zlib.MAX_WBITS)
    size = len(pixels) if pixel_bytes is None else pixel_bytes
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(header + _PIXEL_DATA_OW + struct.pack("<I", size))]
    if corrupt_pixels:
        parts += [packer.flush(zlib.Z_SYNC_FLUSH), b"\x07" + pixels[:64]]  # BFINAL 1, BTYPE 11
    elif pixel_bytes is None:
        parts.append(packer.compress(pixels))
    else:
        zeros = bytes(1 << 20)
        parts += [packer.compress(zeros) for _ in range(size >> 20)]
    if not corrupt_pixels:
        parts.append(packer.flush())
    return written.getvalue()[:meta_end] + b"".join(parts)


def test_a_valid_deflated_dicom_reads_like_its_explicit_original(tmp_path):
    image = _ramp()
    deflated = tmp_path / "d.dcm"
    deflated.write_bytes(deflated_dicom(image))
    assert pydicom.dcmread(deflated).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert sniff_image(deflated) is None
    assert (read_header(deflated).width, read_header(deflated).height) == (60, 40)
    np.testing.assert_array_equal(read_image(deflated), image)


def test_a_deflate_bomb_is_refused_fast_without_inflating_it(tmp_path):
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflated_dicom(np.zeros((64, 64), np.uint8), pixel_bytes=BOMB_BYTES))
    assert bomb.stat().st_size < 1024 * 1024
    start = time.perf_counter()
    assert sniff_image(bomb) is None  # the header is small and fine: the check reads no further
    with pytest.raises(ImageReadError, match=r"bomb\.dcm: Deflated DICOM refused: it inflates past the 4\.0 MB"):
        read_image(bomb)
    assert time.perf_counter() - start < 1.0


def test_a_deflate_bomb_costs_bounded_memory(tmp_path):
    """Peak RSS of a fresh process that checks and reads the bomb, against the same process before it does."""
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflated_dicom(np.zeros((64, 64), np.uint8), pixel_bytes=BOMB_BYTES))
    script = f"""
import resource
from muratune.data.images import ImageReadError, read_image, sniff_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sniff_image({str(bomb)!r})
try:
    read_image({str(bomb)!r})
except ImageReadError:
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    growth_mb = int(done.stdout.split()[-1])
    assert growth_mb < 4 * MAX_HEADER_BYTES // (1024 * 1024), f"peak RSS grew by {growth_mb} MB"


def test_a_header_that_inflates_past_its_cap_is_refused(tmp_path):
    ds = pydicom.dcmread(io.BytesIO(encode_dicom(_ramp(4, 4))))
    ds.add_new(0x00091010, "OB", bytes(MAX_HEADER_BYTES + 1024))  # a private element before the Pixel Data
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "fat.dcm"
    ds.save_as(path, enforce_file_format=True)
    reason = sniff_image(path) or ""
    assert reason.startswith(f"{path}: cannot read the DICOM header (its header inflates past 4.0 MB")


def test_a_corrupt_deflate_stream_is_one_unreadable_image(tmp_path):
    path = tmp_path / "bad.dcm"
    path.write_bytes(deflated_dicom(_ramp(), corrupt_pixels=True))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    message = str(err.value)  # zlib loses what the failing call inflated, so the header check may be what fails
    assert message.startswith(f"{path}: cannot ") and "\n" not in message
    assert message.endswith("(Error -3 while decompressing data: invalid block type)")
    whole = deflated_dicom(_ramp())
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: len(whole) - 100])  # the stream stops inside the Pixel Data
    with pytest.raises(
        ImageReadError, match=r"cut\.dcm: cannot decode DICOM pixel data \(the Deflate stream is cut short"
    ):
        read_image(cut)


def test_bits_allocated_that_disagrees_with_the_pixel_data_is_refused(tmp_path):
    ds = pydicom.dcmread(io.BytesIO(encode_dicom(_ramp())))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # the Pixel Data is still 16 bits a pixel
    path = tmp_path / "bits.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: DICOM Pixel Data holds 4800 bytes")
    assert "declares 2400" in message and "BitsAllocated 8" in message
    odd = pydicom.dcmread(io.BytesIO(encode_dicom(_ramp(3, 5))))  # 15 bytes at 8 bits, padded to 16: accepted
    odd.BitsAllocated, odd.BitsStored, odd.HighBit = 8, 8, 7
    odd.PixelData = bytes(range(15)) + b"\x00"
    odd.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    assert read_image(tmp_path / "odd.dcm").shape == (3, 5)


# ------------------------------------------------------------------------------------------------ the CLI stages
def _dataset_with(tmp_path: Path, data: bytes) -> tuple[str, str, str]:
    """A tiny MURA dataset whose one single-view train image is replaced by ``data``: (root, image, study)."""
    fixture = make_mura(tmp_path / "data")
    image, study = _single_view_train_image(fixture)
    (fixture.base / image).write_bytes(data)
    return str(fixture.base), image, study


def _cache(root: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["data", "cache", root, "--size", "16", "--cache-dir", str(tmp_path / "cache"), "--workers", "1", *extra]


def test_every_stage_refuses_a_deflate_bomb_in_one_line(tmp_path, capsys):
    root, image, _ = _dataset_with(tmp_path, deflated_dicom(np.zeros((64, 64), np.uint8), pixel_bytes=BOMB_BYTES))
    code, _, err = run(["data", "check", root, "--deep"], capsys)
    assert code == 2 and "Traceback" not in err
    assert any(image in line and "Deflated DICOM refused" in line for line in err.splitlines()), err
    code, _, err = run(_cache(root, tmp_path), capsys)
    assert code == 2
    assert_one_line_error(err, [image, "Deflated DICOM refused", "--skip-bad-images"])
    code, _, err = run(_cache(root, tmp_path, "--skip-bad-images"), capsys)
    assert code == 0 and err.strip().startswith("excluded: ") and image in err
    ensemble = make_ensemble(tmp_path / "ensemble")
    images_csv = Path(root) / "MURA-v1.1" / "train_image_paths.csv"
    code, _, err = run(["predict", str(ensemble), str(images_csv), str(tmp_path / "out.csv")], capsys)
    assert code == 2
    assert_one_line_error(err, [image, "Deflated DICOM refused", "--skip-bad-images"])


def test_every_stage_turns_a_corrupt_deflate_stream_into_one_bad_image(tmp_path, capsys):
    root, image, study = _dataset_with(tmp_path, deflated_dicom(_ramp(), corrupt_pixels=True))
    code, _, err = run(["data", "check", root, "--deep"], capsys)
    assert code == 2 and "Traceback" not in err
    assert any(image in line and "invalid block type" in line for line in err.splitlines()), err
    code, _, err = run(_cache(root, tmp_path), capsys)
    assert code == 2
    assert_one_line_error(err, [image, "invalid block type", "--skip-bad-images"])
    assert run(_cache(root, tmp_path, "--skip-bad-images"), capsys)[0] == 0
    ensemble = make_ensemble(tmp_path / "ensemble")
    images_csv = Path(root) / "MURA-v1.1" / "train_image_paths.csv"
    out = tmp_path / "out.csv"
    code, _, err = run(["predict", str(ensemble), str(images_csv), str(out)], capsys)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, [image, "invalid block type", "--skip-bad-images"])
    code, _, err = run(["predict", str(ensemble), str(images_csv), str(out), "--skip-bad-images"], capsys)
    assert code == 0 and out.exists() and study not in out.read_text()
    code, _, err = run(["cam", str(ensemble), "--out", str(tmp_path / "cams"), "--csv", str(images_csv)], capsys)
    assert code == 0 and "Traceback" not in err, err
    [warning] = [line for line in err.splitlines() if line.startswith("muratune: warning: unreadable image:")]
    assert image in warning and "invalid block type" in warning
