"""The image folder reader (``folder:DIR``): one sub-folder per class, images decoded by Pillow,
converted and resized to the requested input shape. Each image's pixel count is checked from its
header before anything is decoded (decompression bombs).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import archgen.readers as readers
from archgen.errors import DataError
from archgen.inputs import excerpt
from archgen.readers import (
    SourceData,
    display_name,
    list_dir,
    path_is,
    quote_name,
    require,
    show_path,
)

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp"}
)

_ONE_CHANNEL_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def read_folder(path: Path, input_shape: tuple[int, int, int] | None) -> SourceData:
    """Every image of ``path/<class>/`` (class folders in name order give the labels), decoded,
    converted and resized to ``input_shape`` (C, H, W with C 1 or 3); without one, the first
    image's size and mode (one channel or three) set it."""
    source = f"folder:{show_path(path)}"
    require(path, source, "directory")
    class_dirs, files = _class_files(path, source)
    if input_shape is None:
        input_shape = _shape_of(files[0], source)
    c, h, w = input_shape
    if c not in (1, 3):
        raise DataError(f"{source}: images can be read as 1 or 3 channels, the spec asks for {c}")
    readers.check_image_shape(source, (c, h, w))
    readers.check_dataset_size(source, len(files) * c * h * w)
    x = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, (f, shown, _) in enumerate(files):
        arr = _load_image(f, source, shown, "L" if c == 1 else "RGB", (w, h))
        x[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    y = np.array([label for _, _, label in files], dtype=np.int64)
    pool = readers.check_pair(source, x, source, y)
    names = [display_name(d.name) for d in class_dirs]
    return display_name(path.name or str(path)), pool, None, names


def _class_files(path: Path, source: str) -> tuple[list[Path], list[tuple[Path, str, int]]]:
    """The class folders of ``path`` and every image in them as (file, name for messages,
    label); a folder without class folders, or a class folder without images, is an error."""
    class_dirs = [
        d for d in list_dir(path, source) if not d.name.startswith(".") and path_is("dir", d, source)
    ]
    if not class_dirs:
        raise DataError(f"{source}: no class sub-folders; put each class's images in DIR/<class>/")
    if len(class_dirs) > readers.MAX_CLASSES:
        raise DataError(
            f"{source}: {len(class_dirs):,} class sub-folders; at most {readers.MAX_CLASSES:,} classes are "
            "supported (archgen.readers.MAX_CLASSES)"
        )
    files: list[tuple[Path, str, int]] = []
    for label, d in enumerate(class_dirs):
        where = f"{source}: class folder {quote_name(d.name)}"
        imgs = [
            f for f in list_dir(d, where)
            if f.suffix.lower() in IMAGE_SUFFIXES and path_is("file", f, where)
        ]
        if not imgs:
            raise DataError(
                f"{source}: class folder {quote_name(d.name)} has no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
            )
        files.extend((f, quote_name(d.name + "/" + f.name), label) for f in imgs)
    return class_dirs, files


def _shape_of(first: tuple[Path, str, int], source: str) -> tuple[int, int, int]:
    """The input shape (C, H, W) the first image sets when none is given, read from its header."""
    f, shown, _ = first
    mode, (w0, h0) = _probe_image(f, source, shown)
    channels = 1 if (mode in _ONE_CHANNEL_MODES or mode.startswith("I;")) else 3
    if max(h0, w0) > readers.MAX_IMAGE_SIDE:
        raise DataError(
            f"{source}: image {shown} is {w0}x{h0} pixels and sets the input shape; the limit is "
            f"{readers.MAX_IMAGE_SIDE} per side (archgen.readers.MAX_IMAGE_SIDE): give an input "
            "shape to resize the images to"
        )
    input_shape = (channels, h0, w0)
    log.info("%s: no input shape given, using %s from %s", source, input_shape, shown)
    return input_shape


@contextlib.contextmanager
def _pillow_warnings(where: str) -> Iterator[None]:
    """Pillow's decompression-bomb warning becomes an error; its other warnings on odd files
    (corrupt EXIF, truncated metadata) are logged, not printed to stderr."""
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            for w in caught[:3]:
                log.info("%s: %s", where, excerpt(str(w.message), 200))


def _open_checked(f: Path, source: str, shown: str) -> Image.Image:
    """``Image.open`` (which reads the header only) with the pixel count checked before anything
    is decoded."""
    from PIL import Image

    try:
        with _pillow_warnings(f"{source}: image {shown}"):
            im = Image.open(f)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{source}: image {shown} refused as a decompression bomb ({excerpt(exc, 90)}); the "
            f"limit is {readers.MAX_SOURCE_PIXELS:,} pixels (archgen.readers.MAX_SOURCE_PIXELS)"
        ) from None
    w, h = im.size
    if w * h > readers.MAX_SOURCE_PIXELS:
        im.close()
        raise DataError(
            f"{source}: image {shown} is {w}x{h} = {w * h:,} pixels; the limit is "
            f"{readers.MAX_SOURCE_PIXELS:,} (archgen.readers.MAX_SOURCE_PIXELS)"
        )
    return im


def _probe_image(f: Path, source: str, shown: str) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) from the image's header; nothing is decoded."""
    try:
        im = _open_checked(f, source, shown)
        with im:
            return str(im.mode), (int(im.width), int(im.height))
    except DataError:
        raise
    except Exception as exc:  # Pillow's parsers raise many types on bad bytes
        raise DataError(f"{source}: cannot read image {shown} ({_pil_reason(exc)})") from None


def _load_image(f: Path, source: str, shown: str, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The image decoded, converted to ``mode`` and resized to ``size`` (width, height)."""
    from PIL import Image

    try:
        im = _open_checked(f, source, shown)
        with im, _pillow_warnings(f"{source}: image {shown}"):
            im.load()
            out = im.convert(mode)
            if out.size != size:
                out = out.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(out, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types on bad bytes
        raise DataError(f"{source}: cannot read image {shown} ({_pil_reason(exc)})") from None
    expected = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    if arr.shape != expected:
        raise DataError(
            f"{source}: image {shown} decoded to shape {excerpt(list(arr.shape))}, not "
            f"{list(expected)}"
        )
    return arr


def _pil_reason(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can identify"
    if isinstance(exc, OSError) and exc.strerror:
        return show_path(exc.strerror, 80)
    return f"{type(exc).__name__}: {excerpt(exc, 100)}"
