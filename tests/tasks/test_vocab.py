"""The stored vocabulary: the migrated database's CHECK constraints allow exactly the words of models/vocab.py."""

from __future__ import annotations

import re
from enum import StrEnum

import pytest
from sqlalchemy import create_engine, text

from models.vocab import Decision, ImageStatus, RunStatus, Stage
from tasks import prompts

CONSTRAINTS: dict[str, type[StrEnum]] = {
    "ck_vllm_calls_stage_value": Stage,
    "ck_uamc_steps_decision_value": Decision,
    "ck_runs_status_value": RunStatus,
    "ck_run_images_status_value": ImageStatus,
}


@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
def test_database_constraint_allows_exactly_the_vocabulary(database_url: str, name: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        definition = connection.scalar(
            text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :name"), {"name": name}
        )
    engine.dispose()
    assert definition, f"constraint {name} is missing from the migrated database"
    assert set(re.findall(r"'([^']+)'", definition)) == {member.value for member in CONSTRAINTS[name]}


def test_prompt_stages_are_the_stored_stages() -> None:
    assert {prompts.SAMPLE_STAGE, prompts.SUMMARY_STAGE, prompts.REWRITE_STAGE} == set(Stage)
    assert set(prompts.STAGE_OF_TEMPLATE.values()) == set(Stage)
