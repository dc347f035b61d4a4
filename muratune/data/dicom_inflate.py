"""Deflated DICOM (transfer syntax 1.2.840.10008.1.2.1.99) inflated in steps, never past a cap, so it is no bomb."""

from __future__ import annotations

import io
import zlib
from typing import Any, BinaryIO

DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
# Inflated bytes allowed before the Pixel Data element: far more than any radiograph's header needs.
MAX_HEADER_BYTES = 4 * 1024 * 1024
_CHUNK = 256 * 1024
_PIXEL_DATA_TAG = 0x7FE00010


class InflateLimitExceeded(ValueError):
    """The dataset inflates to more bytes than its cap."""


class Inflater:
    """A raw Deflate stream read from ``handle`` and inflated on demand, at most ``size`` bytes at a time."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""
        self.data = bytearray()
        self.ended = False

    def fill(self, size: int) -> bool:
        """Inflate until ``size`` bytes are out or the stream ends; return whether it ended.

        Raises:
            zlib.error: the stream is corrupt, or cut short.
        """
        while len(self.data) < size and not self.ended:
            if not self._pending:
                self._pending = self._handle.read(_CHUNK)
                if not self._pending:
                    raise zlib.error("the Deflate stream is cut short")
            self.data += self._inflate.decompress(self._pending, size - len(self.data))
            self._pending = self._inflate.unconsumed_tail
            self.ended = self._inflate.eof
        return self.ended


def is_deflated(meta: Any) -> bool:
    """Whether the file meta information names the Deflated Explicit VR Little Endian transfer syntax."""
    return str(meta.get("TransferSyntaxUID", "")) == DEFLATED_SYNTAX


def read_meta(handle: BinaryIO) -> Any:
    """The file meta information of a DICOM Part 10 stream; ``handle`` is left at the dataset's first byte."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    read_preamble(handle, False)
    return _read_file_meta_info(handle)


def read_deflated_header(handle: BinaryIO, meta: Any) -> Any:
    """The dataset up to its Pixel Data, inflating at most ``MAX_HEADER_BYTES``; ``handle`` is after the meta.

    Inflates a little at a time and stops at the Pixel Data, so damage inside the pixels is left to decoding.

    Raises:
        InflateLimitExceeded: the elements before the Pixel Data inflate past ``MAX_HEADER_BYTES``.
        zlib.error: the Deflate stream is corrupt (or cut short) before the Pixel Data.
    """
    inflater, size = Inflater(handle), _CHUNK
    while True:
        failure = _fill(inflater, size)
        try:
            header, reached = _parse(bytes(inflater.data), meta, stop_at_pixels=True)
        except Exception:
            if failure is None and size < MAX_HEADER_BYTES and not inflater.ended:  # an element cut by the step
                size = min(4 * size, MAX_HEADER_BYTES)
                continue
            raise failure or InflateLimitExceeded(f"its header does not parse within {_mb(size)}") from None
        if reached or inflater.ended:
            return header
        if failure is not None:
            raise failure
        if size >= MAX_HEADER_BYTES:
            raise InflateLimitExceeded(f"its header inflates past {_mb(MAX_HEADER_BYTES)}")
        size = min(4 * size, MAX_HEADER_BYTES)


def _fill(inflater: Inflater, size: int) -> zlib.error | None:
    """``inflater.fill(size)``, returning a corrupt stream's error instead of raising it."""
    try:
        inflater.fill(size)
    except zlib.error as err:
        return err
    return None


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def read_deflated_dataset(handle: BinaryIO, meta: Any, max_bytes: int) -> Any:
    """The whole dataset, inflated to at most ``max_bytes``, as Explicit VR Little Endian (pixel data native).

    Raises:
        InflateLimitExceeded: the dataset inflates past ``max_bytes``.
        zlib.error: the Deflate stream is corrupt.
    """
    inflater = Inflater(handle)
    if not inflater.fill(max_bytes + 1) or len(inflater.data) > max_bytes:
        raise InflateLimitExceeded(f"it inflates past the {_mb(max_bytes)} its header allows")
    return _parse(bytes(inflater.data), meta, stop_at_pixels=False)[0]


def _parse(data: bytes, meta: Any, stop_at_pixels: bool) -> tuple[Any, bool]:
    """Parse inflated Explicit VR Little Endian bytes; return the dataset and whether the Pixel Data was reached.

    The whole dataset is given plain meta (Explicit VR Little Endian), so pydicom decodes its pixels as they are;
    a header keeps the file's own meta, naming the Deflated syntax.
    """
    from pydicom.filereader import read_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    reached = False

    def at_pixel_data(tag: Any, vr: Any, length: int) -> bool:
        nonlocal reached
        reached = reached or int(tag) == _PIXEL_DATA_TAG
        return stop_at_pixels and reached

    dataset = read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True, stop_when=at_pixel_data)
    if stop_at_pixels:
        dataset.file_meta = meta
    else:
        plain = type(meta)(meta)
        plain.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = plain
    return dataset, reached or _PIXEL_DATA_TAG in dataset
