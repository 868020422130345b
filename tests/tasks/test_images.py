"""Image validation: every way a file can fail, and the bytes ingest stores."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from models.labels import ACTION_UNITS, FaceLabels
from models.schemas import ImportCandidate
from tasks.groundtruth import read_ground_truth, save_with_ground_truth
from tasks.images import InvalidImage, display_image, load_candidate_bytes, validate_image


def png_bytes(width: int = 64, height: int = 48, colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds one tiny IDAT: a bomb's shape, a few bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


LABELS = FaceLabels(expression="happiness", valence=0.5, arousal=0.25, aus={au: au in ("AU6", "AU12") for au in ACTION_UNITS})


def test_valid_png_is_described_by_its_original_bytes() -> None:
    data = png_bytes(64, 48)
    info = validate_image(data, name="face.png")
    assert (info.width, info.height, info.format) == (64, 48, "PNG")
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_zero_byte_file_is_refused_with_its_name() -> None:
    with pytest.raises(InvalidImage, match=r"empty\.png: empty file \(0 bytes\)"):
        validate_image(b"", name="empty.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_refused_on_full_decode(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 64).convert("RGB").save(buffer, format=fmt)
    data = buffer.getvalue()
    with pytest.raises(InvalidImage, match=r"cut\.img: truncated or corrupt"):
        validate_image(data[: len(data) // 2], name="cut.img")


def test_non_image_is_refused() -> None:
    with pytest.raises(InvalidImage, match=r"notes\.jpg: not an image"):
        validate_image(b"these are not pixels", name="notes.jpg")


def test_image_over_max_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImage, match=r"bomb\.png: 8000x8000 = 64000000 pixels exceeds the limit of 40000000"):
        validate_image(png_header_only(8000, 8000), name="bomb.png")


@pytest.mark.parametrize("warnings_as_errors", [False, True])
def test_pillow_decompression_bomb_warning_is_an_error(warnings_as_errors: bool) -> None:
    # 9500^2 = 90.25 Mpx: over Pillow's MAX_IMAGE_PIXELS (~89.5 Mpx), where Pillow only warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error" if warnings_as_errors else "ignore", Image.DecompressionBombWarning)
        with pytest.raises(InvalidImage, match=r"big\.png: refused as a decompression bomb"):
            validate_image(png_header_only(9500, 9500), name="big.png", max_pixels=10**9)


def test_pillow_decompression_bomb_error_is_refused() -> None:
    # Over 2x MAX_IMAGE_PIXELS Pillow raises DecompressionBombError while opening.
    with pytest.raises(InvalidImage, match=r"huge\.png: refused as a decompression bomb"):
        validate_image(png_header_only(9999, 9999 * 2), name="huge.png", max_pixels=10**9, max_side=10**5)


def test_too_long_side_is_refused() -> None:
    with pytest.raises(InvalidImage, match=r"strip\.png: 12000x20 has a side longer than 10000"):
        validate_image(png_header_only(12000, 20), name="strip.png")


def test_tiny_image_is_refused() -> None:
    with pytest.raises(InvalidImage, match=r"tiny\.png: 8x8 is too small; .* at least 16 pixels"):
        validate_image(png_bytes(8, 8), name="tiny.png")


def candidate(path: str, crop_box: tuple[int, int, int, int] | None = None) -> ImportCandidate:
    return ImportCandidate(source="affectnet", subject="s", path=Path(path), labels=FaceLabels(), crop_box=crop_box)


def test_load_candidate_bytes_without_crop_is_the_file(tmp_path: Path) -> None:
    data = png_bytes()
    (tmp_path / "a.png").write_bytes(data)
    assert load_candidate_bytes(candidate("a.png"), tmp_path) == data


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_crop_keeps_format_and_ground_truth(tmp_path: Path, fmt: str) -> None:
    image = Image.new("RGB", (100, 80), "blue")
    (tmp_path / "a.img").write_bytes(save_with_ground_truth(image, LABELS, fmt))
    data = load_candidate_bytes(candidate("a.img", (10, 5, 60, 45)), tmp_path)
    info = validate_image(data, name="crop")
    assert (info.width, info.height, info.format) == (50, 40, fmt)
    assert read_ground_truth(data) == LABELS


def test_crop_box_is_clipped_to_the_image(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(64, 48))
    data = load_candidate_bytes(candidate("a.png", (-10, 20, 100, 100)), tmp_path)
    assert Image.open(io.BytesIO(data)).size == (64, 28)


def test_crop_outside_the_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(64, 48))
    with pytest.raises(InvalidImage, match="outside the 64x48 image"):
        load_candidate_bytes(candidate("a.png", (70, 0, 90, 20)), tmp_path)


def test_missing_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="gone.png: cannot be read"):
        load_candidate_bytes(candidate("gone.png"), tmp_path)


def test_display_image_applies_exif_orientation_only_for_display() -> None:
    image = Image.new("RGB", (60, 30), "green")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    data = buffer.getvalue()
    assert display_image(data).size == (30, 60)
    assert validate_image(data, name="r.jpg").width == 60  # stored bytes keep their own geometry
