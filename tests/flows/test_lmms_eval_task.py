"""FEAB as an lmms-eval task: the exported folder is what lmms-eval reads, and its hooks score
`seke benchmark`'s own answers to the same numbers.

lmms-eval itself does not install beside this project's torch (it requires torchvision), so the task
is loaded here the way lmms-eval 0.7.3 loads one: YAML with `!function module.name` resolved to a
file beside the YAML, keys checked against its TaskConfig, the dataset read with `load_from_disk`,
and `process_results` / each metric's `aggregation` called as its evaluator calls them.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import datasets
import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from core.config import Settings
from core.db import session_scope
from models.orm import BenchmarkAnswer, BenchmarkRun
from seke.cli import app
from tasks.benchmark.prompt import benchmark_prompt

pytestmark = pytest.mark.usefixtures("prefect_api")

#: lmms-eval 0.7.3's TaskConfig fields (lmms_eval/api/task.py): a key outside them fails its loader.
TASK_CONFIG_KEYS = {
    "task", "task_alias", "tag", "group", "group_alias", "dataset_path", "dataset_name", "dataset_kwargs",
    "training_split", "validation_split", "test_split", "fewshot_split", "full_docs", "process_results_use_image",
    "process_docs", "doc_to_visual", "doc_to_text", "doc_to_target", "doc_to_choice", "doc_to_messages",
    "process_results", "use_prompt", "description", "target_delimiter", "fewshot_delimiter", "fewshot_config",
    "num_fewshot", "metric_list", "output_type", "generation_kwargs", "repeats", "filter_list",
    "should_decontaminate", "doc_to_decontamination_query", "cluster_key", "score_key", "metadata",
    "lmms_eval_specific_kwargs", "model_specific_generation_kwargs", "model_specific_target_kwargs",
    "reasoning_tags", "auto_strip_thinking",
}  # fmt: skip


def load_task_yaml(path: Path) -> dict:
    """lmms-eval's `!function a.b`: function b of the file a.py beside the YAML."""

    class Loader(yaml.SafeLoader):
        pass

    def function(loader: yaml.Loader, node: yaml.Node):
        module_name, name = loader.construct_scalar(node).rsplit(".", 1)
        spec = importlib.util.spec_from_file_location(module_name, path.parent / f"{module_name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)

    Loader.add_constructor("!function", function)
    return yaml.load(path.read_text(), Loader=Loader)


def test_the_lmms_eval_task_scores_seke_benchmark_answers_the_same(cli_env: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    scored = runner.invoke(app, ["benchmark", "--endpoint", "--model", "gpt-4o", "--limit", "16"])
    assert scored.exit_code == 0, scored.output
    out = tmp_path / "lmms"
    exported = runner.invoke(app, ["export-benchmark", "--lmms-eval", str(out), "--limit", "16"])
    assert exported.exit_code == 0, exported.output
    assert "--include_path" in exported.output

    config = load_task_yaml(out / "feab.yaml")
    assert set(config) <= TASK_CONFIG_KEYS
    assert config["task"] == "feab" and config["output_type"] == "generate_until"
    assert config["dataset_kwargs"] == {"load_from_disk": True}
    for metric in config["metric_list"]:
        assert set(metric) == {"metric", "aggregation", "higher_is_better"} and callable(metric["aggregation"])
    docs = datasets.load_from_disk(config["dataset_path"])[config["test_split"]]
    assert len(docs) == 16

    with session_scope(cli_env) as session:
        run = session.scalars(select(BenchmarkRun)).one()
        answers = dict(
            session.execute(
                select(BenchmarkAnswer.image_id, BenchmarkAnswer.raw_text).where(
                    BenchmarkAnswer.benchmark_run_id == run.id
                )
            ).all()
        )
        expected = run.scores
    per_metric: dict[str, list] = {m["metric"]: [] for m in config["metric_list"]}
    for doc in docs:
        (visual,) = config["doc_to_visual"](doc)
        assert visual.mode == "RGB" and visual.size[0] > 0
        assert config["doc_to_text"](doc, None) == benchmark_prompt().text
        # The evaluator strips each generated answer before process_results.
        for metric, value in config["process_results"](doc, [answers[doc["image_id"]].strip()]).items():
            per_metric[metric].append(value)
    assert set(per_metric) == {"expression_accuracy", "uar", "au_f1_mean", "valence_mae", "arousal_mae"}
    for metric in config["metric_list"]:
        got = metric["aggregation"](per_metric[metric["metric"]])
        want = expected[metric["metric"]]
        assert (math.isnan(got) and want is None) or got == pytest.approx(want, abs=1e-9), metric["metric"]
    assert {m["metric"]: m["higher_is_better"] for m in config["metric_list"]}["valence_mae"] is False


def test_export_benchmark_refuses_a_non_empty_folder_and_leaves_nothing_half_written(
    cli_env: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    refused = CliRunner().invoke(app, ["export-benchmark", "--lmms-eval", str(out), "--limit", "2"])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert (out / "mine.txt").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_the_task_is_written_from_an_s3_store_image_by_image(s3_settings: Settings, tmp_path: Path) -> None:
    import io

    from PIL import Image

    from core.store import open_store
    from models.labels import FaceLabels
    from tasks.benchmark.lmms_eval_export import write_lmms_eval_task
    from tasks.benchmark.runner import FeabItem

    store = open_store(s3_settings)
    items = []
    for image_id, colour in enumerate(("red", "blue", "green"), start=1):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 12), colour).save(buffer, format="PNG")
        store.put_bytes(f"images/{image_id}.png", buffer.getvalue())
        items.append(FeabItem(image_id, f"images/{image_id}.png", FaceLabels(expression="happiness", valence=0.5)))
    out = write_lmms_eval_task(items, store, tmp_path / "task")
    docs = datasets.load_from_disk(str(out / "dataset"))["test"]
    assert [d["image_id"] for d in docs] == [1, 2, 3]
    assert [d["image"].getpixel((0, 0)) for d in docs] == [(255, 0, 0), (0, 0, 255), (0, 128, 0)]
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "feab.yaml", "manifest.json", "utils.py"]
