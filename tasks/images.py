"""Image validation, the bytes ingest stores, and display.

Ingest trusts nothing an importer points at: every image is fully decoded
before it is stored, so a truncated download or a decompression bomb fails
here, with the file's name, instead of later inside a training run.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from models.schemas import ImportCandidate
from tasks.groundtruth import read_ground_truth, save_with_ground_truth
from tasks.importers import import_base


@dataclass(frozen=True)
class ImageInfo:
    sha256: str  # of the original bytes: the content address in storage
    width: int
    height: int
    format: str  # Pillow's format name, e.g. "PNG", "JPEG"


class InvalidImage(ValueError):
    """An image ingest refuses; the message names the file and the reason."""


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
        raise InvalidImage(f"{name}: empty file (0 bytes); re-copy or re-download it")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format or "unknown"
            _check_size(name, width, height, max_pixels=max_pixels, max_side=max_side, min_side=min_side)
            image.load()
    except InvalidImage:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"{name}: not an image Pillow can read ({len(data)} bytes)") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # The warning arrives as an exception when warnings are errors (python -W error).
        raise InvalidImage(f"{name}: refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt pixel data as OSError / SyntaxError.
        raise InvalidImage(f"{name}: truncated or corrupt image data: {exc}") from exc
    return ImageInfo(sha256=hashlib.sha256(data).hexdigest(), width=width, height=height, format=fmt)


def _check_size(name: str, width: int, height: int, *, max_pixels: int, max_side: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise InvalidImage(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(possible decompression bomb)"
        )
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        raise InvalidImage(
            f"{name}: refused as a decompression bomb: {width}x{height} = {width * height} pixels "
            f"exceeds Pillow's MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS})"
        )
    if max(width, height) > max_side:
        raise InvalidImage(f"{name}: {width}x{height} has a side longer than {max_side} pixels")
    if min(width, height) < min_side:
        raise InvalidImage(f"{name}: {width}x{height} is too small; a face needs at least {min_side} pixels a side")


def load_candidate_bytes(candidate: ImportCandidate, root: Path) -> bytes:
    """The bytes ingest stores for `candidate` (its path is relative to the import root).

    Without a crop box these are the file's own bytes. With one (AffectNet's
    face box) the crop is re-encoded in the source format; embedded ground
    truth is carried over so synthetic crops still feed the simulator. The
    box is clipped to the image, since AffectNet boxes may overhang it.
    """
    path = import_base(Path(root)) / candidate.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if candidate.crop_box is None:
        return data
    validate_image(data, name=str(path))  # decode under the bomb guards before cropping
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or "PNG"
        left, top, right, bottom = candidate.crop_box
        box = (max(0, left), max(0, top), min(image.width, right), min(image.height, bottom))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidImage(f"{path}: crop box {candidate.crop_box} lies outside the {image.width}x{image.height} image")
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
