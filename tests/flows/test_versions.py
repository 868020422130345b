"""Run versions (--from) after review decisions: simulator over HTTP, real PostgreSQL, Prefect test API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.db import session_scope
from core.store import open_store
from models.labels import ACTION_UNITS
from models.orm import Annotation, HumanLabel, Instruction, Run, VLLMCall
from simulator.server import SimulatorConfig, running_simulator
from tasks.export import export_run
from tasks.review import ReviewDecision, record_reviews, review_queue
from tasks.versions import VersionError

pytestmark = pytest.mark.usefixtures("prefect_api")


def _rows(session, run_name: str) -> dict[int, tuple]:
    run_id = session.scalar(select(Run.id).where(Run.name == run_name))
    annotations: dict[int, list] = {}
    for a in session.scalars(select(Annotation).where(Annotation.run_id == run_id).order_by(Annotation.field)):
        annotations.setdefault(a.image_id, []).append(
            (a.field, a.value, a.provenance, a.human_label_id, a.summary_call_id, a.uncertainty)
        )
    instructions = {
        i.image_id: (i.question, i.answer, i.rewrite_call_id)
        for i in session.scalars(select(Instruction).where(Instruction.run_id == run_id))
    }
    return {image_id: (tuple(rows), instructions.get(image_id)) for image_id, rows in annotations.items()}


def _new_calls(session, run_name: str) -> dict[int, int]:
    run_id = session.scalar(select(Run.id).where(Run.name == run_name))
    return dict(
        session.execute(
            select(VLLMCall.image_id, func.count()).where(VLLMCall.run_id == run_id).group_by(VLLMCall.image_id)
        ).all()
    )


def test_from_reannotates_exactly_the_reviewed_images_and_keeps_the_rest(fresh: Settings, tmp_path: Path) -> None:
    from flows.annotate import annotate_flow

    with running_simulator(SimulatorConfig()) as base_url:
        run = dict(base_url=base_url, model="seke-simulator", concurrency=4)
        annotate_flow(run_name="v1", limit=8, **run)
        with session_scope(fresh) as session:
            queue = review_queue(session, "v1", top=1000)
            au = next(i for i in queue if i.field in ACTION_UNITS)
            rejected = next(i for i in queue if i.image_id != au.image_id)
            record_reviews(
                session,
                [
                    ReviewDecision("task 1", "v1", au.image_id, au.field, "ann", "correct", not au.value),
                    ReviewDecision("task 2", "v1", rejected.image_id, rejected.field, "ann", "reject"),
                ],
            )
            v1 = _rows(session, "v1")

        report = annotate_flow(run_name="v2", from_run="v1", **run)
        assert report.status == "completed"
        assert (report.derived_from, report.kept_from_origin, report.reannotated) == ("v1", len(v1) - 2, 2)

        with session_scope(fresh) as session:
            # New calls only for the two reviewed images; every other image is v1's, rows and provenance alike.
            assert set(_new_calls(session, "v2")) == {au.image_id, rejected.image_id}
            v2 = _rows(session, "v2")
            assert set(v2) == set(v1)
            for image_id in set(v1) - {au.image_id, rejected.image_id}:
                assert v2[image_id] == v1[image_id]
            # The correction is a known human label of v2, with its provenance to the review.
            corrected = session.scalars(
                select(Annotation)
                .join(Run)
                .where(Run.name == "v2", Annotation.image_id == au.image_id, Annotation.field == au.field)
            ).one()
            label = session.get(HumanLabel, corrected.human_label_id)
            assert (corrected.provenance, corrected.value, label.review_id is not None) == (
                "human",
                (not au.value),
                True,
            )
            v2_config = session.scalar(select(Run.config).where(Run.name == "v2"))
            assert v2_config["derived_from"]["run"] == "v1"

            # Exports mark the reviewed fields: v1 with both decisions, v2 with the label it embedded.
            store = open_store(fresh)
            marks = {}
            for name in ("v1", "v2"):
                run_id = session.scalar(select(Run.id).where(Run.name == name))
                out = export_run(session, store, run_id, tmp_path / name, copy_images=False).path
                records = [json.loads(line) for line in (out / "feid.jsonl").read_text().splitlines()]
                marks[name] = {r["id"]: r["reviewed"] for r in records if r["reviewed"]}
            assert {f: m["decision"] for m in marks["v1"].values() for f, m in m.items()} == {
                au.field: "correct",
                rejected.field: "reject",
            }
            assert {f: m["decision"] for m in marks["v2"].values() for f, m in m.items()} == {au.field: "correct"}

        # Resuming v2 is resuming any run: nothing new to do.
        again = annotate_flow(run_name="v2", **run)
        assert again.status == "completed" and again.calls == report.calls

        with pytest.raises(VersionError, match="no run named 'nope'"):
            annotate_flow(run_name="v4", from_run="nope", **run)
        annotate_flow(run_name="part", limit=8, max_calls=1, **run)
        with pytest.raises(VersionError, match="not completed"):
            annotate_flow(run_name="v4", from_run="part", **run)
        with pytest.raises(VersionError, match="already exists, not derived"):
            annotate_flow(run_name="part", from_run="v1", **run)
        # Nothing changed since v2: v3 keeps every image and calls nothing.
        v3 = annotate_flow(run_name="v3", from_run="v2", **run)
        assert (v3.kept_from_origin, v3.reannotated, v3.calls) == (len(v1), 0, 0)
        with pytest.raises(VersionError, match="already exists, derived from 'v2'"):
            annotate_flow(run_name="v3", from_run="v1", **run)
