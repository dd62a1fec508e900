"""JobManager: durable jobs. Stored before anything runs them, run by whichever replica has room.

    jobs = JobManager(engine).start()      # purges expired jobs, starts the queue loop
    ticket = jobs.submit("talk.mp3", JobOptions(language="en"), name="talk.mp3")  # a JobTicket
    jobs.get(ticket.id)                    # JobInfo: the stored row + live status/progress
    jobs.close()

`submit` probes the recording, stores it (a file in the recordings' folder, or its bytes in the
database: jobs/recordings.py) and commits the job's row, queued, and that is all: once it
returns, a `kill -9` loses nothing. The queue loop (jobs/feed.py) then claims queued jobs, as many
as the engine has idle workers for, under a lease it renews while they run (jobs/claims.py), and
writes each outcome only where the row is still at the attempt it claimed. It is one mode for
both stores:

- SQLite (the default): one process owns data_dir, so its queue has one replica. Leases never run
  out; at start, `recover()` puts the jobs a killed process left running back in the queue.
- PostgreSQL (`job_store`): any number of replicas share the queue. A replica that dies has its
  jobs claimed by another once their leases (`job_lease_s`) run out, decoded again from the start.
  Every replica serves every job: listing, progress, streaming, cancel (`store.request_cancel`:
  the holder sees it within a second), whoever runs it.

Work is therefore at-least-once and written exactly once: a job killed halfway runs again from
the start, up to `max_attempts` claims; one the replicas keep dying in is failed then instead of
killing each of them in turn. A result that cannot be written (a full disk, the database away)
is kept in memory and written again by the queue loop until it lands; meanwhile the job reads
as running. A shared store that cannot be reached makes every call raise StoreUnavailable (503);
the loop carries on once it answers.

The client's file name is kept only as a display name; on disk the recording is named by the job
id and an extension from a fixed whitelist, so no client text ever becomes a path.

Audio retention: a job's recording is deleted as soon as the job is finished (done, failed or
cancelled). The stored result renders every format again, so the audio has no further use, and
recordings are the bulky (hours = hundreds of MB) and most private part. Rows (results) are
deleted after `job_retention_days`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from engine.audio.files import check_audio
from engine.engine import Engine
from engine.job_options import JobOptions
from engine.results import TranscriptionResult
from engine.settings import Settings
from engine.worker import JobCancelled, QueueFull
from jobs.data_dir import is_disk_full, private_dir
from jobs.errors import DiskFull, StorageError
from jobs.feed import Feed, in_client_terms
from jobs.owners import legacy_api_owner
from jobs.recordings import Audio, Recordings, stored_extension
from jobs.store import JobRecord, JobStore, new_replica_id, open_job_store
from jobs.ticket import JobTicket

log = logging.getLogger(__name__)

FEED_INTERVAL_S = 0.5  # how often the queue loop claims, renews as due and follows its tickets
PURGE_INTERVAL_S = 3600.0  # how often expired jobs are deleted while running
ORPHAN_AGE_S = 3600.0  # files in audio/ or uploads/ with no unfinished job, older than this, are deleted
# A store of one process: nobody else could take its jobs, so a lease never runs out (a killed
# process's jobs are queued again at the next start instead).
LOCAL_LEASE_S = 10 * 365 * 86400.0


def open_store(settings: Settings) -> JobStore:
    """The JobStore `settings.job_store` names (SQLite in `settings.data_dir` by default); raises a
    StorageError (in use, unwritable, full; StoreUnavailable for a PostgreSQL server not answering)."""
    return open_job_store(
        settings.job_store,
        settings.data_dir,
        legacy_api_owner=legacy_api_owner(list(settings.named_api_keys)),
    )


@dataclass(frozen=True)
class JobInfo:
    """A job as a front end shows it: the stored row merged with the live engine handle."""

    record: JobRecord  # the stored row (options, name, result, error, timestamps)
    status: str  # live: "queued" | "running" | "cancelling" | "done" | "failed" | "cancelled"
    queue_position: int  # 1 = next to start; 0 once running or finished
    progress: float  # 0..1, windows decoded over windows planned
    seconds_done: float  # seconds of the recording decoded so far (0 when not running)
    seconds_total: float  # the recording's length (0 until its audio is read)
    started_at: float | None = None  # unix time a replica claimed it (its last attempt)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def result(self) -> TranscriptionResult | None:
        """The result as shown and downloaded: with the speaker names the user gave."""
        return self.record.named_transcription()


class JobManager:
    """Durable jobs on top of an `Engine`; see the module docstring.

    `store` defaults to the `JobStore` the settings name (raising a StorageError when data_dir
    is taken by another server or cannot be written, or the database cannot be reached). Call
    `start()` once, and `close()` before `engine.close()` so jobs the engine stops on shutdown go
    back to the queue instead of being marked failed.
    """

    def __init__(
        self,
        engine: Engine,
        store: JobStore | None = None,
        *,
        retention_days: float | None = None,
        max_attempts: int | None = None,
    ):
        settings = engine.settings
        self.engine = engine
        self.store = store or open_store(settings)
        shared_dir = Path(settings.shared_audio_dir) if settings.shared_audio_dir else None
        try:
            # Recordings of unfinished jobs (or this replica's copies of those in the database),
            # and uploads being received (the same disk: moving one in is a rename).
            self.audio_dir = private_dir(shared_dir or self.store.data_dir / "audio", self.store.data_dir)
            self.upload_dir = private_dir(self.store.data_dir / "uploads", self.store.data_dir)
        except StorageError:
            if store is None:
                self.store.close()
            raise
        self.retention_s = (retention_days or settings.job_retention_days) * 86400
        self.max_attempts = max_attempts or settings.max_attempts
        self.replica_id = new_replica_id()
        self.recordings = Recordings(self.store, self.audio_dir, self.store.shared and shared_dir is None)
        lease_s = settings.job_lease_s if self.store.shared else LOCAL_LEASE_S
        self.feed = Feed(self.store, engine, self.recordings, self.replica_id, lease_s, self.max_attempts)
        self._queued = 0  # the queue's length when last read (pending_count during an outage)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> JobManager:
        """Delete expired jobs, queue again what a killed process left running (one-process
        store), start the queue loop."""
        self.purge_expired()
        recovered = self.recover()
        if recovered:
            log.info("Recovered %d unfinished job(s) from %s", recovered, self.store.location)
        self._thread = threading.Thread(target=self._serve_queue, name="job-queue", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the queue loop, give the jobs running here back to the queue (their starts not
        counted: a clean stop is not the job's doing) and close the store. Jobs still in the
        engine that finish later are not recorded; they run again (here at the next start, or on
        another replica)."""
        self._closing.set()
        self.feed.woken.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.feed.close()
        self.store.close()

    def recover(self) -> int:
        """A store of one process: the jobs its previous process left running go back to the
        queue (their start counted), for the queue loop to claim oldest first, a job claimed more
        than `max_attempts` times failed instead. Returns the unfinished jobs found. A shared
        store needs none of this (a dead replica's leases run out): 0."""
        if self.store.shared:
            return 0
        records = self.store.unfinished()
        for record in records:
            if record.status == "running" and self.feed.leases.get(record.id) is None:
                self.store.requeue(record.id)
        return len(records)

    def _serve_queue(self) -> None:
        last_purge, failing = time.monotonic(), None
        while not self._closing.is_set():
            self.feed.woken.clear()
            try:
                self.feed.tick()
                if time.monotonic() - last_purge > PURGE_INTERVAL_S:
                    last_purge = time.monotonic()
                    self.purge_expired()
                if failing is not None:
                    log.info("The job store %s answers again; the queue carries on", self.store.location)
                failing = None
            except Exception as exc:  # keep the loop alive; the next tick renews first
                if failing is None:
                    log.warning("The job queue loop failed (%s); retrying every %.1f s", exc, FEED_INTERVAL_S)
                    if not isinstance(exc, StorageError):
                        log.debug("The failure", exc_info=True)
                failing = exc
            self.feed.woken.wait(FEED_INTERVAL_S)

    # -- submitting ------------------------------------------------------------------------------
    def submit(
        self,
        audio: Audio,
        options: JobOptions | None = None,
        *,
        name: str = "",
        owner: str | None = None,
        source: str = "page",
        move: bool = False,
        **fields,
    ) -> JobTicket:
        """Probe and store the recording and the job, queued; returns its JobTicket (the engine
        JobHandle's face, wherever the job runs).

        `audio` is a path (copied, or renamed when `move` and it lies on the same disk) or the
        file's bytes; `options` (or its fields as keywords) is stored as the engine prepared it
        (the model by its id). Raises InvalidRequest, an AudioError or FileNotFoundError for a
        job the engine would refuse, QueueFull when `queue_size` jobs wait already, DiskFull
        when the recording or its row cannot be stored, StoreUnavailable when the database
        cannot be reached; then nothing of the job is kept.
        """
        options = self.engine.prepare(JobOptions.of(options, fields))
        if not isinstance(audio, bytes) and not Path(audio).is_file():
            raise FileNotFoundError(f"No such audio file: {Path(audio).name}")
        if not self.has_room():
            status = self.engine.status()
            raise QueueFull(
                f"the queue is full ({status.queue_size} jobs waiting, {status.busy_workers} running "
                "here); try again in a minute"
            )
        # Only the last component of a client's name is kept, and only to show it.
        name = re.split(r"[\\/]", name or ("" if isinstance(audio, bytes) else Path(audio).name))[-1]
        job_id = uuid.uuid4().hex[:12]
        record = JobRecord(
            id=job_id,
            created_at=time.time(),
            status="queued",
            name=name,
            owner=owner,
            source=source,
            options=options,
            audio=f"{job_id}{stored_extension(name)}",
        )
        ticket = JobTicket(record, self.cancel)
        self.feed.add_ticket(ticket)  # before the row: a claim right after it finds the ticket
        path = self.audio_dir / record.audio
        try:
            self.recordings.receive(audio, record.audio, move)
            # Refused now, not when claimed; a claim on this replica reuses the answer.
            ticket.probe = check_audio(path, self.engine.settings.max_audio_duration_s)
            self.recordings.add(record, path)
        except BaseException as exc:
            self.feed.drop_ticket(job_id)
            path.unlink(missing_ok=True)
            if is_disk_full(exc, self.store.data_dir):
                raise DiskFull(
                    "The server is out of disk space and cannot store the recording; try again later."
                ) from None
            raise in_client_terms(exc, record, self.audio_dir) from None
        ticket.stored = True
        self.feed.woken.set()
        return ticket

    def has_room(self) -> bool:
        """Whether the queue takes one more job: fewer than `queue_size` wait in it (in a shared
        store, the queue every replica shares). Checked before an upload is read, and at submit."""
        return self.pending_count < self.engine.settings.queue_size

    @property
    def pending_count(self) -> int:
        """Jobs waiting: those in the store's queue for a replica with room (the last length
        read, while the store cannot be read), and any submitted to this replica's engine
        directly. The queue length the sidebar, /healthz and /metrics show."""
        try:
            self._queued = self.store.queued_count()
        except Exception:  # a reading for display; /healthz says why the store cannot be read
            pass
        return self._queued + self.engine.status().queue_length

    def new_upload_path(self, name: str = "") -> Path:
        """A fresh path under data_dir/uploads for receiving an upload, so that `submit(...,
        move=True)` is a rename. Only the extension of `name` is used (whitelisted)."""
        return self.upload_dir / f"{uuid.uuid4().hex}{stored_extension(name)}"

    # -- reading ------------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobInfo | None:
        """The job's stored row merged with its live state; None for an unknown id."""
        record = self.store.get(job_id)
        return None if record is None else self._info(record)

    def recent(
        self, owner: str | None = None, limit: int = 20, any_owner: bool = False, after: str | None = None
    ) -> list[JobInfo]:
        """Newest first: one owner's jobs, or everyone's with `any_owner`; `after` a job id: the
        ones listed after it."""
        return [self._info(r) for r in self.store.recent(owner, limit, any_owner, after)]

    def _info(self, record: JobRecord) -> JobInfo:
        run = self.feed.leases.get(record.id)
        if run is not None and not run.lost and not record.finished:  # running here: live numbers
            handle, started = run.handle, record.started_at
            if handle.done():  # finished a moment ago (or its write waits for space): being written
                return JobInfo(record, "running", 0, 1.0, handle.seconds_done, handle.seconds_total, started)
            # cancelling: it stops at the decode loop's next step
            status = "cancelling" if handle.cancel_requested() or record.cancel_requested else "running"
            return JobInfo(
                record, status, 0, handle.progress, handle.seconds_done, handle.seconds_total, started
            )
        if record.status == "queued":
            return JobInfo(record, "queued", self.store.queue_position(record.id), 0.0, 0, 0)
        if record.status == "running":  # on another replica: the numbers its holder last wrote
            status = "cancelling" if record.cancel_requested else "running"
            done, total = record.seconds_done, record.seconds_total
            return JobInfo(record, status, 0, record.progress, done, total, record.started_at)
        if record.status == "done":  # the numbers it ended with: all of the recording decoded
            duration = float((record.result or {}).get("duration") or 0)
            return JobInfo(record, "done", 0, 1.0, duration, duration, record.started_at)
        return JobInfo(record, record.status, 0, 0.0, 0, 0, record.started_at)

    # -- cancelling and deleting -------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobInfo | None:
        """Cancel an unfinished job, wherever it runs: a queued one at once, a running one within
        one step of the decode loop (through another replica: within a second more), reading
        "cancelling" until it has. Returns the job afterwards (unchanged if it had finished);
        None for an unknown id. A job finishing now keeps its result: the store writes the
        request only to an unfinished row, and a finish is never undone."""
        record = self.store.get(job_id)
        if record is None or record.finished:
            return None if record is None else self._info(record)
        after = self.store.request_cancel(job_id)
        if after is None:
            return None
        if record.status == "queued" and after.status == "cancelled":  # it never ran: its file goes now
            self.recordings.forget(record)
            ticket = self.feed.ticket(job_id)
            if ticket is not None:
                ticket.resolve("cancelled", error=JobCancelled(f"job {job_id} was cancelled"))
        run = self.feed.leases.get(job_id)
        if run is not None and not run.lost:
            run.cancel_asked = True
            run.handle.cancel()
        return self._info(self.store.get(job_id) or after)

    def delete(self, job_id: str) -> bool:
        """Forget a finished job: its row, its result and any file of it. False when the job is
        not finished (cancel it first) or unknown."""
        record = self.store.get(job_id)
        if record is None or not self.store.delete_finished(job_id):
            return False
        self.recordings.forget(record)  # normally gone once the job finished; a failed delete left it
        log.info("Job %s deleted by its owner", job_id)
        return True

    # -- housekeeping -------------------------------------------------------------------------------
    def purge_expired(self, now: float | None = None) -> int:
        """Delete jobs finished more than `retention_s` ago, and stray files; returns jobs deleted."""
        now = time.time() if now is None else now
        expired = self.store.finished_before(now - self.retention_s)
        for record in expired:
            self.recordings.forget(record)
            self.store.delete(record.id)
        in_use = self.store.audio_in_use()
        for folder in (self.audio_dir, self.upload_dir):
            for path in folder.iterdir():
                try:
                    if path.name not in in_use and path.stat().st_mtime < now - ORPHAN_AGE_S:
                        path.unlink()
                except OSError:
                    pass
        if expired:
            log.info("Deleted %d job(s) older than %.0f days", len(expired), self.retention_s / 86400)
        return len(expired)

    @property
    def _durations(self):
        return self.feed.durations

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: about when the next running job ends."""
        if not self._durations:
            return 5
        average = sum(self._durations) / len(self._durations)
        return int(min(60, max(1, math.ceil(average / self.engine.worker.workers))))
