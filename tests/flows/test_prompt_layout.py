"""The cached prompt layout against the paper's: the same images, the same labels, and what a
provider's prefix cache serves (real Postgres, the simulator over HTTP, the Prefect test API).

The simulator's answer law depends on what a prompt asks (stage, known labels, requested
descriptions), not on its wording; its draws are seeded by the prompt text, as a real model's
differ with any change of prompt. So the layouts must agree with each other as often as two
seeds of the same layout do; how wording moves a real model's labels is for a real endpoint."""

from __future__ import annotations


import pytest
from sqlalchemy import select, text

from core.config import Settings
from core.db import session_scope
from models.orm import Annotation, Image, Prompt, Run, VLLMCall
from simulator.server import SimulatorConfig, running_simulator
from tasks.annotate import AnnotateConfig
from tests.flows.test_annotate import run_flow

pytestmark = pytest.mark.usefixtures("prefect_api")



def labels(settings: Settings, run_name: str) -> list[tuple]:
    with session_scope(settings) as session:
        rows = session.execute(
            select(Image.sha256, Annotation.field, Annotation.value_text, Annotation.value_number, Annotation.value_bool, Annotation.provenance)
            .join(Image, Image.id == Annotation.image_id)
            .join(Run, Run.id == Annotation.run_id)
            .where(Run.name == run_name)
            .order_by(Image.sha256, Annotation.field)
        ).all()
    return [tuple(row) for row in rows]


def agreement(a: list[tuple], b: list[tuple]) -> float:
    """The share of generated (image, field) values two runs agree on."""
    assert [row[:2] for row in a] == [row[:2] for row in b]  # the same fields of the same images
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x[-1] == "generated"]
    return sum(x[2:5] == y[2:5] or (x[3] is not None and abs(x[3] - y[3]) <= 0.15) for x, y in pairs) / len(pairs)


def test_the_layouts_agree_as_two_seeds_do_and_the_cached_one_is_served_from_the_cache(fresh: Settings) -> None:
    runs = {"paper": ("paper", 0), "paper-seed-1": ("paper", 1), "cached": ("cached", 0)}
    with running_simulator(SimulatorConfig()) as base_url:
        for name, (layout, seed) in runs.items():
            report = run_flow(base_url, name, limit=20, config=AnnotateConfig(seed=seed, prompt_layout=layout))
            assert report.status == "completed" and report.images == {"done": 20}
    across_layouts = agreement(labels(fresh, "paper"), labels(fresh, "cached"))
    across_seeds = agreement(labels(fresh, "paper"), labels(fresh, "paper-seed-1"))
    # 20 images × ~10 generated fields: a share's standard error is ~0.03; 0.1 is three of them.
    assert across_layouts >= across_seeds - 0.1, (across_layouts, across_seeds)

    with session_scope(fresh) as session:
        totals = dict(
            session.execute(
                text("SELECT r.name, sum(c.tokens_cached) FROM vllm_calls c JOIN runs r ON r.id = c.run_id GROUP BY r.name")
            ).all()
        )
        # OpenAI's rules: a prefix is cached from 1024 tokens on. The paper's calls share no such prefix;
        # the cached layout's summary calls (system text, image, then the samples) are long enough to reuse it.
        assert totals["paper"] == 0 and totals["cached"] > 0
        # Provenance: the stored system text and call text are exactly the messages sent.
        call = session.execute(
            select(VLLMCall).join(Run, Run.id == VLLMCall.run_id).where(Run.name == "cached", VLLMCall.sample_index == 1)
        ).scalars().first()
        system = session.get(Prompt, call.request_params["system_prompt_sha256"])
        user = session.get(Prompt, call.prompt_sha256)
        assert system.name == "seke-system" and user.name in ("seke-prior-cached", "seke-summary-cached", "seke-rewrite-cached")
        assert call.request_params["prompt_cache_key"].startswith("seke-")
        assert "Happiness is marked by AU6" in system.text and "Happiness is marked" not in user.text
