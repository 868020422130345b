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


def test_decisions_become_human_labels_of_the_reviewer_with_provenance(annotated: Settings) -> None:
    from models.orm import HumanLabel, SourceDataset
    from tasks.review import ReviewDecision, ReviewFileError, record_reviews

    with session_scope(annotated) as session:
        queue = review_queue(session, "v1", top=1000)
        au = next(i for i in queue if i.field in ACTION_UNITS)
        valence = next(i for i in queue if i.field == "valence")

        def labels() -> dict[str, tuple[str, object, int | None]]:
            session.expire_all()
            rows = session.query(HumanLabel, SourceDataset.name).join(SourceDataset).filter(HumanLabel.review_id.is_not(None))
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
        assert session.query(HumanLabel).filter(HumanLabel.image_id == valence.image_id, HumanLabel.field == "valence",
                                                HumanLabel.review_id.is_not(None)).count() == 1

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
