"""The benchmark flow: score a checkpoint or an OpenAI-compatible endpoint on FEAB.

Publishes a table artifact in the layout of the paper's Table 2 (with the
paper's published rows beside ours, labelled as such) and PNG charts (per-AU
F1 bars, a radar like Figure 4) stored in the object store.
"""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack
from typing import Any, Literal

from huggingface_hub.utils import disable_progress_bars
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel
from sqlalchemy import select

from flows.progress import advance
from models.names import Name, slug
from models.orm import BenchmarkRun
from core.config import get_settings
from core.db import session_factory
from core.redact import redact_url
from core.store import open_store
from core.version import code_version
from tasks.annotate import store_prompt
from tasks.checkpoints import local_checkpoint
from tasks.benchmark.charts import au_f1_chart, radar_chart
from tasks.benchmark.metrics import BenchmarkScores
from tasks.benchmark.paper import table2_markdown, table_rows
from tasks.benchmark.prompt import benchmark_prompt
from tasks.vllm import VLLMClient, VLLMConfig
from tasks.benchmark.runner import (
    ENDPOINT_TEMPERATURE,
    answer_with_checkpoint,
    answer_with_endpoint,
    answered,
    feab_items,
    llm_parser,
    score_run,
    store_answer,
)

SIMULATOR_NOTE = "The model is the offline simulator: these numbers rehearse the pipeline, they are not a real model's quality."


class BenchmarkResult(BaseModel):
    """One benchmark run's scores, in Table 2's layout beside the paper's rows."""

    benchmark_run_id: int
    scores: BenchmarkScores
    table: str  # markdown, the paper's rows included and labelled
    rows: list[dict[str, Any]]  # Table 2's columns, one row per model
    charts: list[str]  # local PNG paths (also uploaded to the store)
    simulated: bool  # the model was the offline simulator: a rehearsal, not a model's quality


@flow(name="benchmark", flow_run_name="benchmark-{name}")
def benchmark_flow(
    name: Name,
    model: str,
    kind: Literal["checkpoint", "endpoint"] = "checkpoint",
    base_url: str | None = None,
    limit: int | None = None,
    training_run_id: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 200,
    concurrency: int = 8,
    parser_model: str | None = None,
    temperature: float = ENDPOINT_TEMPERATURE,
    simulated: bool = False,
) -> BenchmarkResult:
    """Score `model` on FEAB; re-running a name resumes its unanswered images.

    `parser_model` (a model at `base_url` / SEKE_VLLM_BASE_URL) re-reads answers that
    neither the JSON nor the text parser could read, as in the paper's Appendix C. `temperature` is the
    endpoint's sampling temperature (default: the one the paper's rows were measured at, see
    tasks/benchmark/runner.py); checkpoints answer greedily. `simulated` says the endpoint is the
    offline simulator (decided where the endpoint was chosen).
    """
    logger = get_run_logger()
    settings = get_settings()
    sessions, store = session_factory(settings), open_store(settings)
    prompt = benchmark_prompt()
    if kind == "endpoint":
        simulated = VLLMConfig.from_settings(settings, base_url=base_url, model=model, simulated=simulated).simulated
    config = {
        "kind": kind, "limit": limit, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "base_url": redact_url(base_url) if base_url else None, "parser_model": parser_model, "simulated": simulated,
        "temperature": temperature if kind == "endpoint" else 0.0,
    }  # fmt: skip
    with sessions.begin() as session:
        store_prompt(session, prompt)
        run = session.scalars(select(BenchmarkRun).where(BenchmarkRun.name == name)).one_or_none()
        if run is None:
            run = BenchmarkRun(
                name=name, model_kind=kind, model=model, training_run_id=training_run_id,
                prompt_sha256=prompt.sha256, config=config, code_version=code_version(),
            )  # fmt: skip
            session.add(run)
            session.flush()
        run_id = run.id
        items = feab_items(session, limit)
        done = answered(session, run_id)
        todo = [item for item in items if item.image_id not in done]
    if not items:
        raise ValueError("no FEAB images: import data and run `seke split` first")
    logger.info("benchmark %s: %s of %s FEAB images to answer with %s", name, len(todo), len(items), model)

    def client_for(model_name: str) -> VLLMClient:
        config = VLLMConfig.from_settings(settings, base_url=base_url, model=model_name)
        return VLLMClient(config.model_copy(update={"structured_output": False}))

    with ExitStack() as stack:
        fallback = llm_parser(stack.enter_context(client_for(parser_model))) if parser_model else None

        def on_answer(item, text: str) -> None:
            store_answer(sessions, run_id, item.image_id, text, fallback)
            advance("benchmark", total=len(todo))

        if todo and kind == "endpoint":
            client = stack.enter_context(client_for(model))
            answer_with_endpoint(
                todo, store=store, client=client, concurrency=concurrency, on_answer=on_answer, temperature=temperature
            )
        elif todo:
            disable_progress_bars()  # before transformers loads: the flow logs progress; bars would interleave with it
            model_dir = local_checkpoint(model, store, settings.resolved_state_dir / "cache" / "models")
            answer_with_checkpoint(
                todo, store=store, model_dir=model_dir, batch_size=batch_size, max_new_tokens=max_new_tokens, on_answer=on_answer
            )

    with sessions.begin() as session:
        scores = score_run(session, run_id, items)
        run = session.get(BenchmarkRun, run_id)
        run.scores = scores.model_dump(mode="json")
        run.status = "completed"
        run.finished_at = dt.datetime.now(dt.UTC)

    label = f"{name} ({model})"
    markdown = table2_markdown([(label, scores)])
    if simulated:
        markdown += "\n\n" + SIMULATOR_NOTE
    chart_dir = settings.resolved_state_dir / "benchmarks" / name
    charts = [au_f1_chart([(label, scores)], chart_dir / "au_f1.png"), radar_chart([(label, scores)], chart_dir / "radar.png")]
    chart_uris = []
    for chart in charts:
        key = f"benchmarks/{name}/{chart.name}"
        store.upload_file(key, chart)
        chart_uris.append(store.uri(key))
    key = f"benchmark-{slug(name)}"
    create_table_artifact(table_rows([(label, scores)]), key=key, description=f"FEAB scores of {model}, Table 2 layout")
    create_markdown_artifact(
        markdown + "\n\nCharts: " + ", ".join(chart_uris) + f"\n\nUnparseable answers: {scores.n_unparseable} of {scores.n}; "
        f"complete (expression, valence/arousal and AUs): {scores.n_complete} of {scores.n}",
        key=f"{key}-report",
    )
    return BenchmarkResult(
        benchmark_run_id=run_id,
        scores=scores,
        table=markdown,
        rows=table_rows([(label, scores)]),
        charts=[str(c) for c in charts],
        simulated=simulated,
    )
