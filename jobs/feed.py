"""Feed: one replica's side of the job queue. It claims what its engine has room for, runs it,
writes the outcome fenced by the attempt, keeps its leases, and follows the jobs it accepted.

    feed = Feed(store, engine, recordings, replica_id, lease_s, max_attempts)
    feed.tick()        # the job manager's queue loop, every FEED_INTERVAL_S and when woken
    feed.close()       # the jobs running here go back to the queue, their starts not counted

One tick, in order, stopping at the first call the store refuses (the database is down: the
rest would only fail too, and the next tick starts with the leases again):

1. Outcomes that could not be written (a full disk, the database away) are written again.
2. The leases are renewed when due (jobs/claims.py); a job lost stops here and writes nothing,
   a job someone asked to stop (through any replica) is cancelled in the engine.
3. Claims: as many jobs as the engine has idle workers for, oldest first. Only idle workers
   count, not the engine's queue: a job waits in the store, where every replica can take it,
   never behind a long job in one replica's queue. A job claimed more than `max_attempts` times
   (the replicas running it kept dying) is failed instead (JobInterrupted).
4. Tickets (jobs/ticket.py) of jobs accepted here and running elsewhere (or not yet anywhere)
   read their rows: status, queue position, progress, segments for a streaming client, and the
   outcome once it is there.

A job's outcome is written by the engine's worker thread the moment it ends (`finish(...,
attempt=n)`), and the ticket resolved then, even if the write fails: a synchronous client has
its transcript while the row waits for the disk or the database to come back.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from engine.audio.files import AudioError
from engine.engine import Engine
from engine.errors import InvalidRequest
from engine.results import TranscriptionResult
from engine.worker import JobCancelled, JobHandle, JobStatus, QueueFull, WorkerShutDown
from jobs.claims import Leases, Run
from jobs.errors import JobInterrupted
from jobs.recordings import Recordings
from jobs.store import JobRecord, JobStore
from jobs.ticket import JobTicket, stored_error

log = logging.getLogger(__name__)

RECENT_DURATIONS = 20  # finished jobs the Retry-After estimate averages over
# A job that cannot even be handed to the engine (its recording gone, a model no longer offered).
REFUSED = (AudioError, InvalidRequest, FileNotFoundError, ValueError)


@dataclass
class _Outcome:
    """A finished run's row as it is to be written; kept while the write fails."""

    run: Run
    status: str  # "done" | "failed" | "cancelled"
    result: TranscriptionResult | None
    error: BaseException | None
    tries: int = 0


def in_client_terms(error: BaseException, record: JobRecord, folder: Path) -> BaseException:
    """The error with the stored file (folder/<id>.flac, absolute or as given, or its bare name)
    replaced by the client's name, or by the job's id when it sent none; in place.

    Engine messages name the file they read; the client knows its recording by its own name,
    and a server path is nobody's business but the server's."""
    if not record.audio or not error.args or not isinstance(error.args[0], str):
        return error
    message = error.args[0]
    stored = folder / record.audio
    for path in sorted({str(stored.resolve()), str(stored), record.audio}, key=len, reverse=True):
        message = message.replace(path, record.name or f"job {record.id}")
    error.args = (message, *error.args[1:])
    return error


class Feed:
    """One replica's claims, runs, outcomes and tickets; see the module docstring."""

    def __init__(
        self,
        store: JobStore,
        engine: Engine,
        recordings: Recordings,
        replica_id: str,
        lease_s: float,
        max_attempts: int,
    ):
        self.store = store
        self.engine = engine
        self.recordings = recordings
        self.max_attempts = max_attempts  # claims a job may have; one more is failed
        self.leases = Leases(store, replica_id, lease_s, publish=store.shared)
        self.durations: deque[float] = deque(maxlen=RECENT_DURATIONS)  # seconds of recent jobs run here
        self.woken = threading.Event()  # a job was added or room freed: tick now
        self._tickets: dict[str, JobTicket] = {}  # jobs accepted here, until they finish
        self._unwritten: dict[str, _Outcome] = {}  # finished here, the write failed: retried
        self._lock = threading.RLock()  # every outcome write, and close, take it
        self._closing = threading.Event()
        self._closed = False  # the store is closed: nothing more is written

    # -- tickets ---------------------------------------------------------------------------
    def add_ticket(self, ticket: JobTicket) -> None:
        with self._lock:
            self._tickets[ticket.id] = ticket

    def drop_ticket(self, job_id: str) -> None:
        with self._lock:
            self._tickets.pop(job_id, None)

    def ticket(self, job_id: str) -> JobTicket | None:
        with self._lock:
            return self._tickets.get(job_id)

    # -- the tick ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One pass of the queue loop (module docstring); raises what the store raises."""
        self.write_unwritten()
        lost, cancelled = self.leases.tick()
        for run in lost:
            self._lose(run)
        for run in cancelled:
            run.handle.cancel()
        self._claim()
        self._follow()

    def room(self) -> int:
        """Idle workers of the engine not yet spoken for."""
        status = self.engine.status()
        return status.workers - status.busy_workers - status.queue_length

    def _claim(self) -> None:
        while not self._closing.is_set() and (room := self.room()) > 0:
            records = self.store.claim(self.leases.replica_id, room, self.leases.lease_s)
            if not records:
                return
            for record in records:
                try:
                    self._start(record)
                except Exception:  # the others still start; this one's lease runs out, another takes it
                    log.exception("Job %s was claimed but could not be started", record.id)

    def _start(self, record: JobRecord) -> None:
        earlier = self.leases.get(record.id)
        if earlier is not None:  # claimed again here after this replica's own lease lapsed
            self._lose(earlier)
        if record.attempts > self.max_attempts:
            starts = record.attempts - 1
            log.warning("Job %s was interrupted %d times; it is failed, not started again", record.id, starts)
            self._refuse(
                record,
                JobInterrupted(
                    f"This job was interrupted {starts} times (the server stopped while it ran) and is "
                    "not started again: send the recording again to retry. If the server keeps stopping "
                    "on it, it may be running out of memory on this recording."
                ),
            )
            return
        path = self.recordings.local(record)
        ticket = self.ticket(record.id)
        probe = ticket.probe if ticket is not None and path.is_file() else None  # probed at submit here
        try:
            handle = self.engine.submit(
                str(path), record.options, name=record.name, job_id=record.id, probed=probe
            )
        except (QueueFull, WorkerShutDown):  # no room after all (or closing): back, uncounted
            self.store.requeue(record.id, attempt=record.attempts, count_attempt=False)
            self.recordings.forget(record, finished=False)
            return
        except REFUSED as exc:  # the recording vanished, or the config changed
            self._refuse(record, in_client_terms(exc, record, self.recordings.folder))
            return
        # The metrics' queue wait: from acceptance (on any replica) to this start.
        handle.submitted_at = record.created_at
        run = Run(record, handle, cancel_asked=record.cancel_requested)
        self.leases.add(run)
        if ticket is not None:
            ticket.attach(handle, record.started_at)
        if run.cancel_asked:  # asked while its earlier holder ran it
            handle.cancel()
        handle.add_done_callback(functools.partial(self._on_finished, run))

    def _refuse(self, record: JobRecord, error: BaseException) -> None:
        """Fail a claimed job without running it."""
        applied = self.store.finish(
            record.id, "failed", attempt=record.attempts, error=str(error), error_type=type(error).__name__
        )
        self.recordings.forget(record, finished=applied)
        ticket = self.ticket(record.id)
        if ticket is not None:
            ticket.resolve("failed", error=error)

    def _lose(self, run: Run) -> None:
        """The lease went elsewhere (or the job is finished or gone): stop, write nothing."""
        with self._lock:  # the lock outcomes are written under: a run just written is no loss
            if not self.leases.pop(run):
                return
            run.lost = True
            if (outcome := self._unwritten.get(run.id)) is not None and outcome.run is run:
                del self._unwritten[run.id]
        run.handle.cancel()  # not under self._lock: the worker's done-callbacks take it
        self.recordings.forget(run.record, finished=False)
        ticket = self.ticket(run.id)
        if ticket is not None:
            ticket.detach()
        log.warning(
            "Job %s (attempt %d) is no longer this replica's (its lease ran out, or it finished "
            "elsewhere): stopped here, nothing of this attempt is written",
            run.id,
            run.attempt,
        )

    # -- outcomes ---------------------------------------------------------------------------
    def _on_finished(self, run: Run, handle: JobHandle) -> None:
        """In the engine's worker thread, as the run ends: write the row, resolve the ticket."""
        error = None if handle.status is JobStatus.DONE else handle.exception()
        shutdown = isinstance(error, WorkerShutDown) or (
            handle.status is JobStatus.CANCELLED and not run.cancel_asked and self._closing.is_set()
        )
        if run.lost or shutdown:  # another replica has it, or close() gave it back to the queue
            return
        if error is not None:
            in_client_terms(error, run.record, self.recordings.folder)  # the object the handle raises
        result = handle.result() if handle.status is JobStatus.DONE else None
        with self._lock:
            if self._closed or run.lost:
                return
            self._record(_Outcome(run, handle.status.value, result, error))
        ticket = self.ticket(run.id)
        if ticket is not None:
            ticket.resolve(handle.status.value, result, error)
        self.woken.set()  # a worker is free

    def _record(self, outcome: _Outcome) -> None:
        """Write a finished run's row (under self._lock); on failure keep it to write again."""
        run, error = outcome.run, outcome.error
        outcome.tries += 1
        try:
            applied = self.store.finish(
                run.id,
                outcome.status,
                attempt=run.attempt,
                result=outcome.result,
                error=None if error is None else str(error),
                error_type=None if error is None else type(error).__name__,
                finished_at=run.handle.finished_at,
            )
        except Exception as exc:
            if run.id not in self._unwritten:
                log.warning(
                    "Job %s finished but its result cannot be written to %s (%s); it is kept in "
                    "memory and written as soon as that works again",
                    run.id,
                    self.store.location,
                    exc,
                )
            self._unwritten[run.id] = outcome
            return
        self._unwritten.pop(run.id, None)
        self.leases.pop(run)
        if outcome.tries > 1:
            log.info("Job %s's result was written after %d tries", run.id, outcome.tries)
        self.recordings.forget(run.record, finished=applied)
        handle = run.handle
        if applied and outcome.status == "done" and handle.started_at and handle.finished_at:
            self.durations.append(handle.finished_at - handle.started_at)

    def write_unwritten(self) -> None:
        with self._lock:
            for outcome in list(self._unwritten.values()):
                if not self._closed:
                    self._record(outcome)

    def unwritten(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._unwritten

    # -- following the jobs accepted here ----------------------------------------------------------
    def _follow(self) -> None:
        with self._lock:
            tickets = list(self._tickets.values())
        for ticket in tickets:
            if ticket.done():
                self.drop_ticket(ticket.id)
            elif ticket.stored and not ticket.running_here:
                self._look(ticket)

    def _look(self, ticket: JobTicket) -> None:
        record = self.store.get(ticket.id)
        if record is None:  # deleted (only a finished job can be): nothing more to wait for
            ticket.resolve("cancelled", error=JobCancelled(f"job {ticket.id} was deleted"))
        elif record.status == "done":
            ticket.resolve("done", record.transcription())
        elif record.finished:
            ticket.resolve(record.status, error=stored_error(record))
        else:
            position = self.store.queue_position(ticket.id) if record.status == "queued" else 0
            segments = None
            if ticket.wants_segments and record.status == "running":
                attempt, new = self.store.segments(ticket.id, ticket.segments_read)
                if attempt != ticket.segments_attempt:  # it began again: its segments from the first
                    attempt, new = self.store.segments(ticket.id, 0)
                segments = (attempt, new)
            ticket.observe(record, position, segments)

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Write what can be written, give the jobs running here back to the queue (their starts
        not counted: a clean stop is not the job's doing), resolve the tickets (WorkerShutDown).
        Runs the engine finishes later write nothing. The store stays open (the caller closes it)."""
        self._closing.set()
        with self._lock:
            if self._closed:
                return
            self.write_unwritten()
            try:
                for run in self.leases.runs():
                    if run.id not in self._unwritten:
                        self.store.requeue(run.id, attempt=run.attempt, count_attempt=False)
            except Exception as exc:  # the disk is full or the database away
                log.warning(
                    "Could not put the running jobs back in the queue (%s); they run again once "
                    "their leases run out (or at the next start), each start counted",
                    exc,
                )
            for job_id in self._unwritten:
                log.warning(
                    "Job %s finished but its result could not be written before shutdown; it runs again",
                    job_id,
                )
            self._closed = True
            tickets, self._tickets = list(self._tickets.values()), {}
        for ticket in tickets:
            ticket.resolve(
                "failed",
                error=WorkerShutDown(
                    f"the server stopped before job {ticket.id} finished; it stays queued and runs again"
                ),
            )
