"""The jobs this replica holds, and the store calls that keep them its own.

    leases = Leases(store, replica_id, lease_s=30, publish=True)
    leases.add(Run(record, handle))          # a job `store.claim` gave this replica, now in the engine
    lost, cancelled = leases.tick()          # the queue loop, every half second

A claimed job runs under a lease that only its holder extends (`store.renew`), every third of
the lease, so two renewals can fail (a slow database, a pause of the process) before another
replica may take the job. A job missing from renew's answer is *lost*: its lease ran out and
another replica claimed it, or it was finished or deleted. The caller stops it and writes nothing
of it; its attempt number fences every write anyway. After a failed renewal the next tick renews
at once, so when the database comes back the leases are extended before anything else.

Between renewals the holder asks the store once a second which of its jobs someone asked to stop
(any replica may ask, `store.request_cancel`), and for a shared store it writes each job's
progress and the segments completed since its last write, so every replica can show and stream
a job that runs here. A store of one process (SQLite) is read by nobody else: nothing is published.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from engine.worker import JobHandle
from jobs.store import JobRecord, JobStore, Progress

RENEW_FRACTION = 1 / 3  # a lease is renewed when this much of it has passed
CANCEL_POLL_S = 1.0  # how often cancel requests are looked for between renewals
PUBLISH_S = 1.0  # how often progress and new segments are written for other replicas


@dataclass
class Run:
    """One job this replica claimed and handed to its engine."""

    record: JobRecord  # the row as claimed: its attempt, options, recording's name, started_at
    handle: JobHandle  # the engine's handle of this attempt
    cancel_asked: bool = False  # someone asked it to stop (here or through the store), not a shutdown
    lost: bool = False  # the lease is no longer this replica's: stopped, nothing of it is written
    segments_sent: int = 0  # segments written to the store for other replicas to stream

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def attempt(self) -> int:
        return self.record.attempts


class Leases:
    """The runs this replica holds, by job id; safe to use from any thread. See the module docstring."""

    def __init__(self, store: JobStore, replica_id: str, lease_s: float, publish: bool):
        self.store = store
        self.replica_id = replica_id  # this process's name in the lease columns
        self.lease_s = lease_s  # how long a claim lasts unrenewed
        self.publish = publish  # write progress and segments (a shared store's other replicas read them)
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._renew_due = False  # the last renewal failed: the next tick renews first
        self._renewed_at = self._polled_at = self._published_at = time.monotonic()

    # -- the runs ----------------------------------------------------------------------------
    def add(self, run: Run) -> None:
        with self._lock:
            self._runs[run.id] = run

    def get(self, job_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(job_id)

    def pop(self, run: Run) -> bool:
        """Forget `run` (its row written, or the job gone); False if it was not held any more."""
        with self._lock:
            if self._runs.get(run.id) is not run:
                return False
            del self._runs[run.id]
            return True

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())

    def held(self) -> dict[str, int]:
        """Job id -> attempt of every job held: what renew extends."""
        return {run.id: run.attempt for run in self.runs()}

    # -- the ticks of the queue loop -------------------------------------------------------------
    def tick(self) -> tuple[list[Run], list[Run]]:
        """Renew or poll for cancel requests, as due, then publish progress. Returns the runs renew
        did not find (for the caller to stop, unless their outcome was written meanwhile) and the
        runs someone asked to stop since the last tick (`cancel_asked` set here). Raises what the
        store raises; the next tick then renews first."""
        now = time.monotonic()
        held = self.held()
        lost: list[Run] = []
        asked: set[str] = set()
        if self._renew_due or now - self._renewed_at >= self.lease_s * RENEW_FRACTION:
            self._renew_due = True
            kept = self.store.renew(self.replica_id, held, self.lease_s)
            self._renew_due = False
            self._renewed_at = self._polled_at = now
            lost = [run for run in self._current(held) if run.id not in kept]
            asked = {job_id for job_id, cancel in kept.items() if cancel}
        elif now - self._polled_at >= CANCEL_POLL_S:
            asked = self.store.cancel_requested(held)
            self._polled_at = now
        cancelled = [run for run in self._current(held) if run.id in asked and not run.cancel_asked]
        for run in cancelled:
            run.cancel_asked = True
        if self.publish and now - self._published_at >= PUBLISH_S:
            self._published_at = now
            self._write_progress()
        return lost, cancelled

    def _current(self, held: dict[str, int]) -> list[Run]:
        """The runs of `held` (a snapshot) still held at the same attempt."""
        return [run for run in self.runs() if held.get(run.id) == run.attempt and not run.lost]

    def _write_progress(self) -> None:
        running = [run for run in self.runs() if not run.lost and not run.handle.done()]
        self.store.record_progress({run.id: _progress(run) for run in running})
        for run in running:
            new = run.handle.segments_so_far()[run.segments_sent :]
            if new and self.store.append_segments(run.id, run.attempt, new):
                run.segments_sent += len(new)


def _progress(run: Run) -> Progress:
    handle = run.handle
    return Progress(run.attempt, handle.progress, handle.seconds_done, handle.seconds_total)
