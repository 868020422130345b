"""The `seke` command line (typer + rich)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.markdown import Markdown
from rich.table import Table

from models.schemas import SOURCES
from core.config import Settings, get_settings

if TYPE_CHECKING:
    from flows.benchmark import BenchmarkResult
    from simulator.server import SimulatorConfig
    from tasks.runs import RunReport

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
    format: Annotated[str, typer.Argument(help=f"one of: {', '.join(SOURCES)}")],
    path: Annotated[Path, typer.Argument(exists=True, file_okay=True, dir_okay=True)],
    frame_stride: Annotated[int, typer.Option(min=1, help="Video sources: keep every k-th frame.")] = 1,
    au_threshold: Annotated[int, typer.Option(min=0, max=5, help="DISFA: intensity at which an AU occurs.")] = 2,
    crop_faces: Annotated[bool, typer.Option(help="AffectNet: store the face-box crop.")] = False,
    frames_dir: Annotated[Path | None, typer.Option(help="Extracted video frames, if not in the default place.")] = None,
) -> None:
    """Import a dataset in its native layout: validate, store images, record human labels."""
    from core.db import session_factory
    from core.store import open_store
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
    from flows.runtime import prefect_settings

    _ready(settings)
    with prefect_settings(settings):
        yield


@app.command()
def annotate(
    run: Annotated[str, typer.Option("--run", help="Run name; re-running the same name resumes it.")],
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
) -> None:
    """Annotate the FEID images of a run with SEKE (prior prompt → UAMC → summary → rewrite)."""
    from flows.annotate import annotate_flow
    from tasks.config import AnnotateConfig
    from tasks.uamc import UAMCConfig

    settings = get_settings()
    config = AnnotateConfig(seed=seed, use_prior=not no_prior, uamc=UAMCConfig(enabled=not no_uamc, max_samples=max_samples))
    with _flows(settings), _endpoint(settings) as endpoint:
        result = annotate_flow(
            run_name=run,
            config=config,
            limit=limit,
            max_calls=max_calls,
            max_cost_usd=max_cost,
            concurrency=concurrency,
            shard_size=shard_size,
            images_per_task=images_per_task,
            **endpoint._asdict(),
        )
    _print_report(result)


def _print_report(report: RunReport) -> None:
    table = Table(show_header=False, title=f"run {report.name}: {report.status}")
    table.add_row("model", report.model + ("  [yellow](simulator)[/yellow]" if report.simulated else ""))
    table.add_row("images", ", ".join(f"{k}: {v}" for k, v in report.images.items()))
    table.add_row("calls", f"{report.calls} ({report.invalid_calls} invalid answers)")
    table.add_row("tokens", f"{report.tokens_in} in, {report.tokens_out} out")
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
        report = run_report(session, _find_run(session, name, "NAME").id)
    _print_report(report)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run name.")],
    out: Annotated[Path | None, typer.Option(help="Export folder (default: <state_dir>/exports/<run>).")] = None,
    reference_images: Annotated[bool, typer.Option(help="Reference images by store key instead of copying them.")] = False,
) -> None:
    """Write a run's FEID as LLaVA JSONL + provenance sidecar + Hugging Face dataset."""
    from core.db import session_scope
    from core.store import open_store
    from tasks.export import record_export

    settings = get_settings()
    _ready(settings)
    with session_scope(settings) as session:
        run_row = _find_run(session, run, "RUN")
        target = out or settings.resolved_state_dir / "exports" / run
        export_id, result = record_export(session, open_store(settings), run_row.id, target, copy_images=not reference_images)
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
    name: Annotated[str, typer.Option(help="Training run name; re-running it resumes.")],
    export_id: Annotated[int, typer.Option(help="Export to train on (`seke export` prints it).")],
    base_model: Annotated[str | None, typer.Option(help="Local checkpoint dir or store:<prefix>; empty builds the tiny model.")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of TrainConfig fields (defaults: paper §4.2).")] = None,
) -> None:
    """Fine-tune LLaVA-OneVision on an FEID export (full SFT; LoRA with {"use_lora": true})."""
    from flows.finetune import finetune_flow

    settings = get_settings()
    train_config = _train_config(config)
    with _flows(settings):
        result = finetune_flow(name=name, export_id=export_id, base_model=base_model, train_config=train_config)
    console.print(f"[green]trained[/green] {name}: loss {result.first_loss:.3f} → {result.last_loss:.3f} in {result.steps} steps; model at {result.final_uri}")


@app.command()
def benchmark(
    model: Annotated[str, typer.Option(help="Checkpoint dir / store:<prefix>, or the model name of an endpoint.")],
    name: Annotated[str | None, typer.Option(help="Benchmark run name (default: derived from the model).")] = None,
    endpoint: Annotated[bool, typer.Option(help="Score an OpenAI-compatible endpoint (SEKE_VLLM_BASE_URL or --base-url).")] = False,
    base_url: Annotated[str | None, typer.Option(help="Endpoint URL, overriding SEKE_VLLM_BASE_URL.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Score at most the first N FEAB images.")] = None,
    parser_model: Annotated[str | None, typer.Option(help="Endpoint model that re-reads answers no parser could read.")] = None,
) -> None:
    """Score a model on FEAB: expression accuracy/UAR/WAR, per-AU F1, valence/arousal MAE (Table 2 layout)."""
    from flows.benchmark import benchmark_flow

    settings = get_settings()
    run_name = name or "feab-" + model.replace("/", "-").replace(":", "-")
    with _flows(settings), ExitStack() as stack:
        simulated = False
        if endpoint and not (base_url or settings.vllm_base_url):
            # Nothing configured: rehearse against the simulator, whose model name replaces --model.
            base_url, model, simulated = stack.enter_context(_endpoint(settings))
        result = benchmark_flow(
            name=run_name, model=model, kind="endpoint" if endpoint else "checkpoint", base_url=base_url, limit=limit,
            parser_model=parser_model, simulated=simulated,
        )  # fmt: skip
    _print_scores(result)


def _print_scores(result: BenchmarkResult) -> None:
    """The headline columns of Table 2 (per-AU F1 is in the artifact, the charts and the database)."""
    columns = ["Method", "EXP Acc (%)", "AU All F1 (%)", "Valence MAE", "Arousal MAE"]
    table = Table(*columns, title="FEAB (rows marked (paper) are the SEKE paper's published Table 2, not this code)")
    for row in result.rows:
        table.add_row(*("–" if row[c] is None else f"{row[c]:.3f}" if "MAE" in c else str(row[c]) for c in columns))
    console.print(table)
    scores = result.scores
    console.print(f"{scores.n} FEAB images, {scores.n_unparseable} answers unparseable; charts: {', '.join(result.charts)}")
    if result.simulated:
        console.print("[yellow]The model is the offline simulator: a rehearsal, not a real model's quality.[/yellow]")


@app.command()
def pipeline(
    run: Annotated[str, typer.Option("--run", help="Annotation run name; the chain's other names derive from it.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Annotate at most the first N FEID images.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Local checkpoint dir or store:<prefix>; empty builds the tiny model.")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of TrainConfig fields.")] = None,
    via_deployments: Annotated[bool, typer.Option(help="Start fine-tune/benchmark deployments on a Prefect server instead of in-process.")] = False,
) -> None:
    """annotate → export → fine-tune → benchmark, with lineage recorded."""
    from flows.pipeline import pipeline_flow

    settings = get_settings()
    train_config = _train_config(config)
    with _flows(settings), _endpoint(settings) as endpoint:
        result = pipeline_flow(
            run_name=run, limit=limit, base_model=base_model, train_config=train_config, via_deployments=via_deployments,
            **endpoint._asdict(),
        )  # fmt: skip
    _print_report(result.annotate)
    if result.benchmark is not None:
        _print_scores(result.benchmark)
    elif result.finetune_flow_run_id is not None:
        console.print(f"fine-tune deployment started: flow run {result.finetune_flow_run_id}")


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
    with _flows(settings), _endpoint(settings) as endpoint:
        result = demo_flow(n=n, train=train, **endpoint._asdict())
    console.rule("1. synthetic faces in the six datasets' native layouts")
    console.print(f"{sum(result.written.values())} faces written to {result.data_dir}")
    console.rule("2. import (validate, store, record human labels) and subject split")
    imports = Table("format", "imported", "human labels", "already present", "refused", title="import")
    for name, report in result.imports.items():
        imports.add_row(name, str(report.imported), str(report.labels), str(report.already_present), str(len(report.problems)))
        for problem in report.problems:
            console.print(f"[yellow]refused[/yellow] {problem.path}: {problem.reason}")
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
    name: Annotated[str, typer.Option(help="Audit name; its 12 runs are named after it. Re-running resumes.")],
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
