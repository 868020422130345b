"""The `seke` command line (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.schemas import SOURCES
from seke.config import Settings, get_settings

app = typer.Typer(help="SEKE: facial-emotion instruction data with vision LLMs.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
images_app = typer.Typer(help="Imported images.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(images_app, name="images")

console = Console()


def progress_bar() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _ready(settings: Settings) -> None:
    """Bring the schema to head: every command works on a fresh state directory."""
    from seke.migrate import upgrade

    upgrade(settings)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply Alembic migrations (creates the schema on an empty database)."""
    from seke.db import display_url
    from seke.migrate import upgrade

    settings = get_settings()
    upgrade(settings, revision)
    console.print(f"[green]database at {revision}[/green]: {display_url(settings)}")


@app.command("import")
def import_(
    format: Annotated[str, typer.Argument(help=f"one of: {', '.join(SOURCES)}")],
    path: Annotated[Path, typer.Argument(exists=True, file_okay=True, dir_okay=True)],
    frame_stride: Annotated[int, typer.Option(min=1, help="Video sources: keep every k-th frame.")] = 1,
    au_threshold: Annotated[int, typer.Option(min=0, max=5, help="DISFA: intensity at which an AU occurs.")] = 2,
    crop_faces: Annotated[bool, typer.Option(help="AffectNet: store the face-box crop.")] = False,
    frames_dir: Annotated[Path | None, typer.Option(help="Extracted video frames, if not in the default place.")] = None,
) -> None:
    """Import a dataset in its native layout: validate, store images, record human labels."""
    from seke.db import session_factory
    from seke.store import open_store
    from tasks.importers import READERS, ImportOptions
    from tasks.ingest import ingest

    if format not in READERS:
        raise typer.BadParameter(f"unknown format {format!r}; expected one of {', '.join(READERS)}", param_hint="FORMAT")
    settings = get_settings()
    _ready(settings)
    options = ImportOptions(
        frame_stride=frame_stride, au_threshold=au_threshold, crop_faces=crop_faces, frames_dir=frames_dir
    )
    with progress_bar() as progress:
        task = progress.add_task(f"importing {format} from {path}", total=None)
        report = ingest(
            READERS[format](path, options),
            path,
            session_factory(settings),
            open_store(settings),
            on_item=lambda: progress.advance(task),
        )
    console.print(
        f"[green]{report.imported} images imported[/green], {report.labels} human labels, "
        f"{report.already_present} already present, {len(report.problems)} refused"
    )
    for problem in report.problems:
        console.print(f"[yellow]refused[/yellow] {problem.path}: {problem.reason}")


@app.command()
def split(
    seed: Annotated[int, typer.Option(help="Seed of the subject order.")] = 0,
    fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of each source's subjects in FEAB.")] = 0.1,
) -> None:
    """Assign subjects to FEID / FEAB (about 1/10 per source to FEAB, no subject on both sides)."""
    from seke.db import session_scope
    from tasks.split import assign_splits

    settings = get_settings()
    _ready(settings)
    with session_scope(settings) as session:
        counts = assign_splits(session, seed=seed, fraction=fraction)
    table = Table("source", "FEID subjects", "FEAB subjects", "newly assigned", title="subject split")
    for row in counts:
        table.add_row(row.source, str(row.subjects_feid), str(row.subjects_feab), str(row.newly_assigned))
    console.print(table)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the eight layouts into.")],
    n: Annotated[int, typer.Option("--n", min=8, help="Number of faces in total.")] = 200,
    seed: int = 0,
) -> None:
    """Write synthetic faces in the native layouts of the six datasets, a folder and a manifest."""
    from tasks.demo_data import write_demo_data

    counts = write_demo_data(out, n=n, seed=seed)
    table = Table("format", "images", title=f"synthetic faces in {out}")
    for name, count in counts.items():
        table.add_row(name, str(count))
    console.print(table)


@images_app.command("stats")
def images_stats() -> None:
    """Counts per source and split, and how many images carry each description."""
    from seke.db import session_scope
    from tasks.reports import image_stats

    settings = get_settings()
    _ready(settings)
    with session_scope(settings) as session:
        rows = image_stats(session)
    table = Table("source", "split", "images", "subjects", "expression", "valence/arousal", "AUs", title="images")
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)
