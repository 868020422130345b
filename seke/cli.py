"""The `seke` command line (typer + rich)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer
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
)
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from core.config import Settings, get_settings
from models.vocab import RunStatus
from tasks.importers import IMPORTERS
from seke.review_cli import review_app

if TYPE_CHECKING:
    from flows.benchmark import BenchmarkResult
    from tasks.config import AnnotateConfig
    from tasks.ingest import IngestReport
    from simulator.server import SimulatorConfig
    from tasks.runs import RunReport

# No locals in tracebacks: they would print endpoint URLs (and any key in them) to the console.
app = typer.Typer(
    help="SEKE: facial-emotion instruction data with vision LLMs.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
images_app = typer.Typer(help="Imported images.", no_args_is_help=True)
store_app = typer.Typer(help="The object store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(images_app, name="images")
app.add_typer(store_app, name="store")
app.add_typer(review_app, name="review")

console = Console()
errors = Console(stderr=True)  # "error: ..." lines: the terminal's stderr, apart from reports and progress
#: --verbose: Prefect's own logs on the console too (they always go to the API and <state_dir>/logs/prefect.log).
_verbose = False


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs on the console too.")] = False,
) -> None:
    global _verbose
    _verbose = verbose
    # SIGTERM ends a command like Ctrl-C does, through normal exit (servers this process started are stopped):
    # Python's default for SIGTERM is to die on the spot.
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    """The `seke` command: errors a user can fix end in one message, bugs in a traceback (seke/errors.py)."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 (every error ends here, in one of two ways)
        from seke.errors import report

        sys.exit(report(exc, verbose=_verbose))


def _valid_name(value: str | None) -> str | None:
    """Typer callback: names that become folders and keys are checked before any work (models/names.py)."""
    from models.names import check_name

    if value is None:
        return None
    try:
        return check_name(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


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


def _bars():
    """One rich bar per long stage (done/total, rate, $, ETA), fed by flows/progress.py."""
    from flows.progress import ProgressBars

    return ProgressBars(console)


def _ready(settings: Settings) -> None:
    """Bring the schema to head: every command works on a fresh state directory (cheap when at head)."""
    from core.migrate import ensure_head

    ensure_head(settings)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply Alembic migrations (creates the schema on an empty database)."""
    from core.db import display_url
    from core.migrate import upgrade

    settings = get_settings()
    upgrade(settings, revision)
    console.print(f"[green]database at {revision}[/green]: {display_url(settings)}")


@app.command("import")
def import_(
    format: Annotated[str, typer.Argument(help="one of: " + ", ".join(f"{i.name} ({i.title})" for i in IMPORTERS.values()))],
    path: Annotated[Path, typer.Argument(exists=True, file_okay=True, dir_okay=True)],
    frame_stride: Annotated[int, typer.Option(min=1, help="Video sources: keep every k-th frame.")] = 1,
    au_threshold: Annotated[int, typer.Option(min=0, max=5, help="DISFA: intensity at which an AU occurs.")] = 2,
    crop_faces: Annotated[bool, typer.Option(help="AffectNet: store the face-box crop.")] = False,
    frames_dir: Annotated[Path | None, typer.Option(help="Extracted video frames, if not in the default place (may lie outside PATH).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Processes that read, hash and decode images (0: one per core).")] = 0,
    upload_threads: Annotated[int, typer.Option(min=1, help="Objects stored at once (S3: parallel uploads).")] = 16,
    shard: Annotated[str, typer.Option(help="I/N: import only share I of N (0-based), for N processes or machines sharing the database.")] = "0/1",
) -> None:
    """Import a dataset in its native layout: validate, store images, record human labels.

    Reads only regular files inside PATH (and --frames-dir), each up to 64 MiB; every bad file or
    row is reported and the rest goes on. Re-running resumes: what is recorded is skipped."""
    import os

    from core.db import session_factory
    from core.store import open_store
    from models.schemas import ImportCandidate
    from tasks.importers import READERS, ImportOptions
    from tasks.ingest import in_shard, ingest

    if format not in READERS:
        raise typer.BadParameter(f"unknown format {format!r}; expected one of {', '.join(READERS)}", param_hint="FORMAT")
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise typer.BadParameter(f"{shard!r} is not I/N with 0 <= I < N, e.g. 0/2", param_hint="--shard")
    shares = (int(index), int(count))
    settings = get_settings()
    _ready(settings)
    options = ImportOptions(
        frame_stride=frame_stride, au_threshold=au_threshold, crop_faces=crop_faces, frames_dir=frames_dir
    )
    with console.status(f"scanning {path} for {format} images"):
        # A first pass over the label files (no image is read) gives the bar its total and ETA.
        total = sum(
            1 for item in READERS[format](path, options) if isinstance(item, ImportCandidate) and in_shard(item, shares)
        )
    with import_progress() as progress:
        task = progress.add_task(f"importing {format}", total=total)
        report = ingest(
            READERS[format](path, options),
            path,
            session_factory(settings),
            open_store(settings),
            extra_roots=[frames_dir] if frames_dir else [],
            workers=workers or os.cpu_count() or 1,
            upload_threads=upload_threads,
            shard=shares,
            on_item=lambda k: progress.advance(task, k),
        )
    _print_import_report(report)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} images/s")


def import_progress() -> Progress:
    """One bar: images done of the total, images/s and the time left."""
    from rich.progress import TaskProgressColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def _print_import_report(report: IngestReport) -> None:
    """Every problem with its kind, then one summary line: refused counts only what was not imported."""
    for problem in report.problems:
        colour = "red" if problem.kind == "refused" else "yellow"
        console.print(f"[{colour}]{problem.kind}[/{colour}] {escape(str(problem))}", highlight=False)
    causes = ", ".join(f"{cause}: {count}" for cause, count in report.refused_by_cause().most_common())
    console.print(
        f"[green]{report.imported} images imported[/green], {report.labels} human labels, "
        f"{report.already_present} already present"
        + (f" ({report.merged_labels} labels of this source added to them)" if report.merged_labels else "")
        + f", {len(report.refused)} refused"
        + (f" ({causes})" if causes else "")
        + f", {len(report.dropped)} values dropped"
    )


@app.command()
def split(
    seed: Annotated[int, typer.Option(help="Seed of the subject order.")] = 0,
    fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of each source's subjects in FEAB.")] = 0.1,
) -> None:
    """Assign subjects to FEID / FEAB (about 1/10 per source to FEAB, no subject on both sides)."""
    from core.db import session_scope
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
    out: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per layout into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="About this many faces (each layout gets its weight's share, at least one).")] = 200,
    seed: int = 0,
) -> None:
    """Write synthetic faces in the native layout of every importer with a demo writer."""
    from tasks.demo_data import write_demo_data

    counts = write_demo_data(out, n=n, seed=seed)
    table = Table("format", "images", title=f"synthetic faces in {out}")
    for name, count in counts.items():
        table.add_row(name, str(count))
    console.print(table)


@images_app.command("stats")
def images_stats() -> None:
    """Counts per source and split, and how many images carry each description."""
    from core.db import session_scope
    from tasks.reports import image_stats

    settings = get_settings()
    _ready(settings)
    with session_scope(settings) as session:
        rows = image_stats(session)
    _print_image_stats(rows)


def _print_image_stats(rows: list[tuple[str, str, int, int, int, int, int]]) -> None:
    table = Table("source", "split", "images", "subjects", "expression", "valence/arousal", "AUs", title="images")
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)


@store_app.command("gc")
def store_gc(
    grace_hours: Annotated[float, typer.Option(min=0, help="Leave objects younger than this: a running import's.")] = 1.0,
    dry_run: Annotated[bool, typer.Option(help="List what would be removed; remove nothing.")] = False,
) -> None:
    """Remove stored images no database row references (left by an import killed and never re-run)."""
    from core.db import session_factory
    from core.store import open_store
    from tasks.ingest import collect_garbage

    settings = get_settings()
    _ready(settings)
    report = collect_garbage(session_factory(settings), open_store(settings), grace_s=grace_hours * 3600, dry_run=dry_run)
    for key in report.orphans:
        console.print(f"{'would remove' if dry_run else 'removed'} {key}")
    console.print(
        f"{len(report.orphans)} unreferenced image objects, {report.removed} removed; "
        f"{report.recent} younger than {grace_hours} h left alone"
    )


runs_app = typer.Typer(help="Annotation runs.", no_args_is_help=True)
simulator_app = typer.Typer(help="The offline OpenAI-compatible simulator.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(simulator_app, name="simulator")


class Endpoint(NamedTuple):
    """The endpoint a flow uses: overrides of SEKE_VLLM_* (None: the settings'), and whether it is the simulator."""

    base_url: str | None = None
    model: str | None = None
    simulated: bool = False


@contextmanager
def _endpoint(settings: Settings, simulator_config: SimulatorConfig | None = None) -> Iterator[Endpoint]:
    """The settings' endpoint when SEKE_VLLM_BASE_URL is set, else a simulator started here.

    This is where the endpoint is chosen, so this is where `simulated` is decided; flows carry it on."""
    if settings.vllm_base_url:
        yield Endpoint()
        return
    from simulator.server import SimulatorConfig, running_simulator

    config = simulator_config or SimulatorConfig()
    with running_simulator(config) as base_url:
        console.print(
            f"[yellow]No SEKE_VLLM_BASE_URL: using the built-in simulator at {base_url} "
            "(rehearsal only: its labels are not a real model's quality).[/yellow]"
        )
        yield Endpoint(base_url, config.model_name, simulated=True)


@contextmanager
def _flows(settings: Settings) -> Iterator[None]:
    """The schema at head and Prefect's settings for the flows this command runs."""
    from core.logs import route_logs
    from flows.api_server import install
    from flows.runtime import prefect_settings

    _ready(settings)
    with prefect_settings(settings):
        route_logs(settings.resolved_state_dir / "logs" / "prefect.log", verbose=_verbose)
        install()  # Prefect's temporary API server stops itself if this process is killed
        yield


class PromptLayoutChoice(StrEnum):
    """AnnotateConfig.prompt_layout's choices (tasks/prompts.py)."""

    paper = "paper"
    cached = "cached"


class Normaliser(StrEnum):
    """UAMCConfig.normaliser's choices (tasks/uamc.py)."""

    fixed = "fixed"
    attainable = "attainable"


@app.command()
def annotate(
    run: Annotated[str, typer.Option("--run", help="Run name; re-running the same name resumes it.", callback=_valid_name)],
    limit: Annotated[int | None, typer.Option(min=1, help="Annotate at most the first N FEID images.")] = None,
    max_calls: Annotated[int | None, typer.Option(min=1, help="Stop starting new images after this many calls.")] = None,
    max_cost: Annotated[float | None, typer.Option(min=0, help="Stop starting new images after this many dollars.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, max=512, help="Images annotated at once.")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per Prefect sub-flow.")] = 1000,
    images_per_task: Annotated[int, typer.Option(min=1, help="Images per Prefect task run (1: each image shows in the UI).")] = 1,
    seed: int = 0,
    no_prior: Annotated[bool, typer.Option("--no-prior", help="Ablation: no human labels or knowledge in prompts.")] = False,
    no_uamc: Annotated[bool, typer.Option("--no-uamc", help="Ablation: one sample per image.")] = False,
    max_samples: Annotated[int, typer.Option(min=1, help="UAMC's N.")] = 5,
    normaliser: Annotated[
        Normaliser, typer.Option(help="UAMC uncertainty normaliser: fixed (largest variance) or attainable (largest reachable with S_n samples).")
    ] = Normaliser.fixed,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes sharing the run (leased images).")] = 1,
    via_deployments: Annotated[
        bool, typer.Option(help="Start the workers as `annotate-worker` deployment runs on a Prefect server's work pool.")
    ] = False,
    lease_s: Annotated[float, typer.Option(min=1, help="Seconds a dead worker's images stay leased before others take them.")] = 30.0,
    plan: Annotated[bool, typer.Option("--plan", help="Print expected calls, tokens, dollars and time; annotate nothing.")] = False,
    pilot: Annotated[int | None, typer.Option(min=1, help="With --plan: measure on K of the run's images first (paid, run <run>-pilot).")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="Run SEKE in rounds over the OpenAI Batch API (half price, hours).")] = False,
    batch_poll_s: Annotated[float, typer.Option(min=0, help="With --batch: seconds between checks of a batch.")] = 30.0,
    batch_price_factor: Annotated[float, typer.Option(min=0, help="With --batch: batch price relative to online.")] = 0.5,
    batch_max_requests: Annotated[int, typer.Option(min=1, max=50_000, help="With --batch: requests per batch.")] = 50_000,
    fallback_online: Annotated[
        bool, typer.Option("--fallback-online", help="With --batch: ask failed or expired lines online at once.")
    ] = False,
    shared_prefill: Annotated[
        bool,
        typer.Option(help="Ask UAMC's first samples as one request for n choices (prompt billed once); off for endpoints without n."),
    ] = True,
    prompt_layout: Annotated[
        PromptLayoutChoice,
        typer.Option(help="paper: the paper's prompts; cached: constant system text first, for providers' prefix caches."),
    ] = PromptLayoutChoice.paper,
    from_run: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Create --run as the next version of this completed run: images whose known labels "
            "(reviews included) did not change keep its results; the rest are annotated again.",
            callback=_valid_name,
        ),
    ] = None,
) -> None:
    """Annotate the FEID images of a run with SEKE (prior prompt → UAMC → summary → rewrite).

    Several invocations (or --workers K) on one run share its images; Ctrl-C or
    SIGTERM stop it cleanly, and re-running the same name resumes it."""
    from flows.annotate import annotate_flow
    from tasks.config import AnnotateConfig
    from tasks.uamc import UAMCConfig

    settings = get_settings()
    uamc = UAMCConfig(enabled=not no_uamc, max_samples=max_samples, normaliser=normaliser.value)
    config = AnnotateConfig(
        seed=seed, use_prior=not no_prior, uamc=uamc, shared_prefill=shared_prefill, prompt_layout=prompt_layout.value
    )
    if pilot and not plan:
        raise typer.BadParameter("--pilot goes with --plan", param_hint="--pilot")
    if plan:
        from flows.plan import plan_annotate

        with _flows(settings), _endpoint(settings) if pilot else nullcontext(Endpoint()) as endpoint:
            _print_plan(
                plan_annotate(
                    run, config=config, limit=limit, concurrency=concurrency, pilot=pilot,
                    base_url=endpoint.base_url, model=endpoint.model,
                ),  # fmt: skip
                batch=(batch_price_factor, uamc),
            )
        return
    if from_run and (plan or batch or limit):
        raise typer.BadParameter("--from runs online over its origin's images: no --plan, --batch or --limit", param_hint="--from")
    if batch and (max_calls or max_cost or workers > 1 or via_deployments):
        raise typer.BadParameter("--batch runs one process and takes no --max-calls, --max-cost or --workers", param_hint="--batch")
    if batch:
        _annotate_batch(run, config, limit, batch_poll_s, batch_price_factor, batch_max_requests, fallback_online)
        return
    try:
        with _flows(settings), _endpoint(settings) as endpoint, _bars():
            state = annotate_flow(
                run_name=run,
                config=config,
                limit=limit,
                max_calls=max_calls,
                max_cost_usd=max_cost,
                concurrency=concurrency,
                shard_size=shard_size,
                images_per_task=images_per_task,
                **endpoint._asdict(),
                workers=workers,
                via_deployments=via_deployments,
                lease_s=lease_s,
                from_run=from_run,
                return_state=True,
            )
    except KeyboardInterrupt:  # before the run's own handlers were in place: no image was claimed yet
        console.print(f"[yellow]interrupted before run {run!r} started annotating; re-run the command to continue[/yellow]")
        raise typer.Exit(130) from None
    result = state.result(raise_on_failure=False)
    from tasks.runs import RunReport

    if not isinstance(result, RunReport):  # the flow failed before it had a report: one line, not a traceback
        console.print(f"[red]run {run!r} failed:[/red] {result}")
        raise typer.Exit(1)
    _print_report(result)
    failed = result.images.get("failed", 0)
    if failed and result.first_failure:
        errors.print(
            f"[red]error:[/red] {failed} of {sum(result.images.values())} images failed; one of them: "
            f"{escape(result.first_failure)}",
            highlight=False,
        )
    if result.status == RunStatus.STOPPED:
        images = result.images
        console.print(
            f"[yellow]run {run!r} stopped ({result.stop_reason}): {images.get('done', 0)} of "
            f"{sum(images.values())} images done; resume with `seke annotate --run {run}`[/yellow]"
        )
        # 130 for an interrupt, as a shell reports Ctrl-C; 1 for a cancel or failed images; 0 for a budget
        # (it did what was asked).
        reason = result.stop_reason or ""
        raise typer.Exit(130 if reason.startswith("interrupted") else 1 if reason.startswith("cancelled") or failed else 0)
    if failed:
        raise typer.Exit(1)


def _annotate_batch(
    run: str, config, limit: int | None, poll_s: float, price_factor: float, max_requests: int, fallback_online: bool
) -> None:
    """`seke annotate --batch`: the rounds, each round's progress printed as it goes."""
    from flows.batch import annotate_batch_flow

    settings = get_settings()
    with _flows(settings), _endpoint(settings) as endpoint:
        state = annotate_batch_flow(
            run_name=run, config=config, limit=limit, **endpoint._asdict(), price_factor=price_factor,
            max_requests_per_batch=max_requests, poll_s=poll_s, fallback_online=fallback_online, say=console.print,
            return_state=True,
        )
    result = state.result(raise_on_failure=False)
    from tasks.runs import RunReport

    if not isinstance(result, RunReport):
        console.print(f"[red]run {run!r} failed:[/red] {result}")
        raise typer.Exit(1)
    _print_report(result)
    if result.status != RunStatus.COMPLETED:
        console.print(f"[yellow]run {run!r} {result.status}: {result.stop_reason or ''}; "
                      f"resume with `seke annotate --run {run} --batch`[/yellow]")
        raise typer.Exit(1)


def _print_plan(plan, batch=None) -> None:
    """The plan's ranges, one row each; with `batch` (price factor, UAMC config), batch mode's cost and rounds too."""

    def span(r, fmt: str) -> str:
        return f"{fmt.format(r.low)} – {fmt.format(r.high)}"

    def hours(seconds: float) -> str:
        return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"

    table = Table(show_header=False, title=f"plan: {plan.images} images ({plan.images_to_sample} to sample), from {plan.basis}")
    table.add_row("calls", span(plan.calls, "{:,.0f}"))
    table.add_row("tokens in", span(plan.tokens_in, "{:,.0f}") + f"  (of which {span(plan.tokens_cached, '{:,.0f}')} cached)")
    table.add_row("tokens out", span(plan.tokens_out, "{:,.0f}"))
    table.add_row("cost", span(plan.cost_usd, "${:,.2f}"))
    table.add_row("wall time", f"{hours(plan.wall_s.low)} – {hours(plan.wall_s.high)}")
    if batch is not None:
        from tasks.uamc import initial_samples

        factor, uamc = batch
        rounds = uamc.max_samples - initial_samples(uamc) + 3 if uamc.enabled else 3
        # No cache discount inside the Batch API before GPT-5: the batch price of the uncached cost.
        table.add_row("cost with --batch", span(plan.cost_usd_uncached.times(factor), "${:,.2f}"))
        table.add_row("time with --batch", f"up to {rounds} rounds, each within the batch completion window (24 h)")
    console.print(table)
    for note in plan.notes:
        console.print(f"[dim]{note}[/dim]")


def _print_report(report: RunReport) -> None:
    table = Table(show_header=False, title=f"run {report.name}: {report.status}")
    table.add_row("model", report.model + ("  [yellow](simulator)[/yellow]" if report.simulated else ""))
    table.add_row("images", ", ".join(f"{k}: {v}" for k, v in report.images.items()))
    if report.derived_from:
        why = f" (another configuration: {'; '.join(report.differs_from_origin)})" if report.differs_from_origin else ""
        table.add_row(
            "version",
            f"derived from {report.derived_from}: {report.kept_from_origin} images kept, {report.reannotated} annotated again{why}",
        )
    table.add_row("calls", f"{report.calls} ({report.invalid_calls} invalid answers)")
    if report.shared_choices is not None:
        refused = "; the endpoint refused n > 1, so the rest went one call per sample" if report.shared_prefill_refused else ""
        table.add_row(
            "requests", f"{report.calls - report.shared_choices} ({report.shared_choices} calls shared a request for n choices{refused})"
        )
    fresh = report.tokens_in - report.tokens_cached
    table.add_row("tokens", f"{fresh} fresh in, {report.tokens_cached} cached in, {report.tokens_out} out")
    table.add_row("cost", f"${report.cost_usd:.4f}")
    table.add_row("samples per image", ", ".join(f"{k}: {v}" for k, v in report.samples_histogram.items()))
    table.add_row("mean uncertainty", ", ".join(f"{k}: {v:.3f}" for k, v in report.mean_uncertainty.items()))
    if report.failures:
        table.add_row("failures", ", ".join(f"{k}: {v}" for k, v in report.failures.items()))
    if report.stop_reason:
        table.add_row("stopped", report.stop_reason)
    console.print(table)


def _find_run(session, name: str, hint: str):
    """The run named `name`, or a usage error listing recent runs."""
    from tasks.runs import find_run

    try:
        return find_run(session, name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


@runs_app.command("ls")
def runs_ls() -> None:
    """List runs, newest first."""
    from core.db import session_scope
    from tasks.runs import list_runs

    settings = get_settings()
    _ready(settings)
    with session_scope(settings) as session:
        runs = list_runs(session)
    table = Table(title="runs, newest first")
    for column in ("name", "kind", "status", "model", "created"):
        table.add_column(column, no_wrap=True)
    table.add_column("stop reason", overflow="fold")
    for run in runs:
        table.add_row(run.name, run.kind, run.status, run.model, f"{run.created_at:%m-%d %H:%M}", run.stop_reason or "")
    console.print(table)


@runs_app.command("show")
def runs_show(name: str) -> None:
    """A run's status, calls, cost, samples per image, uncertainty and failures."""
    from core.db import session_scope
    from tasks.runs import run_report

    settings = get_settings()
    _ready(settings)
    with session_scope(settings) as session:
        run_id = _find_run(session, name, "NAME").id
        _print_report(run_report(session, run_id))
        from tasks.batch import batch_savings

        savings = batch_savings(session, run_id)
    if savings.calls:
        console.print(f"batch mode: {savings.calls} calls for ${savings.cost_usd:.4f}, "
                      f"${savings.online_cost_usd:.4f} online: saved ${savings.saved_usd:.4f}")


def _usable_out_dir(path: Path, overwrite: bool, hint: str) -> None:
    """A usage error naming `hint` unless `path` may be written (tasks.export.check_out_dir)."""
    from tasks.export import ExportError, check_out_dir

    try:
        check_out_dir(path, overwrite=overwrite)
    except ExportError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run name.", callback=_valid_name)],
    out: Annotated[Path | None, typer.Option(help="Export folder (default: <state_dir>/exports/<run>).")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out even if it is a non-empty folder.")] = False,
    reference_images: Annotated[bool, typer.Option(help="Reference images by store key instead of copying them.")] = False,
) -> None:
    """Write a run's FEID as LLaVA JSONL + provenance sidecar + Hugging Face dataset."""
    from core.db import session_scope
    from core.store import open_store
    from tasks.export import record_export

    settings = get_settings()
    # The default folder is ours (a re-export replaces it); an explicit --out is replaced only with --force.
    target, overwrite = (out, force) if out is not None else (settings.resolved_state_dir / "exports" / run, True)
    _usable_out_dir(target, overwrite, "--out")
    _ready(settings)
    with session_scope(settings) as session:
        run_row = _find_run(session, run, "RUN")
        export_id, result = record_export(
            session, open_store(settings), run_row.id, target, copy_images=not reference_images, overwrite=overwrite
        )
    console.print(f"[green]{result.records} instructions[/green] exported to {result.path} (export id {export_id})")


@simulator_app.command("serve")
def simulator_serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    latency_ms: Annotated[float, typer.Option(help="Median latency per answer.")] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of requests answered 429.")] = 0.0,
    server_error_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of requests answered 5xx.")] = 0.0,
    malformed_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of answers malformed.")] = 0.0,
    seed: int = 0,
) -> None:
    """Serve the simulator (OpenAI-compatible, /v1/chat/completions) for offline rehearsal."""
    from simulator.server import SimulatorConfig, serve

    config = SimulatorConfig(
        latency_ms=latency_ms,
        rate_limit_rate=rate_limit_rate,
        server_error_rate=server_error_rate,
        malformed_rate=malformed_rate,
        seed=seed,
    )
    console.print(f"[yellow]seke simulator[/yellow] (not a real model) on http://{host}:{port}/v1")
    serve(config, host=host, port=port)


def _train_config(path: Path | None) -> dict | None:
    import json

    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{path}: not a readable JSON object of TrainConfig fields ({exc})") from exc


@app.command()
def finetune(
    name: Annotated[str | None, typer.Option(help="Training run name; re-running it resumes.", callback=_valid_name)] = None,
    export_id: Annotated[int | None, typer.Option(help="Export to train on (`seke export` prints it).")] = None,
    base_model: Annotated[str | None, typer.Option(help="Local checkpoint dir or store:<prefix>; empty builds the tiny model.")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of TrainConfig fields (defaults: paper §4.2).")] = None,
    processes: Annotated[int, typer.Option(min=1, help="Training processes (GPUs) over all machines; >1 launches `accelerate launch`.")] = 1,
    strategy: Annotated[str, typer.Option(help="ddp, fsdp or deepspeed-zero3 (deepspeed needs GPUs; ddp and fsdp also run as CPU processes).")] = "ddp",
    accelerate_config: Annotated[Path | None, typer.Option(help="accelerate config file (multi-node, offload, ...); replaces --strategy.")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bf16 autocast; default on with CUDA.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations; default on with CUDA.")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print the memory per GPU under each strategy and GPU count, then exit.")] = False,
    plan_model: Annotated[str | None, typer.Option(help="For --plan: checkpoint dir or preset (llava-onevision-qwen2-0.5b / -7b); default --base-model.")] = None,
    gpu_memory_gb: Annotated[float, typer.Option(help="For --plan: memory of one GPU in GB.")] = 80.0,
) -> None:
    """Fine-tune LLaVA-OneVision on an FEID export (full SFT; LoRA with {"use_lora": true})."""
    train_config = _train_config(config) or {}
    for field, value in (("bf16", bf16), ("gradient_checkpointing", gradient_checkpointing)):
        if value is not None:
            train_config[field] = value
    if plan:
        _print_memory_plan(plan_model or base_model, train_config, gpu_memory_gb)
        return
    if name is None or export_id is None:
        raise typer.BadParameter("--name and --export-id are required to train (only --plan runs without them)")
    from flows.finetune import finetune_flow

    settings = get_settings()
    with _flows(settings), _bars():
        result = finetune_flow(
            name=name, export_id=export_id, base_model=base_model, train_config=train_config or None, processes=processes,
            strategy=strategy, accelerate_config=str(accelerate_config) if accelerate_config else None,
        )  # fmt: skip
    console.print(f"[green]trained[/green] {name}: loss {result.first_loss:.3f} → {result.last_loss:.3f} in {result.steps} steps; model at {result.final_uri}")


def _print_memory_plan(model: str | None, train_config: dict, gpu_memory_gb: float) -> None:
    from tasks.train.finetune import TrainConfig
    from tasks.train.plan import memory_plan, model_config, model_shape

    if model is None:
        raise typer.BadParameter("--plan needs --plan-model (or --base-model): a checkpoint dir or a preset name")
    train = TrainConfig.from_dict(train_config)
    checkpointing = train.gradient_checkpointing is not False  # on GPUs it defaults to on
    shape = model_shape(model_config(model))
    table = Table(
        "strategy", "GPUs", "weights", "grads", "AdamW", "activ.", "total", f"fits {gpu_memory_gb:g}",
        title=f"GB per GPU. {model}: {shape.parameters / 1e9:.2f}B parameters, full SFT (AdamW, fp32 master weights), "
        f"batch {train.batch_size} × {train.max_length} tokens, gradient checkpointing {'on' if checkpointing else 'off'}",
    )  # fmt: skip
    for row in memory_plan(shape, batch_size=train.batch_size, seq_len=train.max_length, gpu_memory_gb=gpu_memory_gb, gradient_checkpointing=checkpointing):
        numbers = (row.weights_gb, row.gradients_gb, row.optimizer_gb, row.activations_gb, row.total_gb)
        table.add_row(row.strategy, str(row.gpus), *(f"{n:.1f}" for n in numbers), "[green]yes[/green]" if row.fits else "[red]no[/red]")
    console.print(table)


@app.command()
def benchmark(
    model: Annotated[str, typer.Option(help="Checkpoint dir / store:<prefix>, or the model name of an endpoint.")],
    name: Annotated[str | None, typer.Option(help="Benchmark run name (default: derived from the model).", callback=_valid_name)] = None,
    endpoint: Annotated[bool, typer.Option(help="Score an OpenAI-compatible endpoint (SEKE_VLLM_BASE_URL or --base-url).")] = False,
    base_url: Annotated[str | None, typer.Option(help="Endpoint URL, overriding SEKE_VLLM_BASE_URL.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Score at most the first N FEAB images.")] = None,
    parser_model: Annotated[str | None, typer.Option(help="Endpoint model that re-reads answers no parser could read.")] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0, max=2, help="Endpoint sampling temperature (default 1: how the paper's rows were measured).")
    ] = None,
) -> None:
    """Score a model on FEAB: expression accuracy/UAR/WAR, per-AU F1, valence/arousal MAE (Table 2 layout)."""
    import os

    from flows.benchmark import benchmark_flow
    from models.names import derived_name

    settings = get_settings()
    if base_url:
        # A URL may carry a key (?api-key=…): it reaches the flow through the environment, never as a flow
        # parameter, which Prefect would store and show.
        os.environ["SEKE_VLLM_BASE_URL"], base_url, settings = base_url, None, get_settings()
    with _flows(settings), ExitStack() as stack:
        stack.enter_context(_bars())
        simulated = False
        if endpoint and not settings.vllm_base_url:
            # Nothing configured: rehearse against the simulator, whose model name replaces --model
            # (and names the run: the scores are the simulator's, not --model's).
            base_url, model, simulated = stack.enter_context(_endpoint(settings))
        run_name = name or derived_name("feab-" + model)
        result = benchmark_flow(
            name=run_name, model=model, kind="endpoint" if endpoint else "checkpoint", base_url=base_url, limit=limit,
            parser_model=parser_model, simulated=simulated, **({} if temperature is None else {"temperature": temperature}),
        )  # fmt: skip
    _print_scores(result)


@app.command("export-benchmark")
def export_benchmark(
    lmms_eval: Annotated[Path, typer.Option("--lmms-eval", help="Folder for the lmms-eval task (feab.yaml, utils.py, dataset/).")],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N FEAB images.")] = None,
    force: Annotated[bool, typer.Option(help="Replace the folder even if it is not empty.")] = False,
) -> None:
    """Write FEAB as an lmms-eval task: `lmms_eval --include_path DIR --tasks feab` scores with seke's metrics."""
    from core.db import session_scope
    from core.store import open_store
    from tasks.benchmark.lmms_eval_export import TASK_NAME, write_lmms_eval_task
    from tasks.benchmark.runner import feab_items

    settings = get_settings()
    _usable_out_dir(lmms_eval, force, "--lmms-eval")
    _ready(settings)
    with session_scope(settings) as session:
        items = feab_items(session, limit)
    if not items:
        raise typer.BadParameter("no FEAB images: import data and run `seke split` first")
    with console.status(f"writing {len(items)} FEAB images …"):
        path = write_lmms_eval_task(items, open_store(settings), lmms_eval, overwrite=force)
    console.print(f"[green]{len(items)} FEAB images[/green] written as lmms-eval task {TASK_NAME!r} to {path}")
    console.print(f"run it: lmms_eval --model <model> --include_path {path} --tasks {TASK_NAME}  (seke must be importable there)")


def _print_scores(result: BenchmarkResult) -> None:
    """The headline columns of Table 2 (per-AU F1 is in the artifact, the charts and the database)."""
    from tasks.benchmark.paper import SCORED_AU_MEAN_COLUMN, TABLE2_ALL_COLUMN

    columns = ["Method", "EXP Acc (%)", TABLE2_ALL_COLUMN, SCORED_AU_MEAN_COLUMN, "Valence MAE", "Arousal MAE"]
    table = Table(*columns, title="FEAB (rows marked (paper) are the SEKE paper's published Table 2, not this code)")
    for row in result.rows:
        table.add_row(*("–" if row[c] is None else f"{row[c]:.3f}" if "MAE" in c else str(row[c]) for c in columns))
    console.print(table)
    scores = result.scores
    console.print(
        f"{scores.n} FEAB images: {scores.n_complete} answers complete (expression, valence/arousal and AUs), "
        f"{scores.n_unparseable} unparseable; charts: {', '.join(result.charts)}"
    )
    if result.simulated:
        console.print("[yellow]The model is the offline simulator: a rehearsal, not a real model's quality.[/yellow]")


@app.command()
def pipeline(
    run: Annotated[str, typer.Option("--run", help="Annotation run name; the chain's other names derive from it.", callback=_valid_name)],
    limit: Annotated[int | None, typer.Option(min=1, help="Annotate at most the first N FEID images.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Local checkpoint dir or store:<prefix>; empty builds the tiny model.")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of TrainConfig fields.")] = None,
    via_deployments: Annotated[bool, typer.Option(help="Start fine-tune/benchmark deployments on a Prefect server instead of in-process.")] = False,
) -> None:
    """annotate → export → fine-tune → benchmark, with lineage recorded."""
    from flows.pipeline import pipeline_flow

    settings = get_settings()
    train_config = _train_config(config)
    with _flows(settings), _endpoint(settings) as endpoint, _bars():
        result = pipeline_flow(
            run_name=run, limit=limit, base_model=base_model, train_config=train_config, via_deployments=via_deployments,
            **endpoint._asdict(),
        )  # fmt: skip
    _print_report(result.annotate)
    if result.benchmark is not None:
        _print_scores(result.benchmark)
    elif result.message is not None:
        console.print(result.message)


@app.command()
def demo(
    n: Annotated[int, typer.Option("--n", min=40, help="Synthetic faces to make.")] = 200,
    train: Annotated[bool, typer.Option(help="Fine-tune the tiny model and benchmark it after annotating.")] = True,
) -> None:
    """The whole path on embedded defaults: synthetic data → import → split → SEKE on the simulator →
    export → fine-tune a tiny LLaVA-OneVision on CPU → FEAB benchmark. Safe to re-run: every step resumes."""
    from flows.demo import demo_flow

    settings = get_settings()
    console.print("Running the demo flow: synthetic faces → import → split → SEKE → export → fine-tune → benchmark …")
    with _flows(settings), _endpoint(settings) as endpoint, _bars():
        result = demo_flow(n=n, train=train, **endpoint._asdict())
    console.rule("1. synthetic faces in every importer's native layout")
    console.print(f"{sum(result.written.values())} faces written to {result.data_dir}")
    console.rule("2. import (validate, store, record human labels) and subject split")
    imports = Table("format", "imported", "human labels", "already present", "refused", title="import")
    for name, report in result.imports.items():
        imports.add_row(name, str(report.imported), str(report.labels), str(report.already_present), str(len(report.problems)))
        for problem in report.problems:
            console.print(f"[yellow]{problem.kind}[/yellow] {escape(str(problem))}", highlight=False)
    console.print(imports)
    _print_image_stats(result.image_stats)
    console.rule("3. SEKE annotation on the simulator" + (", fine-tune and benchmark" if train else ""))
    _print_report(result.pipeline.annotate)
    if result.pipeline.benchmark is not None:
        console.rule("4. FEAB benchmark of the fine-tuned tiny model")
        _print_scores(result.pipeline.benchmark)
    console.rule("where everything is")
    console.print(f"database:  {result.database}")
    console.print(f"store:     {result.store}")
    console.print(f"export:    {result.export_dir} (feid.jsonl, provenance.jsonl, hf/)")
    if result.pipeline.finetune is not None:
        console.print(f"model:     {result.pipeline.finetune.final_uri}")
    console.print("provenance: SELECT * FROM annotation_provenance WHERE run_name = 'demo' LIMIT 20;  (see README)")
    console.print(
        "Prefect UI: run `prefect server start` in another terminal and `export PREFECT_API_URL=http://127.0.0.1:4200/api` "
        "before `seke demo`; its runs then show at http://127.0.0.1:4200"
    )
    if result.pipeline.annotate.simulated:
        console.print("[yellow]All model answers came from the offline simulator: a rehearsal, not a real model's quality.[/yellow]")


@app.command()
def audit(
    name: Annotated[str, typer.Option(help="Audit name; its 12 runs are named after it. Re-running resumes.", callback=_valid_name)],
    limit: Annotated[int, typer.Option(min=1, help="Images with all three human descriptions to audit.")] = 20,
    seed: int = 0,
    concurrency: Annotated[int | None, typer.Option(min=1, max=512, help="Images annotated at once.")] = None,
) -> None:
    """Reliability audit (paper §4.5.2): mask one human description, regenerate it, compare — for each
    Table 4 setting (prior on/off × UAMC on/off). Judge a model/prompt version before a full run."""
    from flows.audit import audit_flow

    settings = get_settings()
    with _flows(settings), _endpoint(settings) as endpoint:
        result = audit_flow(name=name, limit=limit, seed=seed, concurrency=concurrency, **endpoint._asdict())
    console.print(Markdown(result.table))


batch_app = typer.Typer(help="Batch mode's rounds as files, for `vllm run-batch` on a machine with no database.",
                        no_args_is_help=True)
app.add_typer(batch_app, name="batch")


# Off by default, as file rounds were before the option: a run's rounds must all be made the same way
# (a run refuses another configuration), so pass the same choice to every export-round and import-round.
RoundSharedPrefill = Annotated[
    bool,
    typer.Option(help="The first samples as one line asking n choices (vLLM's batch runner takes n); "
                 "give the same choice to every round of the run."),
]  # fmt: skip
RoundPromptLayout = Annotated[
    PromptLayoutChoice, typer.Option(help="paper or cached (see `seke annotate --help`); the same for every round.")
]


def _round_config(seed: int, shared_prefill: bool, prompt_layout: PromptLayoutChoice) -> AnnotateConfig:
    from tasks.config import AnnotateConfig

    return AnnotateConfig(seed=seed, shared_prefill=shared_prefill, prompt_layout=prompt_layout.value)


@batch_app.command("export-round")
def batch_export_round(
    run: Annotated[str, typer.Argument(help="Run name (created if new).", callback=_valid_name)],
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write (OpenAI batch input format).")],
    limit: Annotated[int | None, typer.Option(min=1, help="A new run: annotate at most the first N FEID images.")] = None,
    seed: int = 0,
    model: Annotated[str | None, typer.Option(help="Model name in the requests (default SEKE_VLLM_MODEL).")] = None,
    shared_prefill: RoundSharedPrefill = False,
    prompt_layout: RoundPromptLayout = PromptLayoutChoice.paper,
) -> None:
    """Write the run's next round of requests; run it with `vllm run-batch -i in.jsonl -o out.jsonl`."""
    from flows.batch import offline_runner

    _ready(get_settings())
    config = _round_config(seed, shared_prefill, prompt_layout)
    lines = offline_runner(run, config, limit, model, 1.0).export_round()
    out.write_bytes(b"".join(lines))
    console.print(f"{len(lines)} requests written to {out}" if lines else f"run {run!r}: no request left, every image is answered")


@batch_app.command("import-round")
def batch_import_round(
    run: Annotated[str, typer.Argument(help="Run name.", callback=_valid_name)],
    results: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The round's output JSONL.")],
    seed: int = 0,
    model: Annotated[str | None, typer.Option(help="Model name the run was exported with.")] = None,
    price_factor: Annotated[float, typer.Option(min=0, help="Price relative to the configured per-token prices.")] = 1.0,
    shared_prefill: RoundSharedPrefill = False,
    prompt_layout: RoundPromptLayout = PromptLayoutChoice.paper,
) -> None:
    """Store a round's answered lines as calls (idempotent); then export the next round."""
    from flows.batch import offline_runner

    _ready(get_settings())
    config = _round_config(seed, shared_prefill, prompt_layout)
    plan = offline_runner(run, config, None, model, price_factor).import_round(
        results.read_text(), results.name
    )
    console.print(f"stored {plan.stored} answers from {results} (${plan.cost_usd:.4f}); "
                  f"{len(plan.pending) - plan.stored} requests still unanswered")


schedule_app = typer.Typer(help="Recurring annotate runs: schedules on the Prefect server's annotate deployment.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@contextmanager
def _usage_errors(hint: str) -> Iterator[None]:
    """A ValueError from the logic below becomes a usage error naming `hint`."""
    try:
        yield
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


@schedule_app.command("create")
def schedule_create(
    name: Annotated[str, typer.Argument(help="Schedule name (its slug): pause and delete use it.")],
    run: Annotated[str, typer.Option("--run", help="Run name, or a pattern such as nightly-{scheduled:%Y%m%d}.")],
    cron: Annotated[str | None, typer.Option(help="Cron expression, e.g. '0 2 * * *'.")] = None,
    interval: Annotated[str | None, typer.Option(help="Instead of --cron: every 90s, 15m, 6h, 1d.")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of the cron expression.")] = "UTC",
    limit: Annotated[int | None, typer.Option(min=1, help="Annotate at most the first N FEID images.")] = None,
    max_cost: Annotated[float | None, typer.Option(min=0, help="Budget of each run in dollars.")] = None,
    max_calls: Annotated[int | None, typer.Option(min=1, help="Budget of each run in calls.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, max=512, help="Images annotated at once.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes of each run.")] = None,
) -> None:
    """Put a cron or interval schedule with annotate parameters on the annotate deployment (needs PREFECT_API_URL)."""
    from flows.schedules import create_schedule
    from tasks.schedule import AnnotateSchedule

    spec = AnnotateSchedule(run, limit=limit, max_cost_usd=max_cost, max_calls=max_calls, concurrency=concurrency, workers=workers)
    with _usage_errors("NAME / --cron / --interval / --run"):
        row = create_schedule(name, spec, cron=cron, interval=interval, timezone_name=timezone)
    console.print(f"[green]schedule {name}[/green] on annotate/annotate: {row.when}, parameters {row.parameters}")


@schedule_app.command("list")
def schedule_list() -> None:
    """The annotate deployment's schedules and their parameters."""
    from flows.schedules import list_schedules

    with _usage_errors("PREFECT_API_URL"):
        rows = list_schedules()
    table = Table("name", "when", "active", "parameters", title="schedules of annotate/annotate")
    for row in rows:
        table.add_row(str(row.slug), row.when, "yes" if row.active else "paused", str(row.parameters))
    console.print(table)


@schedule_app.command("pause")
def schedule_pause(
    name: str,
    resume: Annotated[bool, typer.Option("--resume", help="Resume a paused schedule instead.")] = False,
) -> None:
    """Pause a schedule (no new runs) or, with --resume, start it again."""
    from flows.schedules import set_active

    with _usage_errors("NAME"):
        set_active(name, active=resume)
    console.print(f"schedule {name} {'resumed' if resume else 'paused'}")


@schedule_app.command("delete")
def schedule_delete(name: str) -> None:
    """Remove a schedule."""
    from flows.schedules import delete_schedule

    with _usage_errors("NAME"):
        delete_schedule(name)
    console.print(f"schedule {name} deleted")
