"""Image validation, the bytes ingest stores, and display.

Ingest trusts nothing an importer points at. A file is read only when it is a
regular file whose real path lies inside the import root (or an explicit
frames folder), and only up to a size cap, in bounded chunks: a FIFO, a
device, a symlink out of the tree or a huge sparse file is refused without
being read. Every image is then fully decoded before it is stored, so a
truncated download or a decompression bomb fails here, with the file's name,
instead of later inside a training run.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from models.schemas import ImportCandidate
from tasks.groundtruth import read_ground_truth, save_with_ground_truth
from tasks.importers import import_base, inside

#: The largest image file ingest reads (a 40-megapixel PNG fits); larger ones are refused unread.
MAX_FILE_BYTES = 64 << 20
_CHUNK = 1 << 20
_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


@dataclass(frozen=True)
class ImageInfo:
    sha256: str  # of the original bytes: the content address in storage
    width: int
    height: int
    format: str  # Pillow's format name, e.g. "PNG", "JPEG"


class InvalidImage(ValueError):
    """An image ingest refuses: the message is "<file>: <reason>"; `cause` groups refusals in summaries."""

    def __init__(self, name: str, reason: str, cause: str = "invalid image") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.cause = cause


def validate_image(
    data: bytes,
    *,
    name: str,
    max_pixels: int = 40_000_000,
    max_side: int = 10_000,
    min_side: int = 16,
) -> ImageInfo:
    """Decode `data` completely and return its size and format, or raise InvalidImage.

    Sizes are checked from the header *before* decoding, so a bomb is refused
    without allocating its pixels. An image over Pillow's MAX_IMAGE_PIXELS,
    where Pillow only warns (DecompressionBombWarning), is refused too. That
    is checked explicitly rather than with `warnings.catch_warnings`, which
    is not thread-safe and ingest validates from many threads.
    """
    if not data:
        raise InvalidImage(name, "empty file (0 bytes); re-copy or re-download it", "empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format or "unknown"
            _check_size(name, width, height, max_pixels=max_pixels, max_side=max_side, min_side=min_side)
            image.load()
    except InvalidImage:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImage(name, f"not an image Pillow can read ({len(data)} bytes)", "not an image") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # The warning arrives as an exception when warnings are errors (python -W error).
        raise InvalidImage(name, f"refused as a decompression bomb: {exc}", "too many pixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt pixel data as OSError / SyntaxError.
        raise InvalidImage(name, f"truncated or corrupt image data: {exc}", "corrupt image") from exc
    return ImageInfo(sha256=hashlib.sha256(data).hexdigest(), width=width, height=height, format=fmt)


def _check_size(name: str, width: int, height: int, *, max_pixels: int, max_side: int, min_side: int) -> None:
    if width * height > max_pixels:
        reason = f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} (possible decompression bomb)"
        raise InvalidImage(name, reason, "too many pixels")
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        reason = (
            f"refused as a decompression bomb: {width}x{height} = {width * height} pixels "
            f"exceeds Pillow's MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS})"
        )
        raise InvalidImage(name, reason, "too many pixels")
    if max(width, height) > max_side:
        raise InvalidImage(name, f"{width}x{height} has a side longer than {max_side} pixels", "too large")
    if min(width, height) < min_side:
        reason = f"{width}x{height} is too small; a face needs at least {min_side} pixels a side"
        raise InvalidImage(name, reason, "too small")


def read_confined(path: Path, roots: Sequence[Path], *, name: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of `path`, read only if it is a regular file inside one of `roots`, at most `max_bytes`.

    The size is checked from fstat before reading and again while reading in
    bounded chunks (a file may grow, or lie about its size), so no file ever
    costs more than `max_bytes` of memory. O_NONBLOCK keeps a FIFO from
    blocking the open; fstat then refuses it.
    """
    if not any(inside(path, root) for root in roots):
        raise InvalidImage(name, "leads outside the import root (a symlink or a path); not read", "outside the import root")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise InvalidImage(name, f"cannot be read: {exc.strerror or exc}", "unreadable") from exc
    try:
        info = os.fstat(fd)
        for test, what in _NOT_REGULAR:
            if test(info.st_mode):
                raise InvalidImage(name, f"not a regular file ({what}); not read", "not a regular file")
        if info.st_size > max_bytes:
            raise InvalidImage(name, f"{info.st_size} bytes, over the {max_bytes}-byte limit; not read", "too large")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while chunk := os.read(fd, min(_CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise InvalidImage(name, f"grew past the {max_bytes}-byte limit while being read", "too large")
        return b"".join(chunks)
    except OSError as exc:
        raise InvalidImage(name, f"cannot be read: {exc.strerror or exc}", "unreadable") from exc
    finally:
        os.close(fd)


def load_candidate_bytes(
    candidate: ImportCandidate, root: Path, *, extra_roots: Sequence[Path] = (), max_bytes: int = MAX_FILE_BYTES
) -> bytes:
    """The bytes ingest stores for `candidate` (its path is relative to the import root).

    Only files inside the import base (or one of `extra_roots`, e.g. a frames
    folder) are read; see `read_confined`. Without a crop box these are the
    file's own bytes. With one (AffectNet's face box) the crop is re-encoded
    in the source format; embedded ground truth is carried over so synthetic
    crops still feed the simulator. The box is clipped to the image, since
    AffectNet boxes may overhang it.
    """
    base = import_base(Path(root))
    name = str(candidate.path)
    data = read_confined(base / candidate.path, [base, *extra_roots], name=name, max_bytes=max_bytes)
    if candidate.crop_box is None:
        return data
    validate_image(data, name=name)  # decode under the bomb guards before cropping
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or "PNG"
        left, top, right, bottom = candidate.crop_box
        box = (max(0, left), max(0, top), min(image.width, right), min(image.height, bottom))
        if box[2] <= box[0] or box[3] <= box[1]:
            reason = f"crop box {candidate.crop_box} lies outside the {image.width}x{image.height} image"
            raise InvalidImage(name, reason, "crop outside the image")
        crop = image.crop(box)
    truth = read_ground_truth(data)
    if truth is not None and fmt in ("PNG", "JPEG"):
        return save_with_ground_truth(crop, truth, fmt)
    buffer = io.BytesIO()
    crop.save(buffer, format=fmt)
    return buffer.getvalue()


def display_image(data: bytes) -> Image.Image:
    """The image as a viewer shows it: EXIF orientation applied (display only; storage keeps the bytes)."""
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image)
