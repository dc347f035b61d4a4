"""DICOM reading: MONOCHROME1/2, 12 bits in 16, windowing, VOI LUT, RGB, multi-frame, header limits, decoders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from muratune.cli import main
from muratune.data.dicom import encode_dicom, install_hint, is_dicom_file
from muratune.data.images import ImageReadError, read_image, read_square, sniff_image
from muratune.data.index import load_index


def _ramp(height: int = 40, width: int = 60) -> np.ndarray:
    values = np.arange(height * width, dtype=np.int64).reshape(height, width)
    return (values * 255 // values.max()).astype(np.uint8)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _edit(path: Path, **elements: object) -> Path:
    """Set elements of a written DICOM file (``None`` deletes one) and save it again."""
    ds = pydicom.dcmread(path)
    for keyword, value in elements.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("window", [True, False], ids=["window", "stored-range"])
def test_12_bit_monochrome_reads_back_as_the_8_bit_original(tmp_path, photometric, window):
    image = _ramp()
    path = _write(tmp_path / "x.dcm", encode_dicom(image, photometric=photometric, window=window))
    stored = pydicom.dcmread(path).pixel_array
    assert stored.dtype == np.uint16 and stored.max() == 4095  # 12 bits stored in 16 allocated
    if photometric == "MONOCHROME1":
        assert stored[0, 0] == 4095  # black stored as the highest value: inverted on reading
    np.testing.assert_array_equal(read_image(path), image)


def test_monochrome1_is_the_inverse_of_monochrome2_for_the_same_stored_values(tmp_path):
    image = _ramp()
    mono2 = _write(tmp_path / "m2.dcm", encode_dicom(image, window=False))
    mono1 = _write(tmp_path / "m1.dcm", mono2.read_bytes())
    _edit(mono1, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_array_equal(read_image(mono1), 255 - read_image(mono2))


def test_window_centre_and_width_clip_and_stretch(tmp_path):
    image = _ramp()
    path = _write(tmp_path / "w.dcm", encode_dicom(image, window=False))
    centre, width = 1500, 1001
    _edit(path, WindowCenter=centre, WindowWidth=width)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), output 0..255.
    expected = ((stored - (centre - 0.5)) / (width - 1) + 0.5) * 255
    expected = np.clip(np.rint(expected), 0, 255)
    out = read_image(path)
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert (out[stored <= centre - 0.5 - (width - 1) / 2] == 0).all()
    assert (out[stored > centre - 0.5 + (width - 1) / 2] == 255).all()
    assert 0 < np.mean((out > 0) & (out < 255)) < 0.5  # only the window's stretch of values is graded


def test_rescale_then_window_in_rescaled_units(tmp_path):
    path = _write(tmp_path / "r.dcm", encode_dicom(_ramp(), window=False))
    _edit(path, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3095, WindowWidth=8192)
    np.testing.assert_array_equal(read_image(path), _ramp())  # the window spans the whole rescaled range


def test_a_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    path = _write(tmp_path / "lut.dcm", encode_dicom(_ramp()))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = [min(255, v // 8) for v in range(4096)]  # saturates at stored 2040
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = [item]
    ds["VOILUTSequence"].value[0]["LUTData"].VR = "US"
    ds.save_as(path, enforce_file_format=True)
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(read_image(path), np.minimum(255, stored // 8).astype(np.uint8))


def test_rgb_dicom_is_converted_like_an_rgb_png(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "x.png")
    path = _write(tmp_path / "x.dcm", encode_dicom(_ramp(30, 20)))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_image(path), read_image(tmp_path / "x.png"))


def test_multi_frame_gives_the_first_frame(tmp_path):
    first, second = _ramp(), 255 - _ramp()
    path = _write(tmp_path / "mf.dcm", encode_dicom(first, window=False))
    two = np.rint(np.stack([first, second]) * (4095 / 255))
    _edit(path, NumberOfFrames=2, PixelData=two.astype("<u2").tobytes())
    np.testing.assert_array_equal(read_image(path), first)


def test_large_dicom_is_reduced_while_decoding_with_the_original_geometry(tmp_path):
    image = np.kron(_ramp(50, 40), np.ones((8, 8), np.uint8))  # 400 x 320
    path = _write(tmp_path / "big.dcm", encode_dicom(image))
    square, geo = read_square(path, 64)
    assert (geo.orig_height, geo.orig_width) == (400, 320)
    Image.fromarray(image).save(tmp_path / "big.png")
    reduced = read_image(path, max_side=64)
    assert reduced.shape == read_image(tmp_path / "big.png", max_side=64).shape == (134, 107)  # like PNGs: 1/3
    assert square.shape == (64, 64)
    np.testing.assert_array_equal(square, read_square(tmp_path / "big.png", 64)[0])


def test_header_dimensions_beyond_the_limit_are_refused_before_decoding(tmp_path):
    path = _write(tmp_path / "huge.dcm", encode_dicom(_ramp(4, 4)))
    _edit(path, Rows=65535, Columns=65535)  # the pixel data stays 32 bytes: decoding would fail otherwise
    with pytest.raises(ImageReadError, match=r"huge\.dcm: image too large \(65535x65535 pixels; the limit is"):
        read_image(path)


def test_dicom_without_an_image_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "sr.dcm", encode_dicom(_ramp(4, 4)))
    _edit(path, Rows=None, Columns=None, PixelData=None)
    with pytest.raises(ImageReadError, match="no image"):
        read_image(path)


def _jpeg_lossless(path: Path) -> Path:
    ds = pydicom.dcmread(_write(path, encode_dicom(_ramp(8, 8))))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(60) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.skipif(get_decoder(JPEGLosslessSV1).is_available, reason="a JPEG Lossless decoder is installed")
def test_compressed_dicom_without_its_decoder_names_the_packages_to_install(tmp_path, capsys):
    path = _jpeg_lossless(tmp_path / "jpeg.dcm")
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "JPEG Lossless" in message
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message and "python-gdcm" in message
    assert sniff_image(path) is None  # the cheap check passes; decoding is what fails


def test_install_hint_turns_pydicom_requirements_into_pip_commands():
    hint = install_hint(["gdcm - requires gdcm>=3.0.10", "pyjpegls - requires numpy and pyjpegls>=1.2"])
    assert hint == "install one of: pip install python-gdcm | pip install pyjpegls"


def test_a_dicom_named_png_and_a_png_named_dcm_are_read_by_content(tmp_path):
    image = _ramp()
    as_png = _write(tmp_path / "a.png", encode_dicom(image))
    Image.fromarray(image).save(buffer := io.BytesIO(), format="PNG")
    as_dcm = _write(tmp_path / "b.dcm", buffer.getvalue())
    assert is_dicom_file(as_png) and not is_dicom_file(as_dcm)
    np.testing.assert_array_equal(read_image(as_png), read_image(as_dcm))


def test_text_named_dcm_is_refused_by_the_sniffer(tmp_path):
    path = _write(tmp_path / "notes.dcm", b"not a dicom file at all" * 10)
    assert "not a PNG, JPEG or DICOM file" in (sniff_image(path) or "")
    with pytest.raises(ImageReadError, match="notes.dcm"):
        read_image(path)


def test_synth_dicom_dataset_indexes_checks_and_matches_the_png_one(tmp_path, capsys):
    args = ["data", "synth", "--studies", "14", "--size", "96", "--workers", "1", "--seed", "3"]
    for fmt in ("png", "dicom"):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, str(tmp_path / fmt), "--format", fmt])
        assert exit_info.value.code in (0, None)
    dicom_root, png_root = tmp_path / "dicom" / "MURA-v1.1", tmp_path / "png" / "MURA-v1.1"
    index = load_index(tmp_path / "dicom")
    assert len(index) and index["image_path"].str.endswith(".dcm").all()
    for image_path in index["image_path"]:
        ds = pydicom.dcmread(tmp_path / "dicom" / image_path)
        assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored) == ("MONOCHROME2", 16, 12)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and "WindowCenter" in ds
        png = tmp_path / "png" / image_path.replace(".dcm", ".png")
        np.testing.assert_array_equal(read_image(tmp_path / "dicom" / image_path), read_image(png))
    boxes = (dicom_root / "boxes.csv").read_text()
    assert boxes == (png_root / "boxes.csv").read_text().replace(".png,", ".dcm,") and ".dcm," in boxes
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "dicom"), "--deep"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert "OK: no problems" in capsys.readouterr().out
