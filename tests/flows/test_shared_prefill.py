"""UAMC's first samples as one request for n choices: the prompt billed once, each choice stored as
its own sample, and the same law; an endpoint that refuses n gets one call per sample (real
Postgres, the simulator over HTTP, the Prefect test API). Resume after a SIGKILL with shared
prefill is tests/flows/test_annotate.py::test_sigkilled_run_resumes_to_exactly_the_clean_run."""

from __future__ import annotations


import pytest
from core.config import Settings
from simulator.server import SimulatorConfig, running_simulator
from tasks.annotate import AnnotateConfig
from tests.flows.test_annotate import run_flow
from tests.flows.test_workers import query as rows
from tests.helpers import simulator_stats

pytestmark = pytest.mark.usefixtures("prefect_api")
IMAGES = 16



PER_RUN = """
SELECT r.name, count(*), count(*) FILTER (WHERE (c.request_params->>'choice_index')::int > 0),
       sum(c.tokens_in), count(DISTINCT c.image_id) FILTER (WHERE c.stage = 'prior-sample')
FROM vllm_calls c JOIN runs r ON r.id = c.run_id GROUP BY r.name ORDER BY r.name
"""


def test_first_samples_share_one_request_and_each_choice_is_a_sample(fresh: Settings) -> None:
    with running_simulator(SimulatorConfig()) as base_url:
        alone = run_flow(base_url, "alone", limit=IMAGES, config=AnnotateConfig(seed=3))
        paid_alone = simulator_stats(base_url)["requests"]
        shared = run_flow(base_url, "shared", limit=IMAGES, config=AnnotateConfig(seed=3, shared_prefill=True))
        paid_shared = simulator_stats(base_url)["requests"] - paid_alone
    assert alone.images == shared.images == {"done": IMAGES}
    (_, calls_alone, shared_alone, tokens_alone, _), (_, calls, choices, tokens, sampled) = rows(fresh, PER_RUN)
    assert shared_alone == 0 and alone.shared_choices is None
    # One request answered both first samples of every image that needed samples: one request fewer each.
    assert choices == sampled > 0 and shared.shared_choices == choices and not shared.shared_prefill_refused
    assert paid_alone == calls_alone and paid_shared == calls - choices
    # The second choice is stored as sample 1, linked to its request: n=2, billed with sample 0's prompt.
    pairs = rows(fresh, """
        SELECT a.request_params->>'n', b.request_params->>'n', b.request_params->>'choice_index', b.tokens_in,
               a.tokens_in > 0, a.request_params->>'seed' = b.request_params->>'seed'
        FROM vllm_calls a JOIN vllm_calls b USING (run_id, image_id, stage) JOIN runs r ON r.id = a.run_id
        WHERE r.name = 'shared' AND a.stage = 'prior-sample' AND a.sample_index = 0 AND b.sample_index = 1
    """)  # fmt: skip
    assert pairs and set(pairs) == {("2", "2", "1", 0, True, True)}
    assert tokens < tokens_alone  # the shared requests' prompts were billed once
    # The same law: the same number of samples drawn per image in distribution (every image drew 2 first).
    assert min(shared.samples_histogram) >= 0 and sum(shared.samples_histogram.values()) == IMAGES


def test_an_endpoint_refusing_n_gets_one_call_per_sample_and_the_report_says_so(fresh: Settings) -> None:
    with running_simulator(SimulatorConfig(refuse_n=True)) as base_url:
        report = run_flow(base_url, "refused", limit=6, concurrency=1, config=AnnotateConfig(shared_prefill=True))
        paid = simulator_stats(base_url)["requests"]  # answered requests (the refused one was not answered)
    assert report.status == "completed" and report.images == {"done": 6}
    assert report.shared_prefill_refused and report.shared_choices == 0 and paid == report.calls
    # One image at a time: the first request for n is refused, every later sample is asked on its own.
    (refused,) = rows(fresh, "SELECT count(*) FROM vllm_calls WHERE request_params ? 'shared_prefill_refused'")[0]
    assert refused == 1
    assert rows(fresh, "SELECT count(*) FROM vllm_calls WHERE request_params ? 'n'") == [(0,)]
