"""drive() and claim_from(): every claimed image worked on once, never more than `concurrency` at a time."""

from __future__ import annotations

import asyncio

from tasks.annotate import ImageOutcome, claim_from, drive


def test_drive_works_each_claimed_batch_once_within_the_concurrency() -> None:
    running, peak, seen = 0, 0, []

    async def work(batch: list[int]) -> list[ImageOutcome]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)  # let the other workers in
        seen.extend(batch)
        running -= 1
        return [ImageOutcome(i, "done") for i in batch]

    outcomes = asyncio.run(drive(claim_from(list(range(10)), per_claim=2), work, concurrency=3))
    assert sorted(seen) == list(range(10)) and sorted(o.image_id for o in outcomes) == list(range(10))
    assert peak == 3
