"""The `seke` command line (typer + rich)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from models.schemas import SOURCES
from core.config import Settings, get_settings

if TYPE_CHECKING:
    from simulator.server import SimulatorConfig

app = typer.Typer(help="SEKE: facial-emotion instruction data with vision LLMs.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
images_app = typer.Typer(help="Imported images.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(images_app, name="images")

console = Console()
#: --verbose: Prefect's own logs on the console too (they always go to the API and <state_dir>/logs/prefect.log).
_verbose = False


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs on the console too.")] = False,
) -> None:
    global _verbose
    _verbose = verbose


def _bars():
    """One rich bar per long stage (done/total, rate, $, ETA), fed by flows/progress.py."""
    from flows.progress import ProgressBars

    return ProgressBars(console)


def _ready(settings: Settings) -> None:
    """Bring the schema to head: every command works on a fresh state directory."""
    from core.migrate import upgrade

    upgrade(settings)


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
    from flows.progress import advance

    with _bars():
        report = ingest(
            READERS[format](path, options), path, session_factory(settings), open_store(settings), on_item=lambda: advance("import")
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
    table = Table("source", "split", "images", "subjects", "expression", "valence/arousal", "AUs", title="images")
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)


runs_app = typer.Typer(help="Annotation runs.", no_args_is_help=True)
simulator_app = typer.Typer(help="The offline OpenAI-compatible simulator.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(simulator_app, name="simulator")


def _prefect_defaults() -> None:
    """Prefect for the flows this process runs (core/logs.py): before Prefect is imported."""
    from core.logs import embedded_prefect

    embedded_prefect(get_settings().resolved_state_dir, verbose=_verbose)


@contextmanager
def _endpoint(settings: Settings, simulator_config: SimulatorConfig | None = None) -> Iterator[tuple[str | None, str | None]]:
    """(base_url, model) overrides: none when SEKE_VLLM_BASE_URL is set, else a simulator started here."""
    if settings.vllm_base_url:
        yield None, None
        return
    from simulator.server import SimulatorConfig, running_simulator

    config = simulator_config or SimulatorConfig()
    with running_simulator(config) as base_url:
        console.print(
            f"[yellow]No SEKE_VLLM_BASE_URL: using the built-in simulator at {base_url} "
            "(rehearsal only: its labels are not a real model's quality).[/yellow]"
        )
        yield base_url, config.model_name


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
    plan: Annotated[bool, typer.Option("--plan", help="Print expected calls, tokens, dollars and time; annotate nothing.")] = False,
    pilot: Annotated[int | None, typer.Option(min=1, help="With --plan: measure on K of the run's images first (paid, run <run>-pilot).")] = None,
) -> None:
    """Annotate the FEID images of a run with SEKE (prior prompt → UAMC → summary → rewrite)."""
    _prefect_defaults()
    from flows.annotate import annotate_flow
    from tasks.annotate import AnnotateConfig
    from tasks.uamc import UAMCConfig

    settings = get_settings()
    _ready(settings)
    config = AnnotateConfig(seed=seed, use_prior=not no_prior, uamc=UAMCConfig(enabled=not no_uamc, max_samples=max_samples))
    if pilot and not plan:
        raise typer.BadParameter("--pilot goes with --plan", param_hint="--pilot")
    if plan:
        from flows.plan import plan_annotate

        with _endpoint(settings) if pilot else nullcontext((None, None)) as (base_url, model):
            _print_plan(
                plan_annotate(run, config=config, limit=limit, concurrency=concurrency, pilot=pilot, base_url=base_url, model=model)
            )
        return
    with _endpoint(settings) as (base_url, model), _bars():
        result = annotate_flow(
            run_name=run,
            config=config,
            limit=limit,
            max_calls=max_calls,
            max_cost_usd=max_cost,
            concurrency=concurrency,
            shard_size=shard_size,
            images_per_task=images_per_task,
            base_url=base_url,
            model=model,
        )
    _print_report(result)


def _print_plan(plan) -> None:
    """The plan's ranges, one row each."""

    def span(r, fmt: str) -> str:
        return f"{fmt.format(r.low)} – {fmt.format(r.high)}"

    def hours(seconds: float) -> str:
        return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"

    table = Table(show_header=False, title=f"plan: {plan.images} images ({plan.images_to_sample} to sample), from {plan.basis}")
    table.add_row("calls", span(plan.calls, "{:,.0f}"))
    table.add_row("tokens in", span(plan.tokens_in, "{:,.0f}"))
    table.add_row("tokens out", span(plan.tokens_out, "{:,.0f}"))
    table.add_row("cost", span(plan.cost_usd, "${:,.2f}"))
    table.add_row("wall time", f"{hours(plan.wall_s.low)} – {hours(plan.wall_s.high)}")
    console.print(table)
    for note in plan.notes:
        console.print(f"[dim]{note}[/dim]")


def _print_report(report: dict) -> None:
    table = Table(show_header=False, title=f"run {report['name']}: {report['status']}")
    table.add_row("model", report["model"] + ("  [yellow](simulator)[/yellow]" if "simulator" in report["model"] else ""))
    table.add_row("images", ", ".join(f"{k}: {v}" for k, v in report["images"].items()))
    table.add_row("calls", f"{report['calls']} ({report['invalid_calls']} invalid answers)")
    table.add_row("tokens", f"{report['tokens_in']} in, {report['tokens_out']} out")
    table.add_row("cost", f"${report['cost_usd']:.4f}")
    table.add_row("samples per image", ", ".join(f"{k}: {v}" for k, v in report["samples_histogram"].items()))
    table.add_row("mean uncertainty", ", ".join(f"{k}: {v:.3f}" for k, v in report["mean_uncertainty"].items()))
    if report["failures"]:
        table.add_row("failures", ", ".join(f"{k}: {v}" for k, v in report["failures"].items()))
    if report["stop_reason"]:
        table.add_row("stopped", report["stop_reason"])
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
    from sqlalchemy import select

    from models.orm import Run
    from core.db import session_scope

    settings = get_settings()
    _ready(settings)
    table = Table(title="runs, newest first")
    for column in ("name", "kind", "status", "model", "created"):
        table.add_column(column, no_wrap=True)
    table.add_column("stop reason", overflow="fold")
    with session_scope(settings) as session:
        for run in session.scalars(select(Run).order_by(Run.id.desc())):
            table.add_row(run.name, run.kind, run.status, run.model, f"{run.created_at:%m-%d %H:%M}", run.stop_reason or "")
    console.print(table)


@runs_app.command("show")
def runs_show(name: str) -> None:
    """A run's status, calls, cost, samples per image, uncertainty and failures."""
    from dataclasses import asdict

    from core.db import session_scope
    from tasks.runs import run_report

    settings = get_settings()
    _ready(settings)
    with session_scope(settings) as session:
        _print_report(asdict(run_report(session, _find_run(session, name, "NAME").id)))


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


#: The demo fine-tunes a tiny randomly initialised model for a few minutes on CPU: the paper's
#: lr 1e-5 (meant for a pretrained 7B model) would not move it, so the demo uses a larger one.
DEMO_TRAIN_CONFIG = {"learning_rate": 2e-3, "epochs": 3, "batch_size": 4, "save_steps": 25, "warmup_ratio": 0.03}


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
    _prefect_defaults()
    from flows.finetune import finetune_flow

    settings = get_settings()
    _ready(settings)
    with _bars():
        result = finetune_flow(name=name, export_id=export_id, base_model=base_model, train_config=_train_config(config))
    console.print(f"[green]trained[/green] {name}: loss {result['first_loss']:.3f} → {result['last_loss']:.3f} in {result['steps']} steps; model at {result['final_uri']}")


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
    _prefect_defaults()
    from flows.benchmark import benchmark_flow

    settings = get_settings()
    _ready(settings)
    run_name = name or "feab-" + model.replace("/", "-").replace(":", "-")
    with ExitStack() as stack:
        stack.enter_context(_bars())
        if endpoint and not (base_url or settings.vllm_base_url):
            # Nothing configured: rehearse against the simulator, whose model name replaces --model.
            base_url, model = stack.enter_context(_endpoint(settings))
        result = benchmark_flow(
            name=run_name, model=model, kind="endpoint" if endpoint else "checkpoint", base_url=base_url, limit=limit,
            parser_model=parser_model,
        )  # fmt: skip
    _print_scores(result)


def _print_scores(result: dict) -> None:
    """The headline columns of Table 2 (per-AU F1 is in the artifact, the charts and the database)."""
    columns = ["Method", "EXP Acc (%)", "AU All F1 (%)", "Valence MAE", "Arousal MAE"]
    table = Table(*columns, title="FEAB (rows marked (paper) are the SEKE paper's published Table 2, not this code)")
    for row in result["rows"]:
        table.add_row(*("–" if row[c] is None else f"{row[c]:.3f}" if "MAE" in c else str(row[c]) for c in columns))
    console.print(table)
    scores = result["scores"]
    console.print(f"{scores['n']} FEAB images, {scores['n_unparseable']} answers unparseable; charts: {', '.join(result['charts'])}")
    if "simulator" in result["table"]:
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
    _prefect_defaults()
    from flows.pipeline import pipeline_flow

    settings = get_settings()
    _ready(settings)
    with _endpoint(settings) as (base_url, model), _bars():
        result = pipeline_flow(
            run_name=run, limit=limit, base_url=base_url, model=model, base_model=base_model,
            train_config=_train_config(config), via_deployments=via_deployments,
        )  # fmt: skip
    _print_report(result["annotate"])
    if "benchmark" in result:
        _print_scores(result["benchmark"])
    elif "message" in result:
        console.print(result["message"])


@app.command()
def demo(
    n: Annotated[int, typer.Option("--n", min=40, help="Synthetic faces to make.")] = 200,
    train: Annotated[bool, typer.Option(help="Fine-tune the tiny model and benchmark it after annotating.")] = True,
) -> None:
    """The whole path on embedded defaults: synthetic data → import → split → SEKE on the simulator →
    export → fine-tune a tiny LLaVA-OneVision on CPU → FEAB benchmark. Safe to re-run: every step resumes."""
    _prefect_defaults()
    from flows.pipeline import pipeline_flow
    from core.db import display_url, session_factory, session_scope
    from core.store import open_store
    from tasks.demo_data import write_demo_data
    from tasks.importers import READERS, ImportOptions
    from tasks.ingest import ingest
    from tasks.split import assign_splits

    settings = get_settings()
    _ready(settings)
    state = settings.resolved_state_dir
    data = state / "demo-data"
    console.rule("1. synthetic faces in the six datasets' native layouts")
    counts = write_demo_data(data, n=n, seed=0)
    console.print(f"{sum(counts.values())} faces written to {data}")
    console.rule("2. import (validate, store, record human labels) and subject split")
    sessions, store = session_factory(settings), open_store(settings)
    from flows.progress import advance

    problems = []
    with _bars():
        for name in READERS:
            report = ingest(
                READERS[name](data / name, ImportOptions()), data / name, sessions, store,
                on_item=lambda: advance("import", total=sum(counts.values())),
            )  # fmt: skip
            problems += report.problems
    for problem in problems:
        console.print(f"[yellow]refused[/yellow] {problem.path}: {problem.reason}")
    with session_scope(settings) as session:
        assign_splits(session, seed=0)
    images_stats()
    console.rule("3. SEKE annotation on the simulator" + (", fine-tune and benchmark" if train else ""))
    with _endpoint(settings) as (base_url, model), _bars():
        if train:
            result = pipeline_flow(run_name="demo", base_url=base_url, model=model, train_config=DEMO_TRAIN_CONFIG)
        else:
            from flows.annotate import annotate_flow
            from flows.pipeline import export_for

            result = {"annotate": annotate_flow(run_name="demo", base_url=base_url, model=model)}
            result["export_id"] = export_for("demo")
    _print_report(result["annotate"])
    if "benchmark" in result:
        console.rule("4. FEAB benchmark of the fine-tuned tiny model")
        _print_scores(result["benchmark"])
    console.rule("where everything is")
    console.print(f"database:  {display_url(settings)}")
    console.print(f"store:     {store.uri('')}")
    console.print(f"export:    {state / 'exports' / 'demo'} (feid.jsonl, provenance.jsonl, hf/)")
    if "finetune" in result:
        console.print(f"model:     {result['finetune']['final_uri']}")
    console.print("provenance: SELECT * FROM annotation_provenance WHERE run_name = 'demo' LIMIT 20;  (see README)")
    console.print(
        "Prefect UI: run `prefect server start` in another terminal and `export PREFECT_API_URL=http://127.0.0.1:4200/api` "
        "before `seke demo`; its runs then show at http://127.0.0.1:4200"
    )
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
    _prefect_defaults()
    from flows.audit import audit_flow

    settings = get_settings()
    _ready(settings)
    with _endpoint(settings) as (base_url, model):
        result = audit_flow(name=name, limit=limit, base_url=base_url, model=model, seed=seed, concurrency=concurrency)
    console.print(Markdown(result["table"]))


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
