"""Progress of long work, from the flows to whoever shows it (the CLI's rich bars).

Flows report through `report` / `advance`; with nobody listening these cost a
lock and a loop over an empty list. `ProgressBars` listens and draws one rich
bar per kind of work ("annotate", "finetune", …): done/total, rate, dollars
spent where there are any, time left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Listener = Callable[[str, int | None, int | None, int, float | None], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def report(kind: str, done: int, total: int | None = None, cost_usd: float | None = None) -> None:
    """`done` of `total` units of `kind` are finished (absolute), `cost_usd` spent so far."""
    for listener in list(_listeners):
        listener(kind, done, total, 0, cost_usd)


def advance(kind: str, total: int | None = None, step: int = 1) -> None:
    """`step` more units of `kind` are finished."""
    for listener in list(_listeners):
        listener(kind, None, total, step, None)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:.1f} {unit}/s" if speed else f"– {unit}/s", style="progress.data.speed")


class _Cost(ProgressColumn):
    def render(self, task: Task) -> Text:
        cost = task.fields.get("cost")
        return Text("" if cost is None else f"${cost:,.4f}", style="green")


class ProgressBars:
    """Context manager: while open, every report becomes a rich bar (one per kind)."""

    UNITS = {"annotate": "images", "import": "images", "finetune": "steps", "benchmark": "answers"}

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            _Rate(), _Cost(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        )  # fmt: skip
        self.tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def _on(self, kind: str, done: int | None, total: int | None, step: int, cost_usd: float | None) -> None:
        with self._lock:
            if kind not in self.tasks:
                self.tasks[kind] = self.progress.add_task(kind, total=total, unit=self.UNITS.get(kind, "it"), cost=None)
        task = self.tasks[kind]
        fields = {"cost": cost_usd} if cost_usd is not None else {}
        if done is not None:
            self.progress.update(task, completed=done, total=total, **fields)
        else:
            self.progress.update(task, advance=step, total=total, **fields)

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        with _lock:
            _listeners.append(self._on)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with _lock:
            _listeners.remove(self._on)
        self.progress.stop()
