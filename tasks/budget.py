"""A run's budget (--max-calls, --max-cost) counted in PostgreSQL, so every worker of the run sees one total.

The totals come from run_call_totals, which a trigger keeps current as calls
are written (migration 0005): a read is a few rows, however large the run.
Workers check before claiming each image, so the overshoot is bounded by the
calls of the images already in flight, as with one process.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.orm import RunCallTotal


def run_spent(session: Session, run_id: int) -> tuple[int, float]:
    """(calls, dollars) the run has spent so far, across every worker and attempt."""
    calls, cost = session.execute(
        select(func.coalesce(func.sum(RunCallTotal.calls), 0), func.coalesce(func.sum(RunCallTotal.cost_usd), 0)).where(
            RunCallTotal.run_id == run_id
        )
    ).one()
    return int(calls), float(cost)


def budget_reason(calls: int, cost_usd: float, max_calls: int | None, max_cost_usd: float | None) -> str | None:
    """Why no new image may start under these caps, or None."""
    if max_calls is not None and calls >= max_calls:
        return f"call budget reached: {calls} calls ≥ --max-calls {max_calls}"
    if max_cost_usd is not None and cost_usd >= max_cost_usd:
        return f"cost budget reached: ${cost_usd:.4f} ≥ --max-cost {max_cost_usd}"
    return None


def shared_budget_reason(session: Session, run_id: int, max_calls: int | None, max_cost_usd: float | None) -> str | None:
    """The run's budget as every worker sees it: None while under both caps (no read when there are none)."""
    if max_calls is None and max_cost_usd is None:
        return None
    return budget_reason(*run_spent(session, run_id), max_calls, max_cost_usd)
