"""DICOM radiographs with pydicom: detection by the ``DICM`` preamble, display-ready 8-bit gray, and writing.

Reading follows the DICOM display pipeline: the Modality LUT (or rescale), then the VOI LUT or the window
centre/width when the file has one, else the stored range (``BitsStored``) scaled to 0-255; MONOCHROME1 is
inverted so that bone is bright as in MONOCHROME2. Colour images (RGB, YBR, palette) become gray as RGB PNGs
do. Multi-frame files give their first frame.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from muratune.data.dicom_inflate import (
    DEFLATED_SYNTAX,
    MAX_HEADER_BYTES,
    InflateLimitExceeded,
    is_deflated,
    read_deflated_dataset,
    read_deflated_header,
    read_meta,
)
from muratune.errors import ImageReadError

DICOM_SUFFIX = ".dcm"
PREAMBLE_BYTES = 128
MAGIC = b"DICM"
HEAD_BYTES = PREAMBLE_BYTES + len(MAGIC)
# pydicom names a plugin's requirements by import name; pip knows some of them by another.
_PIP_NAMES = {"gdcm": "python-gdcm"}
# Computed Radiography Image Storage: the IOD of a plain radiograph.
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
# Uncompressed pixel data: implicit and explicit VR little endian, explicit big endian, and Deflated (whose dataset,
# once inflated, is explicit little endian).
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED_SYNTAX)


def is_dicom(head: bytes) -> bool:
    """True if ``head`` (a file's first bytes) has the DICOM Part 10 preamble: ``DICM`` at byte 128."""
    return head[PREAMBLE_BYTES:HEAD_BYTES] == MAGIC


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if the file starts like a DICOM Part 10 file (an unreadable file is not)."""
    try:
        with open(path, "rb") as handle:
            return is_dicom(handle.read(HEAD_BYTES))
    except OSError:
        return False


def read_dicom(
    path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a DICOM file's first frame as 2-D uint8 gray (reduced if far larger than ``max_side``).

    Args:
        path: the DICOM file.
        max_side: reduce while decoding when the image is more than twice this size (as for PNGs).
        max_pixels: refuse images with more pixels than this, from the header, before decoding.

    Returns:
        The image and the original (rows, columns), as ``images.read_square`` needs for its geometry.

    Raises:
        ImageReadError: not a DICOM image, too large (refused from its header, before decoding), compressed with
            a transfer syntax whose decoder is not installed (the message names the packages), or undecodable.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        header = _read_header(path)
        rows, columns = _dimensions(path, header, max_pixels)
        _check_decoder(path, header)
        source = _pixel_source(path, header, max_pixels)
        frame = pydicom.pixels.pixel_array(source, index=0)
        image = to_display_gray(frame, header)
    except ImageReadError:
        raise
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, NotImplementedError) as err:
        raise ImageReadError(f"{path}: cannot decode DICOM ({_first_line(err)})") from None
    except Exception as err:  # whatever a decoder raises (zlib.error, RuntimeError, ...) is one unreadable image
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({_first_line(err)})") from None
    if max_side and max(rows, columns) > 2 * max_side:
        factor = max(rows, columns) // max_side // 2 or 1
        image = np.asarray(Image.fromarray(image).reduce(factor))  # as images.py reduces a PNG: the same pixels
    return image, (rows, columns)


def read_dicom_size(source: str | os.PathLike | Any, name: str | None = None) -> tuple[int, int]:
    """Rows and columns of a DICOM file or stream from its header, without reading the pixel data.

    Raises:
        ImageReadError: not a readable DICOM image (the message names ``name``).
    """
    label = Path(name if name is not None else str(source))
    try:
        header = _read_header(source)
    except ImageReadError:
        raise
    except Exception as err:  # a corrupt or bombing header is one unreadable image, whatever pydicom raises
        raise ImageReadError(f"{label}: cannot read the DICOM header ({_first_line(err)})") from None
    finally:
        if not isinstance(source, str | os.PathLike):
            source.seek(0)
    return _dimensions(label, header, None)


def _read_header(source: str | os.PathLike | Any) -> Any:
    """The dataset before its Pixel Data, from a path or a stream; a Deflated one inflated only that far."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as handle:
            return _read_header(handle)
    import pydicom

    start = source.tell()
    meta = read_meta(source)
    if is_deflated(meta):
        return read_deflated_header(source, meta)
    source.seek(start)
    return pydicom.dcmread(source, stop_before_pixels=True)


def _pixel_source(path: Path, header: Any, max_pixels: int | None) -> Any:
    """What pydicom decodes the pixels from: the file, or a Deflated file's dataset inflated within its cap.

    Raises:
        ImageReadError: the Pixel Data's length disagrees with the header (uncompressed syntaxes), or a Deflated
            file inflates past what its header declares.
    """
    import pydicom
    from pydicom.dataelem import RawDataElement

    if is_deflated(header.file_meta):
        if max_pixels is not None and _frame_pixels(header) > max_pixels:
            raise ImageReadError(f"{path}: Deflated DICOM too large ({_frame_pixels(header)} pixels in all frames)")
        with open(path, "rb") as handle:
            try:
                dataset = read_deflated_dataset(handle, read_meta(handle), MAX_HEADER_BYTES + pixel_bytes(header))
            except InflateLimitExceeded as err:
                raise ImageReadError(f"{path}: Deflated DICOM refused: {err}") from None
        _check_pixel_length(path, header, len(dataset.get("PixelData") or b""))
        return dataset
    element = pydicom.dcmread(path, defer_size=1024).get_item("PixelData", keep_deferred=True)
    if element is not None and str(header.file_meta.get("TransferSyntaxUID")) in NATIVE_SYNTAXES:
        # a large value stays deferred (a RawDataElement that knows its length): the pixels are not read here
        length = element.length if isinstance(element, RawDataElement) else len(element.value or b"")
        _check_pixel_length(path, header, length)
    return path


def _frame_pixels(header: Any) -> int:
    return int(header.Rows) * int(header.Columns) * int(header.get("NumberOfFrames") or 1)


def pixel_bytes(header: Any) -> int:
    """Bytes of uncompressed Pixel Data the header declares: Rows x Columns x frames x samples x BitsAllocated / 8."""
    samples = int(header.get("SamplesPerPixel") or 1)
    if str(header.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
        samples = 2  # two chroma samples shared by each pair of pixels
    values = _frame_pixels(header) * samples
    bits = int(header.get("BitsAllocated") or 0)
    return (values + 7) // 8 if bits == 1 else values * (bits // 8)


def _check_pixel_length(path: Path, header: Any, length: int) -> None:
    """Refuse uncompressed Pixel Data whose length is not what the header declares (one pad byte allowed)."""
    expected = pixel_bytes(header)
    if length not in (expected, expected + expected % 2):
        raise ImageReadError(
            f"{path}: DICOM Pixel Data holds {length} bytes, but the header declares {expected} "
            f"(Rows x Columns x frames x SamplesPerPixel x BitsAllocated {header.get('BitsAllocated')} / 8)"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _dimensions(path: Path, header: Any, max_pixels: int | None) -> tuple[int, int]:
    """Rows and columns from the header, refusing images without pixels or too large before any decoding."""
    if "Rows" not in header or "Columns" not in header:
        raise ImageReadError(
            f"{path}: DICOM file has no image (no Rows/Columns; e.g. a report or a presentation state)"
        )
    rows, columns = int(header.Rows), int(header.Columns)
    if rows < 1 or columns < 1:
        raise ImageReadError(f"{path}: image has no pixels ({columns}x{rows})")
    if max_pixels is not None and rows * columns > max_pixels:
        raise ImageReadError(f"{path}: image too large ({columns}x{rows} pixels)")
    return rows, columns


def _check_decoder(path: Path, header: Any) -> None:
    """Refuse a transfer syntax pydicom cannot decode here, naming what to install."""
    from pydicom.pixels import get_decoder

    syntax = getattr(header, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None:
        raise ImageReadError(f"{path}: DICOM file has no Transfer Syntax UID in its file meta information")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(f"{path}: DICOM transfer syntax {syntax.name} ({syntax}) is not supported") from None
    if not decoder.is_available:
        raise ImageReadError(
            f"{path}: DICOM pixel data is compressed as {syntax.name} and no decoder for it is installed; "
            f"{install_hint(decoder.missing_dependencies)}"
        )


def install_hint(missing_dependencies: list[str]) -> str:
    """Turn pydicom's ``Decoder.missing_dependencies`` into pip commands, e.g. ``pip install python-gdcm``."""
    commands = []
    for text in missing_dependencies:  # "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        requirements = text.partition(" - requires ")[2]
        names = [re.split(r"[<>=!~ ]", req.strip())[0] for req in re.split(r",|\band\b", requirements)]
        names = [_PIP_NAMES.get(name, name) for name in names if name and name != "numpy"]
        if names:
            commands.append("pip install " + " ".join(names))
    return "install one of: " + " | ".join(commands) if commands else "no decoder plugin for it is known to pydicom"


def to_display_gray(frame: np.ndarray, ds: Any) -> np.ndarray:
    """One decoded frame as displayed: 2-D uint8 gray, bright bone (see the module docstring for the steps)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:  # RGB: pydicom has already converted YBR to RGB
        if frame.dtype != np.uint8:  # 16-bit samples: a palette's 16-bit entries, or BitsStored of RGB data
            bits = 16 if photometric == "PALETTE COLOR" else int(ds.BitsStored)
            frame = _scale(frame, 0.0, float(2**bits - 1))
        return np.asarray(Image.fromarray(np.ascontiguousarray(frame), "RGB").convert("L"), dtype=np.uint8)
    values = apply_modality_lut(frame, ds)
    low, high = _modality_range(ds)
    if ds.get("VOILUTSequence"):
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)  # a VOI LUT is indexed by integers
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        _widen_8_bit_voi_lut(ds)
        values = apply_voi_lut(values, ds, prefer_lut=True)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds)
        # pydicom's windowing output range: what lies far outside the window maps onto its ends.
        low, high = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds))
    gray = _scale(values, low, high)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _widen_8_bit_voi_lut(ds: Any) -> None:
    """Declare a VOI LUT of 8-bit entries as 16-bit (same values): pydicom 3.0 indexes an 8-bit LUT with uint8,
    which wraps every stored value above 255. The entries are 16-bit words in the file either way."""
    item = ds.VOILUTSequence[0]
    entries, first, depth = (int(v) for v in item.LUTDescriptor)
    if depth == 8 and (entries or 2**16) > 256:
        item.LUTDescriptor = [entries, first, 16]


def _modality_range(ds: Any) -> tuple[float, float]:
    """The stored range (``BitsStored``, signed or not) after the Modality LUT or rescale."""
    from pydicom.pixels import apply_modality_lut

    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
    else:
        stored = np.array([0, 2**bits - 1])
    mapped = apply_modality_lut(stored, ds).astype(np.float64)
    return float(mapped.min()), float(mapped.max())


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto 0-255 (rounded and clipped)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ writing
def encode_dicom(
    image: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: bool = True,
    study_uid: str | None = None,
    instance_uid: str | None = None,
    patient_id: str = "",
    body_part: str = "",
) -> bytes:
    """Encode a 2-D uint8 image as a CR DICOM file: 16 bits allocated, explicit VR little endian.

    The 8-bit values are spread over ``bits_stored`` bits (inverted for MONOCHROME1); with ``window`` the file
    carries a window centre/width that displays them exactly as the 8-bit original.

    Args:
        image: the 2-D uint8 gray image.
        photometric: ``MONOCHROME2`` (0 is black) or ``MONOCHROME1`` (0 is white).
        bits_stored: bits of each 16-bit sample that are used (8 to 16).
        window: write Window Center/Width covering the stored range.
        study_uid: the study's Study Instance UID (default: a new one); views of one study share it.
        instance_uid: the SOP Instance UID (default: a new one).
        patient_id: Patient ID.
        body_part: Body Part Examined (e.g. ``ELBOW``).
    """
    from pydicom.uid import generate_uid

    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} with shape {image.shape}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or not 8 <= bits_stored <= 16:
        raise ValueError(f"unsupported photometric {photometric!r} or bits_stored {bits_stored}")
    peak = 2**bits_stored - 1
    stored = np.rint(image.astype(np.float64) * (peak / 255.0)).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (peak - stored).astype(np.uint16)
    instance_uid = instance_uid or generate_uid()
    ds = _cr_dataset(instance_uid, study_uid or generate_uid(), patient_id, body_part)
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = (peak + 1) // 2, peak + 1
    ds.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _cr_dataset(instance_uid: str, study_uid: str, patient_id: str, body_part: str) -> Any:
    """The patient, study, series, equipment and SOP attributes of a minimal CR image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CR_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, instance_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", patient_id, "", ""
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "", "", ""
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CR", generate_uid(entropy_srcs=[study_uid, "series"]), 1
    ds.BodyPartExamined, ds.ViewPosition, ds.Manufacturer, ds.InstanceNumber = body_part, "", "", 1
    return ds
