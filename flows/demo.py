"""The demo flow: the whole path on embedded defaults, one parent run in the Prefect UI.

Synthetic faces in every importer's native layout → import → subject split →
SEKE annotation → export → fine-tune a tiny LLaVA-OneVision on CPU → FEAB
benchmark. Every step resumes, so the demo is safe to re-run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.pipeline import PipelineResult, pipeline_flow
from core.config import get_settings
from core.db import display_url, session_factory, session_scope
from core.store import open_store
from tasks.demo_data import write_demo_data
from tasks.importers import READERS, ImportOptions
from tasks.ingest import IngestReport, ingest
from tasks.reports import image_stats
from tasks.split import SplitCounts, assign_splits
from tasks.train import DEMO_TRAIN_CONFIG
from flows.progress import advance

#: The demo's annotation run; the pipeline names its fine-tune and benchmark runs after it.
DEMO_RUN = "demo"


class DemoResult(BaseModel):
    """What the demo made and where it lives."""

    data_dir: Path
    written: dict[str, int]  # synthetic images per format
    imports: dict[str, IngestReport]  # per format
    splits: list[SplitCounts]
    image_stats: list[tuple[str, str, int, int, int, int, int]]  # tasks.reports.image_stats rows
    pipeline: PipelineResult
    database: str  # URL, password masked
    store: str  # the object store's URI
    export_dir: Path


@flow(name="demo", flow_run_name="demo")
def demo_flow(
    n: int = 200,
    train: bool = True,
    base_url: str | None = None,
    model: str | None = None,
    simulated: bool = False,
) -> DemoResult:
    """Run the demo against the endpoint (`base_url`/`model`, else SEKE_VLLM_*); `train` adds fine-tune + benchmark."""
    logger = get_run_logger()
    settings = get_settings()
    state = settings.resolved_state_dir
    data = state / "demo-data"
    written = write_demo_data(data, n=n, seed=0)
    logger.info("%s synthetic faces written to %s", sum(written.values()), data)
    sessions, store = session_factory(settings), open_store(settings)
    total = sum(written.values())
    imports = {
        name: ingest(
            READERS[name](data / name, ImportOptions()), data / name, sessions, store,
            on_item=lambda k: advance("import", total=total, step=k),
        )  # fmt: skip
        for name in written
    }
    with session_scope(settings) as session:
        splits = assign_splits(session, seed=0)
        stats = image_stats(session)
    pipeline = pipeline_flow(
        run_name=DEMO_RUN, base_url=base_url, model=model, simulated=simulated,
        train_config=DEMO_TRAIN_CONFIG, train=train,
    )  # fmt: skip
    return DemoResult(
        data_dir=data, written=written, imports=imports, splits=splits, image_stats=stats, pipeline=pipeline,
        database=display_url(settings), store=store.uri(""), export_dir=state / "exports" / DEMO_RUN,
    )  # fmt: skip
