"""What the importers share: the registry entry, options, problems, confined paths, frames, names."""

from __future__ import annotations

import functools
import io
import os
import random
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

from models.labels import DEFAULT_AU_INTENSITY_THRESHOLD, EXPRESSIONS, Expression
from models.schemas import ImportCandidate, ImportProblem

T = TypeVar("T")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: Label files are parsed as streams, but one larger than this is refused rather than read.
MAX_LABEL_FILE_BYTES = 1 << 30

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


@dataclass
class ImportOptions:
    #: keep every n-th labelled frame of a video source (DISFA, BP4D, Aff-Wild2)
    frame_stride: int = 1
    #: DISFA intensity (0-5) at or above which an AU counts as present
    au_threshold: int = DEFAULT_AU_INTENSITY_THRESHOLD
    #: AffectNet: store the annotated face box instead of the whole image
    crop_faces: bool = False
    #: video sources: where extracted frames live, if not in the default folder
    frames_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be 1 or more, got {self.frame_stride}")
        if not 0 <= self.au_threshold <= 5:
            raise ValueError(f"au_threshold is a DISFA intensity (0-5), got {self.au_threshold}")


Reader = Callable[[Path, ImportOptions], Iterator[ImportCandidate | ImportProblem]]
#: Writes synthetic faces in the importer's layout: (folder, images per subject, rng).
DemoWriter = Callable[[Path, list[int], random.Random], None]


@dataclass(frozen=True)
class Importer:
    """One source layout. Each importer module defines `IMPORTER = Importer(...)`; the package finds them.

    The CLI (`seke import NAME`), the demo data and the README's format table all come from these.
    """

    #: the source name stored in the database and typed in `seke import NAME` (at most 32 characters)
    name: str
    #: the dataset's own name, for help and docs
    title: str
    read: Reader
    #: one line: the layout the importer expects
    layout: str
    #: position in listings: the built-in datasets are 10-60, generic layouts 90+; new ones land in between
    order: int = 70
    #: writes synthetic faces in this layout for `seke demo-data` (None: not part of the demo)
    demo: DemoWriter | None = None
    #: demo faces for this layout: demo_weight / 19 of `n` (the built-in eight sum to 19)
    demo_weight: int = 2
    #: demo faces per subject (video sources: frames per subject)
    per_subject: int = 1

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or len(self.name) > 32:
            raise ValueError(f"importer name {self.name!r} must be a lower-case identifier of at most 32 characters")


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


# --- problems -----------------------------------------------------------------------------------


def refused(
    path: Path, base: Path, reason: str, *, line: int | None = None, field: str | None = None, cause: str = "invalid record"
) -> ImportProblem:
    """A file or record that is not imported."""
    return ImportProblem(relative(path, base), reason, "refused", line, field, cause)


def dropped(path: Path, base: Path, reason: str, *, line: int | None = None, field: str | None = None) -> ImportProblem:
    """A value left missing; its image is still imported."""
    return ImportProblem(relative(path, base), reason, "dropped", line, field, "invalid value")


def missing_image(image: Path, label_path: Path, base: Path, *, line: int | None = None) -> ImportProblem:
    reason = f"no image at {label_file(image, base)} for these labels; extract or copy it there"
    return refused(label_path, base, reason, line=line, cause="no image for labels")


class LabelFileError(Exception):
    """A label file that cannot be read safely; `problem` says why."""

    def __init__(self, problem: ImportProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


# --- confinement: nothing outside the import root is listed or read ------------------------------


def inside(path: Path, base: Path) -> bool:
    """Whether `path`, symlinks resolved, lies in `base` (symlinks resolved too)."""
    real, top = os.path.realpath(path), _real_root(os.path.abspath(base))
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


@functools.lru_cache(maxsize=64)
def _real_root(base: str) -> str:
    """An import root's real path: resolved once, not once per file (it is checked for every image)."""
    return os.path.realpath(base)


def outside_problem(path: Path, base: Path) -> ImportProblem:
    return refused(path, base, "a symlink that points outside the import root; not followed", cause="outside the import root")


def safe_relative(text: str) -> PurePosixPath | None:
    """A path named in a label file, if it stays below its folder: not absolute, no '..', no NUL."""
    text = text.strip().replace("\\", "/")
    if not text or "\x00" in text or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return None
    path = PurePosixPath(text)
    return None if ".." in path.parts else path


def entries(
    folder: Path, base: Path, wanted: Callable[[Path], bool] | None = None, *, dirs: bool | None = None
) -> tuple[list[Path], list[ImportProblem]]:
    """Sorted, non-hidden (and `wanted`) entries of `folder`, and a refusal for each symlink leading out of `base`.

    `dirs`: True keeps only folders, False only what is not a folder, None both. A `folder` that is
    not a directory gives nothing; one that itself leads out of `base` is refused. One scandir:
    the entry types come with the listing, not a stat per file (this runs over every image).
    """
    if not inside(folder, base):
        return [], [outside_problem(folder, base)]
    try:
        listing = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except (NotADirectoryError, FileNotFoundError):
        return [], []
    except OSError as exc:  # e.g. permission denied: this folder is refused, the import goes on
        return [], [refused(folder, base, f"cannot be listed: {exc.strerror or exc}", cause="unreadable")]
    kept: list[Path] = []
    problems: list[ImportProblem] = []
    for entry in listing:
        path = folder / entry.name
        if entry.name.startswith(".") or (wanted is not None and not wanted(path)):
            continue
        if entry.is_symlink() and not inside(path, base):
            problems.append(outside_problem(path, base))
        elif dirs is None or entry.is_dir() == dirs:
            kept.append(path)
    return kept, problems


def sorted_dirs(folder: Path, base: Path) -> tuple[list[Path], list[ImportProblem]]:
    return entries(folder, base, dirs=True)


def glob_files(folder: Path, pattern: str, base: Path) -> tuple[list[Path], list[ImportProblem]]:
    """`folder.glob(pattern)` (one level), confined like `entries`."""
    paths, problems = entries(folder, base, lambda path: path.match(pattern))
    return [path for path in paths if path.is_file()], problems


def open_label(path: Path, base: Path) -> BinaryIO:
    """A label file opened for reading, or LabelFileError: only regular files inside `base`.

    O_NONBLOCK keeps a FIFO from blocking the open; fstat then refuses it.
    """
    if not inside(path, base):
        raise LabelFileError(outside_problem(path, base))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise LabelFileError(refused(path, base, f"cannot be read: {exc.strerror or exc}", cause="unreadable")) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise LabelFileError(refused(path, base, "not a regular file; not read", cause="not a regular file"))
    if info.st_size > MAX_LABEL_FILE_BYTES:
        os.close(fd)
        reason = f"{info.st_size} bytes, over the {MAX_LABEL_FILE_BYTES} byte limit for a label file; not read"
        raise LabelFileError(refused(path, base, reason, cause="too large"))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_label_text(path: Path, base: Path) -> io.TextIOWrapper:
    """`open_label` as text. Invalid UTF-8 comes through as surrogates (see `bad_text`), row by row."""
    return io.TextIOWrapper(open_label(path, base), encoding="utf-8", errors="surrogateescape", newline="")


def bad_text(text: str) -> str | None:
    """Why `text` cannot be stored (invalid UTF-8, a NUL), or None."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def numbered_lines(path: Path, base: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of each non-blank line; LabelFileError when unreadable."""
    with open_label(path, base) as handle:
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    return [(number, text.strip()) for number, text in enumerate(lines, start=1) if text.strip()]


def parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def strided(items: Sequence[T], stride: int) -> list[T]:
    """Every `stride`-th item, starting with the first (video sources: neighbouring frames are near-duplicates)."""
    return list(items[::stride])


def frame_index(folder: Path, base: Path) -> tuple[dict[int, Path], list[ImportProblem]]:
    """{frame number: image} for the numerically named images in `folder`, whatever their zero padding.

    Lets one loader accept '00042.png', '0042.jpg' and '42.jpg' alike. Confined to `base`.
    """
    paths, problems = entries(folder, base, lambda path: path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit())
    return {int(path.stem): path for path in paths}, problems


def child_folder(folder: Path, name: str) -> Path:
    """`folder/name`, matching an existing child's name case-insensitively ('Frames' or 'frames')."""
    exact = folder / name
    if exact.is_dir() or not folder.is_dir():
        return exact
    for child in sorted(folder.iterdir()):
        if child.name.lower() == name.lower() and child.is_dir():
            return child
    return exact
