"""Leases, shared budgets, run opening under races, the shared rate bucket and the summary triggers,
against the real PostgreSQL of the test session (no flow, no endpoint)."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import get_engine, session_factory
from models.orm import Image, LabelTotal, Prompt, RunImage, SourceDataset, Subject, VLLMCall
from tasks.annotate import AnnotateConfig
from tasks.budget import run_spent, shared_budget_reason
from tasks.leases import claim, expire_dead_local, heartbeat, new_worker_id, next_expiry_s, release
from tasks.runs import RunConfigMismatch, close_run, open_run, request_stop, stop_requested
from tasks.shared_limit import SharedRateLimit
from tasks.uamc import UAMCConfig

pytestmark = pytest.mark.usefixtures("clean_db")


def add_images(sessions: sessionmaker[Session], n: int) -> list[int]:
    with sessions.begin() as session:
        source = SourceDataset(name="folder")
        session.add(source)
        session.flush()
        subject = Subject(source_id=source.id, external_id="s1", split="FEID")
        session.add(subject)
        session.flush()
        images = [
            Image(
                sha256=f"{i:064x}", object_key=f"k{i}", width=8, height=8, format="PNG", byte_size=1,
                original_path=f"p{i}", source_id=source.id, subject_id=subject.id, split="FEID",
            )
            for i in range(n)
        ]
        session.add_all(images)
        session.flush()
        return [image.id for image in images]


def opened(session: Session, name: str = "r", config: AnnotateConfig | None = None, model: str = "m", limit: int | None = None) -> int:
    return open_run(session, name, config=config or AnnotateConfig(), model=model, endpoint={}, code_version="t", limit=limit)


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    return session_factory(settings, 8)


def test_claims_are_disjoint_across_concurrent_workers(sessions: sessionmaker[Session]) -> None:
    add_images(sessions, 200)
    with sessions.begin() as session:
        run_id = opened(session)
    claimed: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        mine: list[int] = []
        while True:
            with sessions.begin() as session:
                got = claim(session, run_id, name, 3, 60)
            if not got:
                break
            mine += got
        claimed[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [image for images in claimed.values() for image in images]
    assert sorted(everything) == sorted(set(everything)) and len(everything) == 200
    assert sum(bool(images) for images in claimed.values()) >= 2  # really shared, not one worker taking all


def test_heartbeat_skips_rows_a_writer_holds_instead_of_waiting(sessions: sessionmaker[Session]) -> None:
    """The writer locks an image's row to mark it done while the heartbeat runs: no wait, so no deadlock."""
    add_images(sessions, 3)
    with sessions.begin() as session:
        run_id = opened(session)
        held = claim(session, run_id, "w", 3, 60)
    with sessions.begin() as writer, sessions.begin() as beat:
        writer.execute(update(RunImage).where(RunImage.image_id == held[0]).values(status="sampling"))
        beat.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting would fail this test, not hang it
        assert heartbeat(beat, run_id, "w", 60) == 2


def test_expired_leases_are_reclaimed_and_heartbeats_keep_them(sessions: sessionmaker[Session]) -> None:
    add_images(sessions, 4)
    with sessions.begin() as session:
        run_id = opened(session)
        first = claim(session, run_id, "a", 2, 60)
        second = claim(session, run_id, "b", 2, 60)
        assert claim(session, run_id, "c", 4, 60) == []
        assert 0 < next_expiry_s(session, run_id) <= 60
        # a's leases run out; b renews its own
        session.execute(update(RunImage).where(RunImage.lease_owner == "a").values(lease_expires_at=func.now() - dt.timedelta(seconds=1)))
        assert heartbeat(session, run_id, "b", 60) == 2
        assert claim(session, run_id, "c", 4, 60) == first
        assert release(session, run_id, "b") == 2
        assert claim(session, run_id, "d", 4, 60) == second
        # done images are never claimable, whoever held them
        session.execute(update(RunImage).values(status="done", lease_expires_at=None))
        assert claim(session, run_id, "e", 4, 60) == [] and next_expiry_s(session, run_id) is None


def test_a_dead_local_worker_is_noticed_at_once(sessions: sessionmaker[Session]) -> None:
    import subprocess
    import sys

    add_images(sessions, 2)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = new_worker_id().rsplit(":", 2)[0] + f":{child.pid}:dead"
    with sessions.begin() as session:
        run_id = opened(session)
        claim(session, run_id, dead, 1, 600)
        claim(session, run_id, new_worker_id(), 1, 600)  # ours: alive
        assert expire_dead_local(session, run_id) == 1
        assert len(claim(session, run_id, "next", 2, 60)) == 1


def test_open_run_is_idempotent_under_races_and_names_differing_fields(settings: Settings, sessions: sessionmaker[Session]) -> None:
    add_images(sessions, 10)
    barrier = threading.Barrier(4)
    ids: list[int] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            barrier.wait()
            with sessions.begin() as session:
                ids.append(opened(session, "raced", limit=5))
        except BaseException as exc:  # collected: the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(ids)) == 1
    other = AnnotateConfig(seed=3, uamc=UAMCConfig(max_samples=7))
    with sessions.begin() as session:
        with pytest.raises(RunConfigMismatch) as refused:
            opened(session, "raced", config=other, limit=10)
    message = str(refused.value)
    assert "seed: 0 → 3" in message and "uamc.max_samples: 5 → 7" in message
    with sessions() as session:  # refused before queueing anything
        assert session.scalar(select(func.count()).select_from(RunImage)) == 5


def test_stop_requests_and_reopen(sessions: sessionmaker[Session]) -> None:
    add_images(sessions, 3)
    with sessions.begin() as session:
        run_id = opened(session)
        request_stop(session, run_id, "cancelled")
        request_stop(session, run_id, "interrupted (SIGINT)")  # the first reason stays
        assert stop_requested(session, run_id) == "cancelled"
        assert close_run(session, run_id, stop_reason="cancelled") == "stopped"
        session.execute(update(RunImage).where(RunImage.image_id == select(func.min(RunImage.image_id)).scalar_subquery()).values(status="failed"))
    with sessions.begin() as session:
        opened(session)  # resume: the request is cleared, failed images are retried
        assert stop_requested(session, run_id) is None
        assert session.scalar(select(func.count()).where(RunImage.status == "failed")) == 0


def _call(run_id: int, image_id: int, index: int, cost: str = "0.01", valid: bool = True) -> dict:
    now = dt.datetime.now(dt.UTC)
    return dict(
        run_id=run_id, image_id=image_id, stage="prior-sample", sample_index=index, prompt_sha256="p" * 64,
        request_params={}, raw_text="{}", parsed=None, valid=valid, error=None, tokens_in=10, tokens_out=5,
        cost_usd=Decimal(cost), latency_s=0.5, attempts=1, started_at=now, finished_at=now,
    )


def test_totals_follow_concurrent_writers_and_budgets_read_them(settings: Settings, sessions: sessionmaker[Session]) -> None:
    from sqlalchemy.dialects.postgresql import insert

    images = add_images(sessions, 40)
    with sessions.begin() as session:
        run_id = opened(session)
        session.add(Prompt(sha256="p" * 64, name="prior", version="1", text="t"))

    def write(offset: int) -> None:
        for i, image_id in enumerate(images[offset::4]):
            with sessions.begin() as session:
                session.execute(insert(VLLMCall).values(**_call(run_id, image_id, 0, valid=i % 5 != 0)))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with sessions() as session:
        assert run_spent(session, run_id) == (40, pytest.approx(0.4))
        direct = session.execute(
            text("SELECT count(*), count(*) FILTER (WHERE NOT valid), sum(tokens_in) FROM vllm_calls WHERE run_id = :r"), {"r": run_id}
        ).one()
        summed = session.execute(
            text("SELECT sum(calls), sum(invalid), sum(tokens_in) FROM run_call_totals WHERE run_id = :r"), {"r": run_id}
        ).one()
        assert tuple(direct) == tuple(summed)
        assert shared_budget_reason(session, run_id, 40, None) == "call budget reached: 40 calls ≥ --max-calls 40"
        assert shared_budget_reason(session, run_id, 41, 1.0) is None
        assert "cost budget" in shared_budget_reason(session, run_id, None, 0.4)
    # a rolled-back insert leaves the totals alone
    with pytest.raises(RuntimeError), sessions.begin() as session:
        session.execute(insert(VLLMCall).values(**_call(run_id, images[0], 1)))
        raise RuntimeError("abort")
    with sessions() as session:
        assert run_spent(session, run_id)[0] == 40
        assert session.scalar(select(func.count()).select_from(LabelTotal)) == 0


def test_shared_bucket_admits_the_caps_across_processes(settings: Settings) -> None:
    engine = get_engine(settings)
    waits: list[float] = []
    limits = [SharedRateLimit(engine, "http://x/v1|m", 600, 10**9, sleep=waits.append) for _ in range(2)]
    # 600/min, 1 s of burst: 10 requests at once between both "processes", then ~0.1 s apart.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        taken = [
            connection.scalar(text("SELECT seke_rate_take('http://x/v1|m', 1, 100, 10, 1e9, 10, 1e9)")) for _ in range(10)
        ]
        assert taken == [0] * 10
        assert 0 < connection.scalar(text("SELECT seke_rate_take('http://x/v1|m', 1, 100, 10, 1e9, 10, 1e9)")) <= 0.11
    limits[0].acquire(100)  # waits: the bucket is empty for both
    assert waits and all(0 < w <= 0.11 for w in waits)
    limits[1].settle(100, 40)  # an over-estimate is given back on the next take
    assert limits[1]._held_tokens == 60


def test_engine_is_one_per_process_and_sized_from_concurrency(settings: Settings, postgres_admin_url: str) -> None:
    from core.db import connections_needed, dispose_engine
    from tests.conftest import create_database

    first = get_engine(settings, 4)
    assert first.pool.size() == connections_needed(4) and get_engine(settings, 2) is first
    bigger = get_engine(settings, 16)
    assert bigger is not first and bigger.pool.size() == connections_needed(16)
    other = get_engine(Settings(database_url=create_database(postgres_admin_url)), 4)
    assert other is not bigger  # another database replaces (and disposes) the engine
    with other.connect():
        pass
    assert other.pool.checkedin() == 1
    dispose_engine()  # what the suite does after every test
    assert other.pool.checkedin() == 0
