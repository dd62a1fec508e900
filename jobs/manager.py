"""JobManager: durable jobs. Stored before they are queued, queued again after a crash.

    jobs = JobManager(engine).start()      # purges expired jobs, re-queues unfinished ones
    handle = jobs.submit("talk.mp3", JobOptions(language="en"), name="talk.mp3")  # an engine JobHandle
    jobs.get(handle.id)                    # JobInfo: stored row + live status/progress
    jobs.close()

`submit` copies (or moves) the recording to `data_dir/audio/<id><ext>` and commits the
job's row to SQLite before it hands the job to the engine, so once it returns, a `kill -9`
loses nothing: at the next start `recover()` queues every unfinished row again, oldest
first. If the queue is full then, the rest wait in a pending list and are fed in as room
appears, never dropped. Work is therefore at-least-once: a job killed halfway runs again
from the start, up to `max_attempts` starts; one the server keeps dying in is failed then
instead of killing it at every start.

The row follows the job: queued, running once a worker starts it (that write counts the
attempt), then done, failed or cancelled; the store applies each change only from the state
before it, so a finished row is never written again. A result that cannot be written (the
disk is full) is kept in memory and written again from the maintenance thread until it
lands; meanwhile the job reads as running, its recording kept.

The client's file name is kept only as a display name; on disk the recording is named by
the job id and an extension from a fixed whitelist, so no client text ever becomes a path.

Audio retention: a job's recording is deleted as soon as the job is finished (done, failed
or cancelled). The stored result renders every format again, so the audio has no further
use, and recordings are the bulky (hours = hundreds of MB) and most private part; keeping
them for `job_retention_days` would multiply disk use for nothing. Rows (results) are
deleted after `job_retention_days`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from engine.audio.files import AudioError
from engine.engine import Engine, InvalidRequest
from engine.job_options import JobOptions
from engine.results import TranscriptionResult
from engine.settings import Settings
from engine.worker import JobCancelled, JobHandle, JobStatus, QueueFull, WorkerShutDown
from jobs.data_dir import PRIVATE_FILE, is_disk_full, private_dir
from jobs.errors import DiskFull, JobInterrupted, StorageError
from jobs.store import JobRecord, JobStore, open_job_store

log = logging.getLogger(__name__)

# Extensions a stored recording may keep (ffmpeg does not need one, but it is a hint for
# formats without a clear header, and a name a person can recognise). Anything else: none.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".mp3",
        ".m4a",
        ".mp4",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".webm",
        ".mpeg",
        ".mpga",
        ".aac",
        ".wma",
        ".mkv",
        ".mov",
        ".avi",
        ".aif",
        ".aiff",
        ".amr",
        ".3gp",
        ".caf",
    }
)
FEED_INTERVAL_S = 0.5  # how often waiting recovered jobs try for room in the queue
PURGE_INTERVAL_S = 3600.0  # how often expired jobs are deleted while running
ORPHAN_AGE_S = 3600.0  # files in audio/ or uploads/ with no unfinished job, older than this, are deleted
RECENT_DURATIONS = 20  # finished jobs the Retry-After estimate averages over
ANONYMOUS_CALLER = "anonymous"  # the API caller's name when no API key is configured


def api_owner(key_name: str) -> str:
    """The owner stored with a job sent through the API with the key called `key_name`: the
    name, never the key. Page owners are "browser:<id>" or "user:<login>", so they never meet."""
    return f"api:{key_name}"


def legacy_api_owner(key_names: list[str]) -> str | None:
    """Who gets the ownerless API jobs of a database from before keys had names: the config's
    only key (then as now, its holder saw them all), "anonymous" when the API is open, none
    when there are several keys (their jobs cannot be told apart)."""
    if not key_names:
        return api_owner(ANONYMOUS_CALLER)
    return api_owner(key_names[0]) if len(key_names) == 1 else None


Audio = str | os.PathLike | bytes


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
    started_at: float | None = None  # unix time a worker started it (live, or as stored)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def result(self) -> TranscriptionResult | None:
        return self.record.transcription()


def stored_extension(name: str) -> str:
    """The extension a stored recording gets: the name's own if whitelisted, else none."""
    suffix = Path(str(name).replace("\\", "/")).suffix.lower()
    return suffix if suffix in AUDIO_EXTENSIONS else ""


def _in_client_terms(error: BaseException, record: JobRecord, audio_dir: Path) -> BaseException:
    """The error with the stored file (data_dir/audio/<id>.flac, absolute or as given, or its bare
    name) replaced by the client's name, or by the job's id when it sent none; in place.

    Engine messages name the file they read; the client knows its recording by its own name,
    and a server path is nobody's business but the server's."""
    if not record.audio or not error.args or not isinstance(error.args[0], str):
        return error
    message = error.args[0]
    stored = audio_dir / record.audio
    # longest first
    for path in sorted({str(stored.resolve()), str(stored), record.audio}, key=len, reverse=True):
        message = message.replace(path, record.name or f"job {record.id}")
    error.args = (message, *error.args[1:])
    return error


@dataclass
class _Outcome:
    """A finished job's row as it is to be written; kept while the write fails (disk full)."""

    handle: JobHandle
    record: JobRecord | None  # the row as read when the job finished (None until read)
    status: str
    result: TranscriptionResult | None
    error: BaseException | None
    tries: int = 0


class JobManager:
    """Durable jobs on top of an `Engine`; see the module docstring.

    `store` defaults to a `JobStore` in `engine.settings.data_dir` (raising a StorageError
    when that is taken by another server or cannot be written). Call `start()` once (purge,
    recover, background feeding), and `close()` before `engine.close()` so jobs the engine
    stops on shutdown stay queued for the next start instead of being marked failed.
    """

    def __init__(
        self,
        engine: Engine,
        store: JobStore | None = None,
        *,
        retention_days: float | None = None,
        max_attempts: int | None = None,
    ):
        self.engine = engine
        self.store = store or open_store(engine.settings)
        try:
            # Recordings of unfinished jobs, and uploads being received (same disk: moving is a rename).
            self.audio_dir = private_dir(self.store.data_dir / "audio", self.store.data_dir)
            self.upload_dir = private_dir(self.store.data_dir / "uploads", self.store.data_dir)
        except StorageError:
            if store is None:
                self.store.close()
            raise
        self.retention_s = (retention_days or engine.settings.job_retention_days) * 86400
        self.max_attempts = max_attempts or engine.settings.max_attempts
        self._live: dict[str, JobHandle] = {}  # jobs the engine holds, until their row is written
        self._unwritten: dict[str, _Outcome] = {}  # finished, the write failed (disk full): retried
        self._pending: deque[str] = deque()  # recovered jobs waiting for room in the queue
        self._user_cancelled: set[str] = set()  # cancel() was asked (vs. stopped by shutdown)
        self._durations: deque[float] = deque(maxlen=RECENT_DURATIONS)
        self._lock = threading.RLock()  # held for every write, so each reads what the last one left
        self._feed_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False  # the store is closed: outcomes are no longer written
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> JobManager:
        """Delete expired jobs, queue the unfinished ones again, start background feeding."""
        self.purge_expired()
        recovered = self.recover()
        if recovered:
            log.info("Recovered %d unfinished job(s) from %s", recovered, self.store.location)
        self._thread = threading.Thread(target=self._maintain, name="job-maintenance", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop feeding and purging and close the database. Jobs still in the engine that
        finish later are not recorded, so they stay unfinished and run again at restart;
        the running ones are put back in the queue without counting that start (a clean
        stop is not the job's doing)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._closed:
                return
            self._write_unwritten()
            try:
                for job_id in self._live:
                    if job_id not in self._unwritten:
                        self.store.requeue(job_id, count_attempt=False)
            except Exception as exc:  # the disk is full: those starts stay counted
                log.warning(
                    "Could not put the running jobs back in the queue (%s); they run again at the "
                    "next start, each start counted",
                    exc,
                )
            for job_id in self._unwritten:
                log.warning(
                    "Job %s finished but its result could not be written before shutdown; "
                    "it runs again at the next start",
                    job_id,
                )
            self._closed = True
            self.store.close()

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
    ) -> JobHandle:
        """Store the recording and the job, then queue it; returns the engine's JobHandle.

        `audio` is a path (copied, or renamed when `move` and it lies on the same disk) or
        the file's bytes; `options` (or its fields as keywords) is stored as the engine
        prepared it (the model by its id). Raises what `Engine.submit` raises (QueueFull,
        InvalidRequest, an AudioError, FileNotFoundError), or DiskFull when the recording or
        its row cannot be stored; then nothing of the job is kept.
        """
        options = self.engine.prepare(JobOptions.of(options, fields))
        if not isinstance(audio, bytes) and not Path(audio).is_file():
            raise FileNotFoundError(f"No such audio file: {Path(audio).name}")
        # Only the last component of a client's name is kept, and only to show it.
        name = re.split(r"[\\/]", name or ("" if isinstance(audio, bytes) else Path(audio).name))[-1]
        job_id = uuid.uuid4().hex[:12]
        stored = self.audio_dir / f"{job_id}{stored_extension(name)}"
        record = JobRecord(
            id=job_id,
            created_at=time.time(),
            status="queued",
            name=name,
            owner=owner,
            source=source,
            options=options,
            audio=stored.name,
        )
        added = False
        try:
            self._store_audio(audio, stored, move)
            self.store.add(record)
            added = True
            return self._hand_to_engine(record)
        except BaseException as exc:
            if added:
                try:
                    self.store.delete(job_id)
                except Exception as delete_error:  # disk full: the row stays, and runs at the next start
                    log.warning(
                        "Job %s was refused (%s) but its row could not be deleted (%s)",
                        job_id,
                        exc,
                        delete_error,
                    )
            stored.unlink(missing_ok=True)
            if is_disk_full(exc, self.store.data_dir):
                raise DiskFull(
                    "The server is out of disk space and cannot store the recording; try again later."
                ) from None
            raise _in_client_terms(exc, record, self.audio_dir) from None

    def has_room(self) -> bool:
        """Whether the engine's queue could take one more job now (recovered jobs waiting for
        room count as queued): checked before an upload is read, and again at submit."""
        status = self.engine.status()
        return status.queue_length + len(self._pending) < status.queue_size

    def new_upload_path(self, name: str = "") -> Path:
        """A fresh path under data_dir/uploads for receiving an upload, so that `submit(...,
        move=True)` is a rename. Only the extension of `name` is used (whitelisted)."""
        return self.upload_dir / f"{uuid.uuid4().hex}{stored_extension(name)}"

    @staticmethod
    def _store_audio(audio: Audio, destination: Path, move: bool) -> None:
        """The recording at `destination`, readable by this user only (0600)."""
        if move and not isinstance(audio, bytes):
            shutil.move(os.fspath(audio), destination)  # a rename on the same file system
            os.chmod(destination, PRIVATE_FILE)
            return
        with open(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE), "wb") as out:
            if isinstance(audio, bytes):
                out.write(audio)
            else:
                with open(audio, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)

    def _hand_to_engine(self, record: JobRecord) -> JobHandle:
        audio = self.audio_dir / (record.audio or "")
        handle = self.engine.submit(str(audio), record.options, name=record.name, job_id=record.id)
        with self._lock:
            self._live[record.id] = handle
        handle.add_start_callback(self._on_started)  # these run at once if it already started / finished
        handle.add_done_callback(self._on_finished)
        return handle

    def _on_started(self, handle: JobHandle) -> None:
        """queued -> running, in the worker's thread before the job runs: the attempt is on disk
        before any work that could kill the process."""
        with self._lock:
            if self._closed:
                return
            try:
                self.store.mark_running(handle.id, handle.started_at)
            except Exception as exc:  # disk full: the job runs all the same, this start uncounted
                log.warning("Job %s started but that could not be recorded (%s)", handle.id, exc)

    def _on_finished(self, handle: JobHandle) -> None:
        with self._lock:
            asked = handle.id in self._user_cancelled
            self._user_cancelled.discard(handle.id)
        error = None if handle.status is JobStatus.DONE else handle.exception()
        stopped_by_shutdown = isinstance(error, WorkerShutDown) or (
            handle.status is JobStatus.CANCELLED and not asked and self._closing.is_set()
        )
        if stopped_by_shutdown:  # the row stays unfinished: the next start runs it again
            with self._lock:
                self._live.pop(handle.id, None)
            return
        result = handle.result() if handle.status is JobStatus.DONE else None
        with self._lock:
            self._record(_Outcome(handle, None, handle.status.value, result, error))

    def _record(self, outcome: _Outcome) -> None:
        """Write a finished job's row (under self._lock); on failure keep it to write again."""
        handle, record = outcome.handle, outcome.record
        if self._closed:  # shutting down: the row stays unfinished, the job runs again at restart
            self._live.pop(handle.id, None)
            return
        outcome.tries += 1
        try:
            if record is None:
                record = outcome.record = self.store.get(handle.id)
                if outcome.error is not None and record is not None:
                    _in_client_terms(outcome.error, record, self.audio_dir)  # the object the handle raises
            if outcome.status == "done":  # its start may not have been written (disk full then)
                self.store.mark_running(handle.id, handle.started_at)
            error = outcome.error
            applied = self.store.finish(
                handle.id,
                outcome.status,
                result=outcome.result,
                error=None if error is None else str(error),
                error_type=None if error is None else type(error).__name__,
                started_at=handle.started_at,
                finished_at=handle.finished_at,
            )
        except Exception as exc:
            if handle.id not in self._unwritten:
                log.warning(
                    "Job %s finished but its result cannot be written to %s (%s); it is kept in "
                    "memory and written as soon as that works again",
                    handle.id,
                    self.store.location,
                    exc,
                )
            self._unwritten[handle.id] = outcome
            return
        self._unwritten.pop(handle.id, None)
        self._live.pop(handle.id, None)
        if outcome.tries > 1:
            log.info("Job %s's result was written after %d tries", handle.id, outcome.tries)
        if not applied:  # finished already (or deleted): that row stands
            return
        if record is not None:
            self._delete_recording(record)
        if outcome.status == "done" and handle.started_at and handle.finished_at:
            self._durations.append(handle.finished_at - handle.started_at)

    def _write_unwritten(self) -> None:
        with self._lock:
            for outcome in list(self._unwritten.values()):
                self._record(outcome)

    # -- recovery ----------------------------------------------------------------------------------
    def recover(self) -> int:
        """Queue every unfinished stored job again (oldest first); returns how many.

        Those that do not fit in the engine's queue wait here and are fed in as room appears.
        A job started `max_attempts` times already is failed instead (JobInterrupted).
        """
        with self._lock:
            known = set(self._live) | set(self._pending)
            records = [r for r in self.store.unfinished() if r.id not in known]
            queued = []
            for record in records:
                if record.attempts >= self.max_attempts:
                    log.warning(
                        "Job %s was interrupted %d times; it is failed, not started again",
                        record.id,
                        record.attempts,
                    )
                    self._finish_without_engine(
                        record,
                        "failed",
                        JobInterrupted(
                            f"This job was interrupted {record.attempts} times (the server stopped "
                            "while it ran) "
                            "and is not started again: send the recording again to retry. If the "
                            "server keeps "
                            "stopping on it, it may be running out of memory on this recording."
                        ),
                    )
                    continue
                self.store.requeue(record.id)  # running -> queued: the previous server stopped in it
                queued.append(record.id)
            self._pending.extend(queued)
        self._feed()
        return len(queued)

    def _feed(self) -> None:
        """Hand pending recovered jobs to the engine until its queue is full."""
        with self._feed_lock:
            while True:
                with self._lock:
                    if not self._pending or self._closing.is_set():
                        return
                    job_id = self._pending[0]
                record = self.store.get(job_id)
                if record is None or record.finished:
                    with self._lock:
                        self._pending.popleft()
                    continue
                # Not under self._lock: the engine's worker calls _on_finished (which takes
                # it) while holding its own lock, and submit needs that one.
                try:
                    handle = self._hand_to_engine(record)
                except (QueueFull, WorkerShutDown):
                    return  # try again on the next tick
                except (AudioError, InvalidRequest, FileNotFoundError, ValueError) as exc:
                    # The recording vanished or the config changed (model no longer offered).
                    _in_client_terms(exc, record, self.audio_dir)
                    self._finish_without_engine(record, "failed", exc)
                    handle = None
                with self._lock:
                    still_pending = bool(self._pending) and self._pending[0] == job_id
                    if still_pending:
                        self._pending.popleft()
                    elif handle is not None:  # cancel() took it off the list while it was handed over
                        self._user_cancelled.add(job_id)
                if handle is not None and not still_pending:
                    handle.cancel()

    def _maintain(self) -> None:
        last_purge = time.monotonic()
        while not self._closing.wait(FEED_INTERVAL_S):
            try:
                self._write_unwritten()
                self._feed()
                if time.monotonic() - last_purge > PURGE_INTERVAL_S:
                    last_purge = time.monotonic()
                    self.purge_expired()
            except Exception:  # keep the thread alive; the next tick tries again
                log.exception("Job maintenance failed")

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

    @property
    def pending_count(self) -> int:
        """Recovered jobs still waiting for room in the engine's queue."""
        return len(self._pending)

    def _info(self, record: JobRecord) -> JobInfo:
        with self._lock:
            handle = self._live.get(record.id)
            pending_index = self._pending.index(record.id) if record.id in self._pending else None
        if handle is not None and not record.finished:
            if handle.done():  # finished a moment ago; its row is being written
                return JobInfo(
                    record,
                    JobStatus.RUNNING.value,
                    0,
                    1.0,
                    handle.seconds_done,
                    handle.seconds_total,
                    handle.started_at,
                )
            status = handle.status.value
            if status == JobStatus.RUNNING.value and handle.cancel_requested():
                status = "cancelling"  # the decode loop drops its windows at its next step
            return JobInfo(
                record,
                status,
                handle.queue_position,
                handle.progress,
                handle.seconds_done,
                handle.seconds_total,
                handle.started_at,
            )
        if pending_index is not None:
            position = self.engine.status().queue_length + pending_index + 1
            return JobInfo(record, "queued", position, 0.0, 0, 0)
        if record.status == "done":  # the numbers it ended with: all of the recording decoded
            duration = float((record.result or {}).get("duration") or 0)
            return JobInfo(record, "done", 0, 1.0, duration, duration, record.started_at)
        return JobInfo(record, record.status, 0, 0.0, 0, 0, record.started_at)

    # -- cancelling --------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobInfo | None:
        """Cancel an unfinished job (a running one stops within one step of the decode loop and
        reads "cancelling" until it has).
        Returns the job afterwards (unchanged if it had finished); None for an unknown id.

        Read and decided under the lock every write takes: a job finishing now is still live
        (its row not written yet), so it is never cancelled in the store behind its result."""
        with self._lock:
            record = self.store.get(job_id)
            if record is None or record.finished:
                return None if record is None else self._info(record)
            handle = self._live.get(job_id)
            if handle is not None:
                self._user_cancelled.add(job_id)
            else:
                if job_id in self._pending:
                    self._pending.remove(job_id)
                self._finish_without_engine(record, "cancelled", JobCancelled(f"job {job_id} was cancelled"))
        if handle is not None:
            handle.cancel()  # not under self._lock: it takes the worker's, which _on_finished runs under
        return self.get(job_id)

    def delete(self, job_id: str) -> bool:
        """Forget a finished job: its row, its result and any file of it. False when the job is
        not finished (cancel it first) or unknown."""
        with self._lock:
            record = self.store.get(job_id)
            if record is None or not self.store.delete_finished(job_id):
                return False
        self._delete_recording(record)  # normally gone once the job finished; a failed delete left it
        log.info("Job %s deleted by its owner", job_id)
        return True

    def _finish_without_engine(self, record: JobRecord, status: str, error: BaseException) -> None:
        with self._lock:
            applied = self.store.finish(record.id, status, error=str(error), error_type=type(error).__name__)
        if applied:
            self._delete_recording(record)

    def _delete_recording(self, record: JobRecord) -> None:
        if record.audio:
            (self.audio_dir / record.audio).unlink(missing_ok=True)

    # -- housekeeping -------------------------------------------------------------------------------
    def purge_expired(self, now: float | None = None) -> int:
        """Delete jobs finished more than `retention_s` ago, and stray files; returns jobs deleted."""
        now = time.time() if now is None else now
        expired = self.store.finished_before(now - self.retention_s)
        for record in expired:
            self._delete_recording(record)
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

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: about when the next running job ends."""
        if not self._durations:
            return 5
        average = sum(self._durations) / len(self._durations)
        return int(min(60, max(1, math.ceil(average / max(1, self.engine.settings.workers)))))
