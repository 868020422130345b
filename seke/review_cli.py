"""`seke review ...`: the human review queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

review_app = typer.Typer(help="Human review of generated labels.", no_args_is_help=True)
console = Console()

TOOLS = ("label-studio", "argilla")


@review_app.command("queue")
def queue(
    run: Annotated[str, typer.Argument(help="Run name.")],
    top: Annotated[int, typer.Option("--top", min=1, help="How many fields to list.")] = 20,
    field: Annotated[str | None, typer.Option("--field", help="expression, va or aus.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Only images of this dataset.")] = None,
    inconsistent: Annotated[
        bool, typer.Option("--inconsistent", help="Only images with knowledge-consistency flags.")
    ] = False,
) -> None:
    """The run's unreviewed generated fields, most uncertain first."""
    from core.config import get_settings
    from core.db import session_scope
    from tasks.review import review_queue

    with session_scope(get_settings()) as session:
        try:
            items = review_queue(session, run, top, field_group=field, source=source, inconsistent=inconsistent)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
    table = Table("image", "source", "field", "value", "uncertainty", "call", "flags")
    for item in items:
        u = "" if item.uncertainty is None else f"{item.uncertainty:.3f}"
        table.add_row(
            str(item.image_id), item.source, item.field, str(item.value), u, str(item.call_id), str(len(item.flags))
        )
    console.print(table)


@review_app.command("export")
def export(
    run: Annotated[str, typer.Argument(help="Run name.")],
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for config.xml and tasks.json (Label Studio), or the Argilla dataset folder.")
    ],
    to: Annotated[str, typer.Option("--to", help="label-studio or argilla")] = "label-studio",
) -> None:
    """Write a run's generated labels as review tasks for Label Studio, or as an Argilla dataset folder."""
    from core.config import get_settings
    from core.db import session_scope
    from core.store import open_store
    from tasks.review_export import export_argilla, export_label_studio

    if to not in TOOLS:
        raise typer.BadParameter(f"unsupported --to {to!r}; expected {' or '.join(TOOLS)}")
    settings = get_settings()
    with session_scope(settings) as session:
        try:
            if to == "argilla":
                folder = export_argilla(session, open_store(settings), run, out_dir)
                console.print(f"wrote {folder}: load it with rg.Dataset.from_disk({str(folder)!r}) (README, Human review)")
            else:
                config, tasks = export_label_studio(session, open_store(settings), run, out_dir)
                console.print(f"wrote {config} and {tasks}")
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error


@review_app.command("import")
def import_reviews(
    file: Annotated[
        Path, typer.Argument(help="Label Studio's JSON export, or the folder (or records.json) Argilla's to_disk wrote.")
    ],
    source: Annotated[str, typer.Option("--from", help="label-studio or argilla")] = "label-studio",
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Name every decision by; default: the annotator the tool names.")
    ] = None,
) -> None:
    """Store people's decisions from a review tool's export: all of the file, or nothing of it."""
    from collections import Counter

    from core.config import get_settings
    from core.db import session_scope
    from tasks.review import record_reviews
    from tasks.review_import import read_argilla, read_label_studio

    if source not in TOOLS:
        raise typer.BadParameter(f"unsupported --from {source!r}; expected {' or '.join(TOOLS)}")
    reader = read_argilla if source == "argilla" else read_label_studio
    with session_scope(get_settings()) as session:
        try:
            read = reader(session, file, reviewer)
            record_reviews(session, read.decisions)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="FILE") from error
    counts = Counter(d.decision for d in read.decisions)
    console.print(
        f"stored {len(read.decisions)} decisions from {file}: {counts['accept']} accepted, "
        f"{counts['correct']} corrected, {counts['reject']} rejected; {read.unannotated} tasks not annotated"
    )
