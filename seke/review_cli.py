"""`seke review ...`: the human review queue."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

review_app = typer.Typer(help="Human review of generated labels.", no_args_is_help=True)
console = Console()


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
