"""Preprocessed image cache: each image decoded once, resized, and stored in a memory-mapped uint8 array."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from muratune.constants import IMAGE_PATH
from muratune.data.images import bad_images_error
from muratune.errors import UserError
from muratune.fileio import temp_dir_beside, write_json

CACHE_FORMAT_VERSION = 2  # 2: geometry of images reduced while decoding is that of the original file
CACHE_ENV = "MURATUNE_CACHE"
_CHUNK = 64


def default_cache_dir() -> Path:
    """Return the cache root: ``$MURATUNE_CACHE``, else the user's cache folder (e.g. ``~/.cache/muratune``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("muratune"))


def _manifest(image_files: list[Path]) -> list[tuple[str, int, int]]:
    """Return (path, size, mtime_ns) for each file; missing files get size -1."""
    rows = []
    for path in image_files:
        try:
            stat = path.stat()
            rows.append((str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            rows.append((str(path), -1, 0))
    return rows


def cache_key(image_files: list[Path], size: int, mode: str) -> str:
    """Hash of what a cache is built from: the files (paths, sizes, mtimes), the image size and the resize mode."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{size}|{mode}\n".encode())
    for path, nbytes, mtime in _manifest(image_files):
        digest.update(f"{path}|{nbytes}|{mtime}\n".encode())
    return digest.hexdigest()[:20]


@dataclass
class ImageCache:
    """An opened cache: ``images[i]`` is the i-th image (size x size uint8); ``index`` maps image paths to rows."""

    path: Path
    images: np.ndarray
    index: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Side length of the cached square images."""
        return int(self.meta["size"])

    @property
    def excluded(self) -> list[dict]:
        """Images left out of the cache because they could not be read (only with skip_bad_images)."""
        return list(self.meta.get("excluded", []))

    def rows_for(self, image_paths: pd.Series | list[str]) -> np.ndarray:
        """Return the cache row of each image path (-1 for images not in the cache)."""
        lookup = dict(zip(self.index[IMAGE_PATH], self.index["row"], strict=True))
        return np.array([lookup.get(p, -1) for p in image_paths], dtype=np.int64)

    def geometry(self, row: int):
        """Return the Geometry that maps the original image onto cached row ``row``."""
        from muratune.data.images import square_geometry

        rec = self.index.iloc[row]
        return square_geometry(int(rec["orig_height"]), int(rec["orig_width"]), self.size, self.meta["mode"])

    @classmethod
    def open(cls, path: Path) -> ImageCache:
        """Open a complete cache directory read-only (memory-mapped)."""
        meta = json.loads((path / "meta.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        index = pd.read_parquet(path / "index.parquet")
        return cls(path=path, images=images, index=index, meta=meta)


def _decode_chunk(args: tuple[str, list[tuple[int, str]], int, str]) -> list[tuple[int, int, int, str | None]]:
    """Worker: decode and resize a chunk of images straight into the memory-mapped array."""
    from muratune.data.images import ImageReadError, read_square

    array_path, items, size, mode = args
    images = np.load(array_path, mmap_mode="r+")
    results: list[tuple[int, int, int, str | None]] = []
    for row, file in items:
        try:
            square, geo = read_square(file, size, mode)
            images[row] = square
            results.append((row, geo.orig_height, geo.orig_width, None))
        except ImageReadError as err:
            results.append((row, 0, 0, str(err)))
    images.flush()
    return results


def _run_decoders(array_path: Path, files: list[Path], size: int, mode: str, workers: int, progress: bool) -> list:
    from tqdm.auto import tqdm

    items = [(i, str(f)) for i, f in enumerate(files)]
    chunks = [(str(array_path), items[i : i + _CHUNK], size, mode) for i in range(0, len(items), _CHUNK)]
    results: list = []
    bar = tqdm(total=len(items), desc=f"caching {size}px", unit="img", disable=not progress or None)
    with bar:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                results.extend(_decode_chunk(chunk))
                bar.update(len(chunk[1]))
        else:
            # Threads, not processes: PNG decoding and resizing release the GIL, and spawned processes would
            # re-import the caller's __main__ (breaking unguarded scripts and Ray actors).
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(_decode_chunk, chunks):
                    results.extend(done)
                    bar.update(len(done))
    return sorted(results)


def _write_cache(
    tmp: Path,
    image_paths: list[str],
    files: list[Path],
    size: int,
    mode: str,
    key: str,
    workers: int,
    skip_bad_images: bool,
    progress: bool,
) -> None:
    array_path = tmp / "images.npy"
    images = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(len(files), size, size))
    del images
    results = _run_decoders(array_path, files, size, mode, workers, progress)
    bad = [(row, err) for row, _, _, err in results if err is not None]
    if bad and not skip_bad_images:
        raise bad_images_error([err for _, err in bad])
    index = pd.DataFrame(
        {
            IMAGE_PATH: image_paths,
            "row": [r[0] for r in results],
            "orig_height": [r[1] for r in results],
            "orig_width": [r[2] for r in results],
        }
    )
    bad_rows = {row for row, _ in bad}
    index = index[~index["row"].isin(bad_rows)].reset_index(drop=True)
    index.to_parquet(tmp / "index.parquet", index=False)
    excluded = [{"image_path": image_paths[row], "reason": err} for row, err in bad]
    write_json(
        tmp / "meta.json",
        {
            "version": CACHE_FORMAT_VERSION,
            "key": key,
            "size": size,
            "mode": mode,
            "count": len(index),
            "excluded": excluded,
        },
    )


def _checked(cache: ImageCache, skip_bad_images: bool) -> ImageCache:
    """Refuse a cache built with ``skip_bad_images`` that left images out, unless skipping is asked for again."""
    if cache.excluded and not skip_bad_images:
        raise bad_images_error([str(item["reason"]) for item in cache.excluded])
    return cache


def cache_path_for(root_dir: Path, key: str, size: int, mode: str) -> Path:
    """Return the folder of the cache with this key (the folder name can be parsed back: key, size, mode)."""
    return root_dir / f"{key}-{size}px-{mode}"


def build_cache(
    index: pd.DataFrame,
    size: int,
    mode: str = "pad",
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> ImageCache:
    """Return the cache for ``index`` at ``size``, building it once if needed.

    Safe when many processes call it at once: one builds under a file lock, the others wait and then open
    it. The cache is written under a temporary name and renamed when complete.

    Args:
        index: the dataset index (``image_path`` relative to ``index.attrs["root"]``).
        size: side length of the cached square images.
        mode: ``pad`` (keep aspect ratio, pad to square) or ``stretch``.
        cache_dir: cache root; default ``$MURATUNE_CACHE`` or the user's cache folder.
        workers: decoding processes (0 = all cores).
        skip_bad_images: exclude unreadable images (listed in ``meta.json``) instead of stopping. Without it, an
            existing cache that excludes images is refused too.
        progress: show a progress bar.
    """
    from muratune.data.images import RESIZE_MODES

    if mode not in RESIZE_MODES:
        raise UserError(f"resize mode {mode!r} is unknown; choose one of {', '.join(RESIZE_MODES)}")
    base = Path(index.attrs.get("root", "."))
    image_paths = list(dict.fromkeys(index[IMAGE_PATH].tolist()))
    files = [base / p for p in image_paths]
    key = cache_key(files, size, mode)
    root_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    final = cache_path_for(root_dir, key, size, mode)
    if (final / "meta.json").is_file():
        return _checked(ImageCache.open(final), skip_bad_images)
    root_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "meta.json").is_file():
            return _checked(ImageCache.open(final), skip_bad_images)
        tmp = temp_dir_beside(final, suffix="")  # the umask's mode: a shared MURATUNE_CACHE is read by others
        try:
            workers = workers or os.cpu_count() or 1
            _write_cache(tmp, image_paths, files, size, mode, key, workers, skip_bad_images, progress)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ImageCache.open(final)
