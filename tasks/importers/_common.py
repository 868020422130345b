"""Small helpers the importers share: paths, problems, frames, names."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from models.labels import EXPRESSIONS, Expression
from models.schemas import ImportProblem

T = TypeVar("T")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: Folder / manifest spellings of the schema's expressions (lower-case).
EXPRESSION_SYNONYMS: dict[str, Expression] = {
    **{name: name for name in EXPRESSIONS},  # type: ignore[misc]
    "happy": "happiness",
    "sad": "sadness",
    "angry": "anger",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",
    "disgusted": "disgust",
    "contemptuous": "contempt",
}


def parse_expression_name(text: str) -> Expression | None:
    """'Happy', 'happiness', ' SAD ' -> schema name; None when not recognised."""
    return EXPRESSION_SYNONYMS.get(text.strip().lower())


def import_base(root: Path) -> Path:
    """The folder candidate paths are relative to: `root`, or a manifest file's folder."""
    return root.parent if root.is_file() else root


def relative(path: Path, base: Path) -> Path:
    """`path` relative to the import base, or unchanged when it lies elsewhere (e.g. a frames_dir)."""
    try:
        return path.relative_to(base)
    except ValueError:
        return path


def label_file(path: Path, base: Path) -> str:
    """How provenance names a label file: its path relative to the import root, with '/'."""
    return relative(path, base).as_posix()


def problem(path: Path, base: Path, reason: str, *, line: int | None = None, field: str | None = None) -> ImportProblem:
    where = ", ".join(part for part in (f"line {line}" if line else "", f"field {field!r}" if field else "") if part)
    return ImportProblem(path=relative(path, base), reason=f"{where}: {reason}" if where else reason)


def missing_image(image: Path, label_path: Path, base: Path, *, line: int | None = None) -> ImportProblem:
    return problem(
        label_path,
        base,
        f"no image at {label_file(image, base)} for these labels; extract or copy it there",
        line=line,
    )


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of each non-blank line."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield number, text.strip()


def parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def strided(items: Sequence[T], stride: int) -> list[T]:
    """Every `stride`-th item, starting with the first (video sources: neighbouring frames are near-duplicates)."""
    return list(items[::stride])


def frame_index(folder: Path) -> dict[int, Path]:
    """{frame number: image} for the numerically named images in `folder`, whatever their zero padding.

    Lets one loader accept '00042.png', '0042.jpg' and '42.jpg' alike.
    """
    if not folder.is_dir():
        return {}
    return {
        int(path.stem): path
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit()
    }


def sorted_dirs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
