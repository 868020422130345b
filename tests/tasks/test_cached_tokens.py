"""What the client records and bills of a provider's prompt cache: cached tokens per call, at the cached rate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from models.answers import sample_answer_model
from models.labels import FaceLabels, Task
from simulator.cache import MIN_TOKENS, STEP
from simulator.server import SimulatorConfig, running_simulator
from tasks.prices import MODEL_PRICES, model_prices
from tasks.prompts import RenderedPrompt
from tasks.vllm import VLLMClient, VLLMConfig
from tests.simulator.test_prompt_cache import long_text
from tests.simulator.test_simulator import face_png

TRUTH = FaceLabels(expression="happiness", valence=0.6, arousal=0.3, aus={"AU6": True, "AU12": True})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_simulator(SimulatorConfig()) as base_url:
        yield base_url


def test_the_client_records_cached_tokens_and_bills_them_at_the_cached_rate(url: str) -> None:
    image = face_png(TRUTH)
    text = long_text("client", 1200)
    prompt = RenderedPrompt("test-long", "1", text, "0" * 64)
    config = VLLMConfig(base_url=url, model="seke-simulator", price_in_per_mtok=2.5, price_cached_in_per_mtok=1.25,
                        price_out_per_mtok=10.0)  # fmt: skip
    with VLLMClient(config) as client:
        ask = lambda: client.complete(  # noqa: E731
            "prior-sample", prompt, image=image, answer_model=sample_answer_model(list(Task)), temperature=1.0,
            seed=1, max_tokens=400,
        )  # fmt: skip
        first, second = ask(), ask()
    assert first.tokens_cached == 0 and second.tokens_cached >= MIN_TOKENS
    assert second.tokens_cached % STEP == 0 and second.tokens_cached <= second.tokens_in
    fresh = second.tokens_in - second.tokens_cached
    assert second.cost_usd == pytest.approx(
        (fresh * 2.5 + second.tokens_cached * 1.25 + second.tokens_out * 10.0) / 1e6
    )


def test_the_cached_rate_defaults_to_the_models_share_of_the_input_price() -> None:
    assert VLLMConfig(base_url="http://x/v1", model="gpt-4.1", price_in_per_mtok=2.0).price_cached_in_per_mtok == 0.5
    assert VLLMConfig(base_url="http://x/v1", model="gpt-4o-2024-08-06").price_cached_in_per_mtok == 1.25
    assert VLLMConfig(
        base_url="http://x/v1", model="gpt-4o-mini", price_in_per_mtok=0.15
    ).price_cached_in_per_mtok == pytest.approx(0.075)


def test_the_price_table_knows_dated_snapshots_and_splits_a_bill() -> None:
    assert model_prices("gpt-4o-2024-08-06") == MODEL_PRICES["gpt-4o"]
    assert model_prices("seke-simulator") is None
    # 1M prompt tokens of which 600k cached, 100k out, at gpt-4o's rates: 0.4·2.50 + 0.6·1.25 + 0.1·10.
    assert MODEL_PRICES["gpt-4o"].cost_usd(1_000_000, 600_000, 100_000) == pytest.approx(2.75)


@pytest.mark.usefixtures("clean_db")
def test_cached_tokens_are_stored_per_call_and_summed_in_the_run_report(settings, url: str) -> None:
    """Real calls to the simulator, stored by the run's writer; the report reads the trigger-kept totals."""
    import asyncio

    import psycopg

    from core.db import database_url, session_scope
    from models.orm import Image, SourceDataset, Subject, VLLMCall
    from models.vocab import Stage
    from tasks.annotate import ImageState, RunWriter, WriteBuffer, conninfo
    from tasks.config import AnnotateConfig
    from tasks.runs import open_run, run_report

    with session_scope(settings) as session:
        source = SourceDataset(name="test")
        session.add(source)
        session.flush()
        subject = Subject(source_id=source.id, external_id="s1")
        session.add(subject)
        session.flush()
        image = Image(sha256="a" * 64, object_key="k", width=48, height=48, format="PNG", byte_size=1,
                      original_path="x.png", source_id=source.id, subject_id=subject.id, split="FEID")  # fmt: skip
        session.add(image)
        session.flush()
        image_id = image.id
        run_id = open_run(session, "cached", config=AnnotateConfig(), model="seke-simulator", endpoint={},
                          code_version="test", limit=None, image_ids=[image_id])  # fmt: skip
        session.commit()
    prompt = RenderedPrompt("test-long", "1", long_text("stored", 1200), "1" * 64)
    with VLLMClient(VLLMConfig(base_url=url, model="seke-simulator")) as client:
        results = [
            client.complete(
                "prior-sample",
                prompt,
                image=face_png(TRUTH),
                answer_model=sample_answer_model(list(Task)),
                temperature=1.0,
                seed=i,
                max_tokens=400,
            )  # fmt: skip
            for i in range(3)
        ]
    state = ImageState(image_id, "a" * 64, "k", FaceLabels(), {}, {}, {}, set())

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(conninfo(database_url(settings))) as connection:
            writer = RunWriter(connection, run_id, WriteBuffer())
            for index, result in enumerate(results):
                await writer.add_call(state, (Stage.SAMPLE, index), prompt, result)
            await writer.close()

    asyncio.run(write())
    with session_scope(settings) as session:
        stored = list(
            session.scalars(
                select(VLLMCall.tokens_cached).where(VLLMCall.run_id == run_id).order_by(VLLMCall.sample_index)
            )
        )
        report = run_report(session, run_id)
    assert stored == [r.tokens_cached for r in results] and stored[0] == 0 and stored[1] > 0
    assert report.tokens_cached == sum(stored) and report.tokens_in == sum(r.tokens_in for r in results)
    assert report.cost_usd == pytest.approx(sum(r.cost_usd for r in results), abs=1e-5)
