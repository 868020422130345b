"""The review queue on a real run: simulator over HTTP, real Postgres (migration 0009's view)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.db import session_scope
from models.labels import ACTION_UNITS
from models.orm import Review, Run
from simulator.server import SimulatorConfig, running_simulator
from tasks.review import review_queue
from tests.helpers import prepared_settings, use

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def annotated(postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    from flows.annotate import annotate_flow

    settings = prepared_settings(postgres_admin_url, tmp_path, demo)
    use(settings, monkeypatch)
    with running_simulator(SimulatorConfig()) as base_url:
        annotate_flow(run_name="v1", base_url=base_url, model="seke-simulator", concurrency=4, limit=8)
    return settings


def test_queue_orders_by_uncertainty_filters_and_skips_reviewed(annotated: Settings) -> None:
    with session_scope(annotated) as session:
        items = review_queue(session, "v1", top=1000)
        assert items
        known = [i.uncertainty for i in items if i.uncertainty is not None]
        assert known == sorted(known, reverse=True)
        assert {i.field for i in review_queue(session, "v1", 1000, field_group="va")} <= {"valence", "arousal"}
        assert {i.field for i in review_queue(session, "v1", 1000, field_group="aus")} <= set(ACTION_UNITS)
        assert all(i.flags for i in review_queue(session, "v1", 1000, inconsistent=True))
        assert review_queue(session, "v1", 1000, source="no-such-dataset") == []
        assert len(review_queue(session, "v1", 3)) == 3
        first = items[0]
        run_id = session.query(Run.id).filter(Run.name == "v1").scalar()
        session.add(
            Review(
                run_id=run_id,
                image_id=first.image_id,
                field=first.field,
                model_value=first.value,
                uncertainty=first.uncertainty,
                reviewer="ann",
                decision="accept",
                call_id=first.call_id,
            )
        )
        session.flush()
        after = review_queue(session, "v1", top=1000)
        assert (first.image_id, first.field) not in {(i.image_id, i.field) for i in after}
        assert len(after) == len(items) - 1
        with pytest.raises(ValueError, match="no run named"):
            review_queue(session, "missing", 5)
        with pytest.raises(ValueError, match="unknown field group"):
            review_queue(session, "v1", 5, field_group="mouth")


def test_label_studio_export_has_config_and_predictions(annotated: Settings, tmp_path: Path) -> None:
    import json
    import xml.etree.ElementTree as ET

    from core.store import open_store
    from tasks.review_export import export_label_studio

    with session_scope(annotated) as session:
        config, tasks_file = export_label_studio(session, open_store(annotated), "v1", tmp_path / "ls")
    root = ET.fromstring(config.read_text())
    names = {el.get("name"): el.tag for el in root}
    assert names == {
        "image": "Image",
        "expression": "Choices",
        "aus": "Choices",
        "valence": "Number",
        "arousal": "Number",
        "description": "TextArea",
    }
    assert root.find("Choices[@name='aus']").get("choice") == "multiple"
    tasks = json.loads(tasks_file.read_text())
    assert tasks
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"].startswith("v1/")
        assert prediction["score"] == pytest.approx(1 - task["data"]["uncertainty"])
        # Fields a dataset labels itself are human, not predicted: only generated fields appear.
        kinds = {r["from_name"]: r["type"] for r in prediction["result"]}
        assert kinds and all(
            kinds[name] == ("number" if name in ("valence", "arousal") else "choices") for name in kinds
        )
        assert task["data"]["image"]


def test_recorded_decisions_leave_the_queue_and_a_bad_file_writes_nothing(annotated: Settings) -> None:
    from tasks.review import ReviewDecision, ReviewFileError, record_reviews

    with session_scope(annotated) as session:
        queue = review_queue(session, "v1", top=1000)
        au = next(i for i in queue if i.field in ACTION_UNITS)
        valence = next(i for i in queue if i.field == "valence")
        good = [
            ReviewDecision("task 1", "v1", au.image_id, au.field, "ann", "correct", not au.value),
            ReviewDecision("task 2", "v1", valence.image_id, "valence", "ann", "accept"),
        ]
        # One bad item among good ones: nothing of the file is stored.
        for bad, reason in [
            (
                ReviewDecision("task 3", "v1", valence.image_id, "valence", "ann", "correct", 3.0),
                "task 3, field valence",
            ),
            (ReviewDecision("task 4", "v1", au.image_id, au.field, "ann", "correct", "yes"), "task 4, field AU"),
            (ReviewDecision("task 5", "v1", au.image_id, "mouth", "ann", "accept"), "task 5: unknown field"),
            (ReviewDecision("task 6", "v2", au.image_id, au.field, "ann", "accept"), "no run named 'v2'"),
            (ReviewDecision("task 7", "v1", au.image_id, au.field, "ann", "maybe"), "decision 'maybe'"),
            (ReviewDecision("task 8", "v1", 10**9, au.field, "ann", "accept"), "generated no AU"),
        ]:
            with pytest.raises(ReviewFileError, match=reason):
                record_reviews(session, [*good, bad])
            assert session.query(Review).count() == 0
        assert record_reviews(session, good) == 2
        rows = {r.field: r for r in session.query(Review)}
        assert rows[au.field].corrected_value is (not au.value)
        assert rows[au.field].model_value is au.value
        assert rows[au.field].call_id == au.call_id
        assert rows["valence"].corrected_value is None
        left = {(i.image_id, i.field) for i in review_queue(session, "v1", top=1000)}
        assert (au.image_id, au.field) not in left and len(left) == len(queue) - 2
        # A later decision on the same field replaces the earlier one.
        record_reviews(session, [ReviewDecision("task 9", "v1", valence.image_id, "valence", "bo", "correct", -0.5)])
        session.expire_all()
        again = session.query(Review).filter(Review.field == "valence").one()
        assert (again.reviewer, again.decision, again.corrected_value) == ("bo", "correct", -0.5)


def _label_studio_export(tasks: list[dict], answers: dict[int, list[dict]]) -> list[dict]:
    """Tasks as Label Studio exports them after people annotated some: ids, annotations with result items."""
    exported = []
    for number, task in enumerate(tasks, start=1):
        row = {"id": number, "data": task["data"], "predictions": task["predictions"], "annotations": []}
        for result in answers.get(task["data"]["image_id"], []):
            row["annotations"].append({
                "id": len(row["annotations"]) + 10 * number, "completed_by": {"id": 1, "email": "ann@example.org"},
                "was_cancelled": result.pop("cancelled", False), "result": result["items"],
                "created_at": result["at"], "updated_at": result["at"], "lead_time": 12.5,
            })  # fmt: skip
        exported.append(row)
    return exported


def test_a_label_studio_export_comes_back_as_decisions_or_not_at_all(
    annotated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import re

    from typer.testing import CliRunner

    from core.store import open_store
    from seke.cli import app
    from tasks.review_export import label_studio_tasks

    with session_scope(annotated) as session:
        tasks = label_studio_tasks(session, open_store(annotated), "v1")
        queued = len(review_queue(session, "v1", top=10_000))
    predicted = {
        t["data"]["image_id"]: {r["from_name"]: r["value"] for r in t["predictions"][0]["result"]} for t in tasks
    }
    by_image: dict[int, dict] = {}
    with session_scope(annotated) as session:
        for item in review_queue(session, "v1", top=10_000):
            by_image.setdefault(item.image_id, {})[item.field] = item.value
    # The first image has an AU the run found absent; the second a generated valence, if any has one.
    first = next(i for i in predicted if any(au in by_image[i] and not by_image[i][au] for au in ACTION_UNITS))
    generated = by_image[first]
    second = next((i for i in predicted if i != first and "valence" in by_image[i]), None)
    second = second or next(i for i in predicted if i != first)
    third = next(i for i in predicted if i not in (first, second))
    kept = dict(predicted[first])  # the first image: AUs as predicted but one more ticked, VA as predicted
    extra = next(au for au in ACTION_UNITS if au in generated and not generated[au])
    kept["aus"] = {"choices": [*kept["aus"]["choices"], extra]}
    first_items = [{"from_name": name, "to_name": "image", "type": "x", "value": value} for name, value in kept.items()]
    # The second image: a cancelled annotation, then one that leaves out valence (a reject) and keeps the rest.
    second_items = [
        {"from_name": name, "to_name": "image", "type": "x", "value": value}
        for name, value in predicted[second].items()
        if name != "valence"
    ]
    answers = {
        first: [{"items": first_items, "at": "2026-12-01T10:00:00Z"}],
        second: [
            {"items": [], "at": "2026-12-01T11:00:00Z", "cancelled": True},
            {"items": second_items, "at": "2026-12-01T10:30:00Z"},
        ],
    }
    use(annotated, monkeypatch)
    good = tmp_path / "export.json"
    good.write_text(json.dumps(_label_studio_export(tasks, answers)))

    # A bad item anywhere: a usage error naming the task and field, and nothing stored.
    bad_valence = json.loads(good.read_text())
    third_row = next(t for t in bad_valence if t["data"]["image_id"] == third)
    third_row["annotations"] = [{"id": 99, "completed_by": 1, "result": [
        {"from_name": "valence", "to_name": "image", "type": "number", "value": {"number": 3.0}}
    ]}]  # fmt: skip
    bad_au = json.loads(good.read_text())
    first_row = next(t for t in bad_au if t["data"]["image_id"] == first)
    first_row["annotations"][0]["result"].append({"from_name": "aus", "value": {"choices": ["AU99"]}})
    for name, content, reason in [
        ("broken.json", "{not json", "not a readable Label Studio JSON export"),
        ("valence.json", json.dumps(bad_valence), f"task {third_row['id']}, field valence"),
        ("au.json", json.dumps(bad_au), f"task {first_row['id']}, field aus: unknown action unit(s) AU99"),
    ]:
        (tmp_path / name).write_text(content)
        result = CliRunner().invoke(app, ["review", "import", str(tmp_path / name)])
        assert result.exit_code == 2 and reason in " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split()), (
            result.output
        )
        with session_scope(annotated) as session:
            assert session.query(Review).count() == 0

    result = CliRunner().invoke(app, ["review", "import", str(good)])
    assert result.exit_code == 0, result.output
    with session_scope(annotated) as session:
        rows = {(r.image_id, r.field): r for r in session.query(Review)}
        assert {r.reviewer for r in rows.values()} == {"ann@example.org"}
        first_fields = {field: r for (image, field), r in rows.items() if image == first}
        assert set(first_fields) == set(
            generated
        )  # every generated field of a reviewed image, AUs predicted absent too
        assert (first_fields[extra].decision, first_fields[extra].corrected_value) == ("correct", True)
        assert all(r.decision == "accept" for f, r in first_fields.items() if f != extra)
        second_fields = {field: r.decision for (image, field), r in rows.items() if image == second}
        if "valence" in second_fields:
            assert second_fields.pop("valence") == "reject"
        assert set(second_fields.values()) == {"accept"}
        assert len(review_queue(session, "v1", top=10_000)) == queued - len(rows)
    assert f"{len(rows)} decisions" in result.output and f"{len(tasks) - 2} tasks not annotated" in result.output


def test_decisions_become_human_labels_of_the_reviewer_with_provenance(annotated: Settings) -> None:
    from models.orm import HumanLabel, SourceDataset
    from tasks.review import ReviewDecision, ReviewFileError, record_reviews

    with session_scope(annotated) as session:
        queue = review_queue(session, "v1", top=1000)
        au = next(i for i in queue if i.field in ACTION_UNITS)
        valence = next(i for i in queue if i.field == "valence")

        def labels() -> dict[str, tuple[str, object, int | None]]:
            session.expire_all()
            rows = (
                session.query(HumanLabel, SourceDataset.name)
                .join(SourceDataset)
                .filter(HumanLabel.review_id.is_not(None))
            )
            return {label.field: (source, label.value, label.review_id) for label, source in rows}

        record_reviews(
            session,
            [
                ReviewDecision("task 1", "v1", au.image_id, au.field, "ann", "correct", not au.value),
                ReviewDecision("task 2", "v1", valence.image_id, "valence", "ann", "accept"),
            ],
        )
        written = labels()
        reviews = {r.field: r for r in session.query(Review)}
        assert written[au.field] == ("review:ann", (not au.value), reviews[au.field].id)
        assert written["valence"] == ("review:ann", valence.value, reviews["valence"].id)
        # Provenance: label → review → the reviewed summary call.
        assert reviews[au.field].call_id == au.call_id

        # A later decision replaces the label (here by another reviewer, so another source).
        record_reviews(session, [ReviewDecision("task 3", "v1", valence.image_id, "valence", "bo", "correct", -0.5)])
        assert labels()["valence"][:2] == ("review:bo", -0.5)
        assert (
            session.query(HumanLabel)
            .filter(
                HumanLabel.image_id == valence.image_id,
                HumanLabel.field == "valence",
                HumanLabel.review_id.is_not(None),
            )
            .count()
            == 1
        )

        # A reject removes the label the review had written: the field is generated again next version.
        record_reviews(session, [ReviewDecision("task 4", "v1", au.image_id, au.field, "ann", "reject")])
        assert au.field not in labels()

        # A bad decision in a file writes no label, not even the good decisions' ones.
        before = labels()
        with pytest.raises(ReviewFileError, match="task 6, field valence"):
            record_reviews(
                session,
                [
                    ReviewDecision("task 5", "v1", au.image_id, au.field, "ann", "correct", au.value),
                    ReviewDecision("task 6", "v1", valence.image_id, "valence", "ann", "correct", 7.0),
                ],
            )
        assert labels() == before
        with pytest.raises(ReviewFileError, match="longer than 25"):
            record_reviews(session, [ReviewDecision("task 7", "v1", au.image_id, au.field, "x" * 26, "accept")])
        assert labels() == before


def test_an_argilla_round_trip_from_the_command_line_reviews_what_the_next_version_reannotates(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """annotate → review export --to argilla → (a person in Argilla) → review import → annotate --from → export."""
    import base64
    import json
    import re
    import shutil

    from typer.testing import CliRunner

    from core.store import open_store
    from models.labels import EXPRESSIONS
    from models.orm import Image
    from seke.cli import app

    annotated = prepared_settings(postgres_admin_url, tmp_path, demo)
    use(annotated, monkeypatch)
    monkeypatch.delenv("SEKE_VLLM_BASE_URL", raising=False)  # the CLI's built-in simulator answers
    v1 = CliRunner().invoke(app, ["annotate", "--run", "v1", "--limit", "8"])
    assert v1.exit_code == 0, v1.output
    out = tmp_path / "argilla"
    exported = CliRunner().invoke(app, ["review", "export", "v1", str(out), "--to", "argilla"])
    assert exported.exit_code == 0, exported.output
    settings = json.loads((out / ".argilla" / "settings.json").read_text())
    assert json.loads((out / ".argilla" / "dataset.json").read_text())["name"] == "v1-review"
    assert {q["name"]: q["settings"]["type"] for q in settings["questions"]} == {
        "expression": "label_selection", "aus": "multi_label_selection", "valence": "text", "arousal": "text",
    }  # fmt: skip
    assert [o["value"] for o in settings["questions"][0]["settings"]["options"]] == list(EXPRESSIONS)
    assert {m["name"]: m["settings"]["type"] for m in settings["metadata"]}["uncertainty"] == "float"
    records = json.loads((out / "records.json").read_text())
    with session_scope(annotated) as session:
        queue = review_queue(session, "v1", top=10_000)
        generated: dict[int, dict] = {}
        for item in queue:
            generated.setdefault(item.image_id, {})[item.field] = (item.value, item.uncertainty)
        record = records[0]
        image = session.get(Image, record["metadata"]["image_id"])
        stored = open_store(annotated).get_bytes(image.object_key)
    assert {r["metadata"]["image_id"] for r in records} == set(generated)
    # A local store's image travels inside the record, as a data URI Argilla's ImageField shows.
    assert base64.b64decode(record["fields"]["image"].split(",", 1)[1]) == stored
    for r in records:
        fields = generated[r["metadata"]["image_id"]]
        if "expression" in fields:
            value, uncertainty = fields["expression"]
            assert r["suggestions"]["expression"]["value"] == value
            assert r["suggestions"]["expression"]["score"] == pytest.approx(1 - uncertainty)
        assert r["suggestions"] and all(s["agent"].startswith("v1/") for s in r["suggestions"].values())
        assert r["metadata"]["uncertainty"] == pytest.approx(max(u for _, u in fields.values() if u is not None))

    # What Argilla's to_disk writes after one person reviewed two records: responses per question. Every
    # suggestion kept, except one more AU ticked on the first and another expression on the second.
    user = "5f1c2a9e-0c4b-4d59-9b0e-2f7f4b8a1c33"

    def answered(record: dict, **changed: object) -> None:
        record["responses"] = {
            q: [{"value": changed.get(q, s["value"]), "user_id": user}] for q, s in record["suggestions"].items()
        }
        record["status"] = "completed"

    first = next(r for r in records if "aus" in r["suggestions"])
    first_id = first["metadata"]["image_id"]
    absent = next(au for au in ACTION_UNITS if au in generated[first_id] and not generated[first_id][au][0])
    answered(first, aus=[*first["suggestions"]["aus"]["value"], absent])
    # The second: another value for its first non-AU suggestion (the first images may carry no generated expression).
    second = next(r for r in records if set(r["suggestions"]) - {"aus"} and r is not first)
    second_id = second["metadata"]["image_id"]
    question = sorted(set(second["suggestions"]) - {"aus"})[0]
    suggested = second["suggestions"][question]["value"]
    if question == "expression":
        other: object = next(e for e in EXPRESSIONS if e != suggested)
        answered(second, expression=other)
    else:
        other = 0.5 if float(suggested) != 0.5 else -0.5
        answered(second, **{question: f"{other}"})
    reviewed = tmp_path / "reviewed"
    shutil.copytree(out, reviewed)

    def flat(output: str) -> str:  # the words of rich's output, without its boxes and line breaks
        return " ".join(re.sub("[│╭╮╰╯─┌┐└┘├┤┬┴┼]", " ", output).split())

    def write(folder: Path, rows: list[dict]) -> Path:
        (folder / "records.json").write_text(json.dumps(rows))
        return folder

    third = next(i for i, r in enumerate(records) if r is not first and r is not second)
    bad_number = json.loads(json.dumps(records))
    bad_number[third]["responses"] = {"valence": [{"value": "quite high", "user_id": user}]}
    two_users = json.loads(json.dumps(records))
    two_users[third]["responses"] = {
        "expression": [{"value": EXPRESSIONS[0], "user_id": user}, {"value": EXPRESSIONS[1], "user_id": "someone-else"}]
    }
    for name, rows, reason in [
        ("number", bad_number, f"record {records[third]['id']}, field valence: 'quite high' is not a number"),
        ("users", two_users, f"record {records[third]['id']}: answered by 2 users"),
    ]:
        folder = shutil.copytree(out, tmp_path / name)
        result = CliRunner().invoke(app, ["review", "import", str(write(folder, rows)), "--from", "argilla"])
        assert result.exit_code == 2 and reason in flat(result.output), result.output
        with session_scope(annotated) as session:
            assert session.query(Review).count() == 0

    result = CliRunner().invoke(app, ["review", "import", str(write(reviewed, records)), "--from", "argilla"])
    assert result.exit_code == 0, result.output
    with session_scope(annotated) as session:
        rows = {(r.image_id, r.field): r for r in session.query(Review)}
    assert {r.reviewer for r in rows.values()} == {"argilla-5f1c2a9e0c4b"}
    for image_id in (first_id, second_id):  # every generated field of a reviewed image, AUs predicted absent too
        assert {f for i, f in rows if i == image_id} == set(generated[image_id])
    corrected = {key: r.corrected_value for key, r in rows.items() if r.decision == "correct"}
    assert corrected == {(first_id, absent): True, (second_id, question): other}
    assert all(r.decision == "accept" for key, r in rows.items() if key not in corrected)
    assert f"{len(records) - 2} tasks not annotated" in result.output

    # The next version: only the two reviewed images are annotated again, and the export marks the decisions.
    v2 = CliRunner().invoke(app, ["annotate", "--run", "v2", "--from", "v1"])
    assert v2.exit_code == 0, v2.output
    assert f"derived from v1: {len(records) - 2} images kept, 2 annotated again" in flat(v2.output)
    exported = CliRunner().invoke(app, ["export", "v1", "--out", str(tmp_path / "feid-v1"), "--reference-images"])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in (tmp_path / "feid-v1" / "feid.jsonl").read_text().splitlines()]
    # Another configuration keeps nothing, and says why.
    v3 = CliRunner().invoke(app, ["annotate", "--run", "v3", "--from", "v1", "--no-shared-prefill"])
    assert v3.exit_code == 0, v3.output
    assert "0 images kept, 8 annotated again (another configuration: shared_prefill: True → False)" in flat(v3.output)
    marked = {(line["id"], field): mark["decision"] for line in lines for field, mark in line["reviewed"].items()}
    assert sorted(marked.values()) == sorted(r.decision for r in rows.values())
