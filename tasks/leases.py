"""A run's images claimed by workers under leases: any number of processes, on any number of machines.

A worker claims images with `SELECT … FOR UPDATE SKIP LOCKED` (two workers
never claim the same image, and neither waits for the other), holds them
under a lease it renews while it works (`heartbeat`), and lets them go when it
stops (`release`). An image whose worker died is claimable again once its
lease expires; a worker that died on this host is noticed at once
(`expire_dead_local`). The next worker replays the image's stored calls
(tasks/annotate.py), so nothing completed is paid twice.

Only images in `pending` or `sampling` are claimable: an image that failed in
this pass stays failed until the run is reopened (tasks/runs.open_run), so a
pass always ends. Nothing is claimable once a stop is requested for the run
(`runs.stop_requested`): a worker that has not yet seen the stop on its
heartbeat starts no new image either.
"""

from __future__ import annotations

import os
import socket
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

CLAIMABLE = "status IN ('pending', 'sampling')"

_CLAIM = text(
    f"""
    WITH picked AS (
        SELECT run_id, image_id FROM run_images
        WHERE run_id = :run_id AND {CLAIMABLE} AND (lease_expires_at IS NULL OR lease_expires_at < now())
          AND NOT EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND stop_requested IS NOT NULL)
        ORDER BY image_id LIMIT :n
        FOR UPDATE SKIP LOCKED
    )
    UPDATE run_images r SET lease_owner = :worker, lease_expires_at = now() + make_interval(secs => :lease_s)
    FROM picked WHERE r.run_id = picked.run_id AND r.image_id = picked.image_id
    RETURNING r.image_id
    """
)


def new_worker_id() -> str:
    """host:pid:random: unique across machines, and says where a lease holder ran."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(session: Session, run_id: int, worker: str, n: int, lease_s: float) -> list[int]:
    """Lease up to `n` claimable images of the run (lowest ids first) to `worker`; returns their ids
    (none once a stop is requested: see `runs.stop_requested`)."""
    if n <= 0:
        return []
    rows = session.execute(_CLAIM, {"run_id": run_id, "n": n, "worker": worker, "lease_s": lease_s})
    return sorted(rows.scalars())


_HEARTBEAT = text(
    f"""
    WITH held AS (
        SELECT run_id, image_id FROM run_images
        WHERE run_id = :run_id AND lease_owner = :worker AND {CLAIMABLE}
        FOR UPDATE SKIP LOCKED
    )
    UPDATE run_images r SET lease_expires_at = now() + make_interval(secs => :lease_s)
    FROM held WHERE r.run_id = held.run_id AND r.image_id = held.image_id
    """
)


def heartbeat(session: Session, run_id: int, worker: str, lease_s: float) -> int:
    """Extend the worker's leases on its unfinished images; returns how many it extended.

    Rows another transaction holds are skipped, not waited for: the worker's
    own writer locks its images' rows in its order while the heartbeat would
    lock all of them in another, and Postgres broke that tie as a deadlock
    (seen at 256 images in flight). A skipped row is being written now; the
    next beat, well within the lease, extends it if it is still unfinished.
    """
    result = session.execute(_HEARTBEAT, {"run_id": run_id, "worker": worker, "lease_s": lease_s})
    return result.rowcount


def release(session: Session, run_id: int, worker: str) -> int:
    """Give up the worker's leases on unfinished images (they are claimable at once); returns how many."""
    result = session.execute(
        text(
            f"UPDATE run_images SET lease_owner = NULL, lease_expires_at = NULL "
            f"WHERE run_id = :run_id AND lease_owner = :worker AND {CLAIMABLE}"
        ),
        {"run_id": run_id, "worker": worker},
    )
    return result.rowcount


def expire_dead_local(session: Session, run_id: int) -> int:
    """Expire the leases of workers that ran on this host and whose process is gone; returns how many.

    A worker elsewhere that died is noticed when its lease runs out; one on
    this host (a killed `seke annotate`, then a resume) need not be waited for.
    """
    owners = session.scalars(
        text(
            f"SELECT DISTINCT lease_owner FROM run_images "
            f"WHERE run_id = :run_id AND {CLAIMABLE} AND lease_expires_at >= now()"
        ),
        {"run_id": run_id},
    ).all()
    host = socket.gethostname()[:40]
    dead = [owner for owner in owners if _local_and_dead(owner, host)]
    if not dead:
        return 0
    return session.execute(
        text(
            f"UPDATE run_images SET lease_owner = NULL, lease_expires_at = NULL "
            f"WHERE run_id = :run_id AND {CLAIMABLE} AND lease_owner = ANY(:dead)"
        ),
        {"run_id": run_id, "dead": dead},
    ).rowcount


def _local_and_dead(owner: str, host: str) -> bool:
    owner_host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if owner_host != host or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, as another user
        return False
    return False


def next_expiry_s(session: Session, run_id: int) -> float | None:
    """Seconds until the first live lease on an unfinished image runs out; None when no image is leased.

    A worker with nothing to claim waits this long (at most) before trying
    again: another worker may still finish those images, or may have died.
    """
    seconds = session.scalar(
        text(
            f"SELECT extract(epoch FROM min(lease_expires_at) - now()) FROM run_images "
            f"WHERE run_id = :run_id AND {CLAIMABLE} AND lease_expires_at >= now()"
        ),
        {"run_id": run_id},
    )
    return None if seconds is None else max(float(seconds), 0.0)
