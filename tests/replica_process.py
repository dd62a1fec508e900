"""A replica in a process of its own, for tests/test_replicas.py to kill -9: a JobManager on a
PostgreSQL queue whose engine (a micro checkpoint) never gets past its first decoding step, so
every job it claims stays running, its lease renewed, until the process dies.

    python tests/replica_process.py CHECKPOINT DSN DATA_DIR AUDIO COUNT LEASE_S

It submits COUNT jobs of AUDIO, prints their ids (comma-separated) once all of them run here,
then waits to be killed.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (tests/ is on it already)

from conftest import fast_settings
from engine import Engine
from jobs.manager import JobManager
from jobs.postgres_store import PostgresJobStore


def never_returns(decode) -> None:
    """The engine's `before_step` hook: holds the job at its first decode step for good."""
    threading.Event().wait()


def main(checkpoint: str, dsn: str, data_dir: str, audio: str, count: str, lease_s: str) -> None:
    settings = fast_settings(checkpoint, workers=int(count), language="en", job_lease_s=float(lease_s))
    engine = Engine(settings, before_step=never_returns)
    jobs = JobManager(engine, PostgresJobStore(dsn, data_dir)).start()
    tickets = [jobs.submit(audio, name=f"{i}.flac") for i in range(int(count))]
    while not all(jobs.feed.leases.get(ticket.id) for ticket in tickets):
        time.sleep(0.05)
    print(",".join(ticket.id for ticket in tickets), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(*sys.argv[1:])
