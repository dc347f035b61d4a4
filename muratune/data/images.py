"""The one image opener: PNG, JPEG and DICOM radiographs as 8-bit gray, format and size checked from the header."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from muratune.errors import ImageReadError, UserError

RESIZE_MODES = ("pad", "stretch")
# The formats every stage accepts; anything else (BMP, TIFF, GIF, ...) is refused by all. Pillow opens the first two,
# pydicom the last (muratune.data.dicom), recognised by its "DICM" preamble whatever the file's name.
PILLOW_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
IMAGE_FORMATS: tuple[str, ...] = (*PILLOW_FORMATS, "DICOM")
# Refuse images above this many pixels or this long a side, read from the header before decoding. The pixel cap sits
# below Pillow's own bomb limit (Image.MAX_IMAGE_PIXELS), so it is this cap that applies, with this message.
MAX_PIXELS = 40_000_000
MAX_SIDE = 16_384


class ImageTooLarge(ImageReadError):
    """An image whose header declares more pixels (or a longer side) than allowed."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding its pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


def format_refusal() -> str:
    """The one reason given for a file in a format no stage accepts (the same in check, cache, predict, serve)."""
    return f"not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} file"


def check_size(header: ImageHeader, name: str, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> None:
    """Refuse an image whose header declares no pixels, more than ``max_pixels`` or a side above ``max_side``.

    Raises:
        ImageTooLarge: above a cap (the message names ``name``, the size and the cap).
        ImageReadError: zero pixels.
    """
    width, height = header.width, header.height
    if width < 1 or height < 1:
        raise ImageReadError(f"{name}: image has no pixels ({width}x{height})")
    if header.pixels > max_pixels or max(width, height) > max_side:
        raise ImageTooLarge(
            f"{name}: image too large ({width}x{height} pixels; the limit is {max_pixels / 1e6:g} megapixels "
            f"and {max_side} pixels a side)"
        )


def _printable(name: str) -> str:
    """A file name fit for a one-line message (control characters such as NUL escaped)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _oserror_reason(err: OSError | ValueError) -> str:
    """A one-line reason for an OS-level failure to read a file (symlink loop, permission, NUL byte in the name)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def bad_images_error(reasons: list[str], consequence: str = "to exclude them") -> UserError:
    """The one error for unreadable images: the first one's ``path: reason``, how many more, and the way out.

    Args:
        reasons: one ``[file:row: ]path: reason`` per unreadable image.
        consequence: what ``--skip-bad-images`` does in this command, e.g. ``to exclude them``.
    """
    more = f" (+{len(reasons) - 1} more unreadable)" if len(reasons) > 1 else ""
    return UserError(f"{reasons[0]}{more}; fix the files or pass --skip-bad-images {consequence}")


def _to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to a 2-D uint8 array, scaling high bit depths by their actual bit depth."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _uint16_to_uint8(np.asarray(img))
    if mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo = min(float(arr.min()), 0.0)
        arr = arr - lo
        peak = float(arr.max())
        if peak <= 0:
            return np.zeros(arr.shape, dtype=np.uint8)
        # Scale by the bit depth the data actually uses (8..16 bits, e.g. 12-bit radiographs in 16-bit PNGs),
        # so a 12-bit image is not rendered nearly black, and contrast between images is kept.
        return np.clip(np.rint(arr * (255.0 / (2 ** _bits(peak) - 1))), 0, 255).astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA"):
        # Composite over black: radiograph backgrounds are dark.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _bits(peak: float) -> int:
    """The bit depth the data actually uses (8..16 bits for 16-bit data, e.g. 12-bit radiographs)."""
    return min(max(8, math.ceil(math.log2(peak + 1))), 16) if peak < 65536 else math.ceil(math.log2(peak + 1))


def _uint16_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit data by its bit depth through a lookup table: 1 byte per pixel, not 8 for a float copy."""
    peak = int(arr.max()) if arr.size else 0
    if peak <= 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    table = np.clip(np.rint(np.arange(65536, dtype=np.float64) * (255.0 / (2 ** _bits(peak) - 1))), 0, 255)
    return table.astype(np.uint8)[arr.astype(np.uint16, copy=False)]


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """Shrink ``img`` by an integer factor (box average), in the modes PIL's ``reduce`` does not support too."""
    if img.mode == "1":
        img = img.convert("L")
    if img.mode.startswith("I;16"):
        # PIL cannot reduce 16-bit images; average in uint16 with OpenCV and keep the bit depth for scaling.
        arr = np.asarray(img)
        small = cv2.resize(
            arr, (max(1, arr.shape[1] // factor), max(1, arr.shape[0] // factor)), interpolation=cv2.INTER_AREA
        )
        return Image.fromarray(small)
    if img.mode == "P":
        return img  # palette indices cannot be averaged; converted at full size
    return img.reduce(factor)


# A PNG ends with its IEND chunk; look for it this far from the end, so that a little trailing data is tolerated.
_PNG_TAIL = 4096


def open_image(source: str | os.PathLike | BinaryIO, name: str | None = None) -> Image.Image:
    """Open an image lazily (header only) in one of ``IMAGE_FORMATS``; the caller closes it.

    Pillow's DecompressionBombWarning stays active; its DecompressionBombError is reported as too large.

    Raises:
        ImageReadError: missing, empty, unreadable (symlink loop, permission, NUL byte) or not an accepted format.
    """
    label = _printable(name if name is not None else str(source))
    try:
        if isinstance(source, str | os.PathLike) and os.stat(source).st_size == 0:
            raise ImageReadError(f"{label}: empty file (0 bytes)")
        return Image.open(source, formats=PILLOW_FORMATS)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        empty = not isinstance(source, str | os.PathLike) and source.seek(0, os.SEEK_END) == 0
        raise ImageReadError(f"{label}: {'empty file (0 bytes)' if empty else format_refusal()}") from None
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{label}: image too large ({str(err).split(' pixels')[0]} pixels)") from None
    except (OSError, ValueError) as err:
        raise ImageReadError(f"{label}: cannot read the file ({_oserror_reason(err)})") from None


def read_header(
    source: str | os.PathLike | BinaryIO,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
) -> ImageHeader:
    """Format and size from the header, checked against the caps, without decoding the pixels.

    Raises:
        ImageReadError: see ``open_image``; ``ImageTooLarge`` above the caps.
    """
    label = _printable(name if name is not None else str(source))
    if _is_dicom(source):
        from muratune.data.dicom import read_dicom_size

        rows, columns = read_dicom_size(source, label)
        header = ImageHeader("DICOM", columns, rows)
    else:
        with open_image(source, label) as img:
            header = ImageHeader(str(img.format), *img.size)
    check_size(header, label, max_pixels, max_side)
    return header


def _is_dicom(source: str | os.PathLike | BinaryIO) -> bool:
    """Whether a file or stream starts with DICOM's preamble (``DICM`` at byte 128); the stream is rewound."""
    from muratune.data.dicom import HEAD_BYTES, is_dicom

    try:
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as handle:
                return is_dicom(handle.read(HEAD_BYTES))
        start = source.tell()
        head = source.read(HEAD_BYTES)
        source.seek(start)
        return is_dicom(head)
    except (OSError, ValueError):
        return False


def sniff_image(path: str | os.PathLike) -> str | None:
    """Cheaply check an image file without decoding it; return None if it looks fine, else ``path: reason``.

    Reads the header (format and size, as every stage checks them) and the last bytes: finds missing and empty
    files, files in a format no stage accepts (a BMP or a text file named ``.png``), images above the size caps and
    PNGs cut short (no IEND chunk at the end). A file that passes can still fail to decode.
    """
    try:
        header = read_header(path)
        if header.format == "PNG":
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _PNG_TAIL))
                if b"IEND" not in handle.read():
                    return f"{path}: truncated PNG (no IEND chunk at the end)"
    except ImageReadError as err:
        return str(err)
    except (OSError, ValueError) as err:
        return f"{_printable(str(path))}: cannot read the file ({_oserror_reason(err)})"
    return None


def read_image(path: str | os.PathLike, max_side: int | None = None) -> np.ndarray:
    """Read an image file as a 2-D uint8 grayscale array.

    Handles 8-bit and 16-bit grayscale, RGB, RGBA, palette and 1-bit PNGs, JPEGs, and DICOM files (by their
    ``DICM`` preamble, whatever their name; see ``muratune.data.dicom`` for the display pipeline).

    Args:
        path: the image file.
        max_side: if given, images more than twice this size are first reduced by an integer factor while
            decoding, so that very large images never need full-resolution float copies in memory.

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, or too large.
    """
    return _decode(Path(path), max_side)[0]


def read_square(path: str | os.PathLike, size: int, mode: str = "pad") -> tuple[np.ndarray, Geometry]:
    """Read an image file straight into a ``size x size`` uint8 square, as the cache stores it.

    Large images are reduced while decoding (see ``read_image``), but the geometry is that of the original
    file, so ``unsquare`` maps results back onto the original pixels. Images up to twice ``size`` give exactly
    ``resize_square(read_image(path), size, mode)``.

    Raises:
        ImageReadError: the file cannot be read.
    """
    image, (orig_height, orig_width) = _decode(Path(path), size)
    geo = square_geometry(orig_height, orig_width, size, mode)
    return _place(image, geo), geo


def _decode(path: Path, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` (reduced if far larger than ``max_side``); return it and the original (height, width)."""
    if _is_dicom(path):
        from muratune.data.dicom import read_dicom

        read_header(path)  # the same caps as every format, from the header
        return read_dicom(path, max_side, MAX_PIXELS)
    with open_image(path) as img:
        check_size(ImageHeader(str(img.format), *img.size), str(path))
        try:
            return _load(img, max_side)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ImageReadError(f"{path}: cannot decode image ({reason})") from None


def _load(img: Image.Image, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an opened, size-checked image (reduced if far larger than ``max_side``)."""
    width, height = img.size
    if max_side and img.format == "JPEG":
        img.draft("L", (max_side, max_side))
    img.load()
    if max_side and max(img.size) > 2 * max_side:
        img = _reduce(img, max(img.size) // max_side // 2 or 1)
    return _to_uint8_gray(img), (height, width)


@dataclass(frozen=True)
class Geometry:
    """How an original image maps onto the square model input: ``input = original * scale + (pad_x, pad_y)``."""

    orig_height: int
    orig_width: int
    size: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict."""
        return asdict(self)


def square_geometry(height: int, width: int, size: int, mode: str = "pad") -> Geometry:
    """Compute the geometry that maps a ``height x width`` image onto a ``size x size`` square."""
    if mode == "stretch":
        return Geometry(height, width, size, size / width, size / height, 0, 0)
    if mode != "pad":
        raise UserError(f"resize mode {mode!r} is unknown; choose one of {', '.join(RESIZE_MODES)}")
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return Geometry(height, width, size, new_w / width, new_h / height, (size - new_w) // 2, (size - new_h) // 2)


def resize_square(image: np.ndarray, size: int, mode: str = "pad") -> tuple[np.ndarray, Geometry]:
    """Resize a 2-D uint8 image to ``size x size``, keeping the aspect ratio and padding with 0 (``pad``) or not.

    Returns:
        The square image and the geometry needed to map results back to the original pixels.
    """
    height, width = image.shape[:2]
    geo = square_geometry(height, width, size, mode)
    return _place(image, geo), geo


def _place(image: np.ndarray, geo: Geometry) -> np.ndarray:
    """Resize ``image`` (the original or a reduced copy of it) to the geometry's box and pad it to the square."""
    height, width = image.shape[:2]
    new_w, new_h = round(geo.orig_width * geo.scale_x), round(geo.orig_height * geo.scale_y)
    interp = cv2.INTER_AREA if new_w < width or new_h < height else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    if (new_w, new_h) == (geo.size, geo.size):
        return resized
    out = np.zeros((geo.size, geo.size), dtype=np.uint8)
    out[geo.pad_y : geo.pad_y + new_h, geo.pad_x : geo.pad_x + new_w] = resized
    return out


def unsquare(array: np.ndarray, geo: Geometry, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Map a ``size x size`` array (e.g. a heatmap) back onto the original image's pixels, undoing padding."""
    if array.shape[0] != geo.size:
        array = cv2.resize(array, (geo.size, geo.size), interpolation=interpolation)
    new_w, new_h = round(geo.orig_width * geo.scale_x), round(geo.orig_height * geo.scale_y)
    crop = array[geo.pad_y : geo.pad_y + new_h, geo.pad_x : geo.pad_x + new_w]
    return cv2.resize(crop, (geo.orig_width, geo.orig_height), interpolation=interpolation)
