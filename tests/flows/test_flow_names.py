"""Flow parameters that become paths and keys are validated before any paid call; odd names get a slug."""

from __future__ import annotations


import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.db import session_scope
from models.orm import Run, VLLMCall
from simulator.server import SimulatorConfig, running_simulator

pytestmark = pytest.mark.usefixtures("prefect_api")



def test_a_dotted_run_name_completes_with_its_artifacts(fresh: Settings) -> None:
    from flows.annotate import annotate_flow

    with running_simulator(SimulatorConfig()) as base_url:
        report = annotate_flow(run_name="feid.v1", limit=2, base_url=base_url, model="seke-simulator")
    assert report.status == "completed"


@pytest.mark.parametrize("name", ["feid v1", "../escape", "a/b"])
def test_a_bad_name_stops_every_flow_before_any_call(fresh: Settings, name: str) -> None:
    from flows.annotate import annotate_flow
    from flows.benchmark import benchmark_flow
    from flows.finetune import finetune_flow

    with running_simulator(SimulatorConfig()) as base_url:
        with pytest.raises(Exception, match="letters, digits"):
            annotate_flow(run_name=name, limit=2, base_url=base_url, model="seke-simulator")
        with pytest.raises(Exception, match="letters, digits"):
            benchmark_flow(name=name, model="seke-simulator", kind="endpoint", base_url=base_url, limit=2)
    with pytest.raises(Exception, match="letters, digits"):
        finetune_flow(name=name, export_id=1)
    with session_scope(fresh) as session:
        assert session.scalar(select(func.count(VLLMCall.id))) == 0
        assert session.scalar(select(func.count(Run.id))) == 0
    assert not (fresh.resolved_state_dir / "benchmarks").exists()
