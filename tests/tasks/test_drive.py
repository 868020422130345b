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


def test_drives_sharing_slots_stay_within_them_together() -> None:
    """Two shards overlapping at a hand-over: each may run 3 workers, but 3 slots bound both together."""
    running, peak, seen = 0, 0, []

    async def work(batch: list[int]) -> list[ImageOutcome]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (batch[0] % 3))  # uneven, so the first drive is still draining when the second starts
        seen.extend(batch)
        running -= 1
        return [ImageOutcome(i, "done") for i in batch]

    async def both() -> list[list[ImageOutcome]]:
        slots = asyncio.Semaphore(3)
        first = drive(claim_from(list(range(0, 12)), per_claim=1), work, concurrency=3, slots=slots)
        second = drive(claim_from(list(range(12, 24)), per_claim=1), work, concurrency=3, slots=slots)
        return await asyncio.gather(first, second)

    first, second = asyncio.run(both())
    assert sorted(seen) == list(range(24)) and len(first) == len(second) == 12
    assert peak == 3
