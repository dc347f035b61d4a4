"""Files for tests to compare and to feed: a digest of a file tree, and a decompression-bomb PNG."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path


def _entry_digest(path: Path) -> str:
    """A file's SHA-256; a symlink's link text, then its target's SHA-256 when it resolves to a file."""
    if not path.is_symlink():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    target = "-> " + os.readlink(path)
    return f"{target} {hashlib.sha256(path.read_bytes()).hexdigest()}" if path.is_file() else target


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path``, or ``path`` itself when not a folder (relative path -> digest).

    Equal digests mean byte-identical trees; a symlink counts by its link text too, so a symlink loop (which no
    open reads) is compared as well. A path that does not exist has the empty digest.
    """
    if not path.exists() and not path.is_symlink():
        return {}
    if not path.is_dir() or path.is_symlink():
        return {path.name: _entry_digest(path)}
    return {
        str(item.relative_to(path)): _entry_digest(item)
        for item in sorted(path.rglob("*"))
        if item.is_symlink() or item.is_file()
    }


def bomb_png(width: int = 13_000, height: int = 13_000) -> bytes:
    """A valid 8-bit gray PNG of zeros declaring ``width x height`` pixels (~164 KB at 13000 x 13000), by zlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
