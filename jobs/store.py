"""The job store: one interface, two databases behind it.

    store = open_job_store("", "data")                          # SQLite in data/jobs.sqlite3
    store = open_job_store("postgresql://u:pw@db:5432/stt", "data")   # PostgreSQL, shared by replicas

`SqliteJobStore` (jobs/sqlite_store.py) is the embedded default: one server, nothing to
install. `PostgresJobStore` (jobs/postgres_store.py) is one queue that any number of server
processes on any number of machines (replicas) share. Both keep the same rows and obey the
same rules, and one test suite runs against both:

- A row moves forward only (TRANSITIONS): queued -> running -> done / failed / cancelled, each
  write applying only from the state before it (`UPDATE ... WHERE status IN (...)`, which says
  whether it applied), so a late writer can never overwrite a finished row.
- Replicas take work with `claim`: queued rows, and running rows whose lease ran out (their
  holder died), oldest first. Every claim adds one to `attempts`; the claimer keeps the lease
  with `renew`, and its `finish(..., attempt=n)` applies only while the row is still running
  under that attempt. So a holder that wakes up after its job moved on writes nothing.
- Any replica may ask for a running job to stop (`request_cancel`); the holder sees it in
  `renew`'s answer or `cancel_requested`. The holder writes the job's progress and the segments
  completed so far (`record_progress`, `append_segments`) for every replica to show and stream.

Results are stored as JSON of the whole `TranscriptionResult` (segments, words, timings), so
any format can be rendered again later without the audio. A recording either lies in a file
(`audio`: its name inside the folder the manager keeps recordings in) or travels in the
database itself (`add(..., recording=...)`, `read_recording`), in chunks, so that replicas
need nothing in common but the database.
"""

from __future__ import annotations

import abc
import json
import os
import secrets
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from engine.job_options import JobOptions
from engine.results import Segment, TokenLogprob, TranscriptionResult, Word
from jobs.data_dir import PRIVATE_FILE

UNFINISHED = ("queued", "running")  # rows a restart must queue again
FINISHED = ("done", "failed", "cancelled")
# Each status a row may move to, and the statuses it may come from. Nothing leaves a finished
# status: a late writer (a second run, a cancel, a retried write) cannot overwrite a result.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "running": ("queued",),  # a worker started it
    "queued": ("running",),  # it stopped unfinished (the server stopped): it runs again
    "done": ("running",),
    "failed": UNFINISHED,  # refused before it started (its recording vanished) or failed running
    "cancelled": UNFINISHED,
}
# A recording stored in the database is split into rows of this size: a reader or writer holds
# one chunk in memory at a time, and no single value nears PostgreSQL's 1 GB bytea limit.
RECORDING_CHUNK_BYTES = 4 << 20
Recording = str | os.PathLike | bytes  # a file to copy into the database, or its bytes


@dataclass
class JobRecord:
    """One stored job, as the database holds it."""

    id: str  # 12 hex characters, also the engine's job id
    created_at: float  # unix time the job was accepted
    status: str  # "queued" | "running" | "done" | "failed" | "cancelled"
    name: str = ""  # the client's file name, for display and download names only, never a path
    owner: str | None = None  # who may see it: "browser:<id>" / "user:<login>" (page), "api:<key>" (API)
    source: str = "api"  # "api" | "jobs" | "page": which front end submitted it
    options: JobOptions = field(default_factory=JobOptions)  # what was asked; a JSON object in the row
    audio: str | None = None  # the recording's file name (server-chosen); None once deleted
    result: dict[str, Any] | None = None  # `result_to_dict(TranscriptionResult)` once done
    error: str | None = None  # the failure's message, written for people
    error_type: str | None = None  # exception class name (NotAudio, QueueFull, ...) to map to HTTP codes
    started_at: float | None = None  # unix time a worker started it (last attempt)
    finished_at: float | None = None  # unix time it reached done/failed/cancelled
    attempts: int = 0  # times a worker started (claimed) it, less those a clean shutdown gave back
    lease_owner: str | None = None  # the replica running it (claim); None when no lease is held
    lease_expires_at: float | None = None  # unix time (the database's clock) the lease runs out
    cancel_requested: bool = False  # someone asked it to stop; its holder polls this
    progress: float = 0.0  # 0..1, windows decoded over windows planned, as the holder last wrote it
    seconds_done: float = 0.0  # seconds of the recording decoded, as the holder last wrote it
    seconds_total: float = 0.0  # the recording's length, once its holder has read the audio
    # names the user gave a done job's speakers, by the label diarization gave ({"A": "Ada"});
    # the result keeps the labels, so a name can be changed again or taken off
    speaker_names: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def transcription(self) -> TranscriptionResult | None:
        """The result as it was transcribed (speakers as diarization labelled them)."""
        return None if self.result is None else result_from_dict(self.result)

    def named_transcription(self) -> TranscriptionResult | None:
        """The result with the user's speaker names: what every front end shows and downloads."""
        result = self.transcription()
        return None if result is None else result.with_speaker_names(self.speaker_names)


COLUMNS = tuple(JobRecord.__dataclass_fields__)  # the jobs table's columns, in both stores


@dataclass(frozen=True)
class Progress:
    """How far a running job is, as its holder writes it (`record_progress`)."""

    attempt: int  # the claim it belongs to: a holder whose attempt moved on writes nothing
    progress: float  # 0..1, windows decoded over windows planned
    seconds_done: float  # seconds of the recording decoded so far
    seconds_total: float  # the recording's length (0 until its audio is read)


def result_to_dict(result: TranscriptionResult) -> dict[str, Any]:
    """Every field of the result (asdict), numpy floats made plain so JSON takes them."""
    return json.loads(json.dumps(asdict(result), default=float))


def result_from_dict(data: dict[str, Any]) -> TranscriptionResult:
    fields = {k: v for k, v in data.items() if k != "segments"}
    segments = [segment_from_dict(raw) for raw in data.get("segments", [])]
    return TranscriptionResult(segments=segments, **fields)


def segment_to_json(segment: Segment) -> str:
    return json.dumps(asdict(segment), default=float)


def segment_from_dict(raw: dict[str, Any]) -> Segment:
    raw = dict(raw)
    words = raw.pop("words", None)
    logprobs = raw.pop("logprobs", None)
    return Segment(
        **raw,
        words=None if words is None else [Word(**w) for w in words],
        logprobs=None if logprobs is None else [TokenLogprob(**p) for p in logprobs],
    )


def new_replica_id() -> str:
    """A name for this process in the lease columns: host and pid for people, a random tail
    so a restarted process with the same pid is never taken for the one before it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def check_update(changes: Mapping[str, Any]) -> None:
    """What `update` refuses: unknown columns (never pasted into SQL) and the status."""
    unknown = set(changes) - set(COLUMNS) - {"id"}
    if unknown:
        raise ValueError(f"unknown job columns: {', '.join(sorted(unknown))}")
    if "status" in changes:
        raise ValueError("status changes go through mark_running, claim, requeue or finish")


def final_changes(
    status: str,
    result: TranscriptionResult | None,
    error: str | None,
    error_type: str | None,
    started_at: float | None,
    finished_at: float,
) -> dict[str, Any]:
    """The columns `finish` writes: the outcome, no lease, and no recording (a finished job
    keeps none; the caller deletes its file after), so no reader sees one without the other."""
    if status not in FINISHED:
        raise ValueError(f"not a final status: {status!r}")
    changes = dict(
        status=status,
        result=None if result is None else result_to_dict(result),
        error=error,
        error_type=error_type,
        finished_at=finished_at,
        audio=None,
        lease_owner=None,
        lease_expires_at=None,
    )
    if started_at is not None:
        changes["started_at"] = started_at
    return changes


def recording_chunks(recording: Recording) -> Iterable[bytes]:
    """The recording in RECORDING_CHUNK_BYTES pieces (at least one, empty for no bytes)."""
    if isinstance(recording, bytes):
        yield from (
            recording[i : i + RECORDING_CHUNK_BYTES]
            for i in range(0, max(1, len(recording)), RECORDING_CHUNK_BYTES)
        )
        return
    with open(recording, "rb") as source:
        chunk = source.read(RECORDING_CHUNK_BYTES)
        yield chunk
        while chunk:
            chunk = source.read(RECORDING_CHUNK_BYTES)
            if chunk:
                yield chunk


def private_file(path: Path) -> BinaryIO:
    """`path` opened for writing, emptied, readable by this user only (0600) if it is created."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE), "wb")


class JobStore(abc.ABC):
    """What the job manager and the routes need of a job database; see the module docstring.

    Safe to use from any thread. Every method may raise a StorageError (jobs.data_dir): the
    PostgreSQL store raises StoreUnavailable while its server cannot be reached, and works
    again, without being reopened, once it can.
    """

    data_dir: Path  # this process's folder: uploads being received, local recordings, page files
    location: str  # the database as messages name it (a file, or a URL without its password)
    shared: bool  # other processes share this queue (PostgreSQL): recovery is by lease, not at start

    # -- writing ---------------------------------------------------------------------------
    @abc.abstractmethod
    def add(self, record: JobRecord, recording: Recording | None = None) -> None:
        """Insert a new row, and the recording's bytes with it when given, in one durable
        commit (an existing id raises the database's IntegrityError; nothing is written over)."""

    @abc.abstractmethod
    def update(self, job_id: str, **changes: Any) -> bool:
        """Set some columns of one unfinished row (names as in JobRecord; not its status, which
        only the state changes below move). Returns whether a row was changed."""

    @abc.abstractmethod
    def mark_running(self, job_id: str, started_at: float | None = None) -> bool:
        """queued -> running without a lease (a process that runs only its own jobs): counts
        the attempt. Whether it applied."""

    @abc.abstractmethod
    def requeue(self, job_id: str, *, count_attempt: bool = True, attempt: int | None = None) -> bool:
        """running -> queued, lease dropped: the job stopped unfinished and runs again.
        `count_attempt=False` for a clean shutdown, which is not the job's doing: that start is
        taken back off `attempts`. `attempt` given: only while the row is at that attempt."""

    @abc.abstractmethod
    def finish(
        self,
        job_id: str,
        status: str,
        *,
        attempt: int | None = None,
        result: TranscriptionResult | None = None,
        error: str | None = None,
        error_type: str | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> bool:
        """Record the outcome and forget the recording (row and stored bytes), if the row is in
        a state it may come from (TRANSITIONS). With `attempt` (a claimer's write), only while
        it is running at that attempt. Returns whether it applied."""

    def name_speakers(self, job_id: str, names: Mapping[str, str]) -> bool:
        """Store the names of a done job's speakers (all of them: those before are replaced);
        whether it applied (False for a job that is not done, or not there)."""
        return self._write(job_id, ("done",), {"speaker_names": dict(names)})

    @abc.abstractmethod
    def _write(self, job_id: str, from_states: tuple[str, ...], changes: dict[str, Any]) -> bool:
        """Set columns of one row (names checked by the caller) if it is in one of `from_states`."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> None:
        """Delete the row (and any recording stored with it), whatever its state."""

    @abc.abstractmethod
    def delete_finished(self, job_id: str) -> bool:
        """Delete the row if it is finished; False when it is not (or not there), so a job that
        is still running is never deleted behind its worker."""

    # -- the shared queue ------------------------------------------------------------------------
    @abc.abstractmethod
    def claim(self, replica_id: str, limit: int, lease_s: float) -> list[JobRecord]:
        """Take up to `limit` jobs, oldest first: queued ones, and running ones whose lease ran
        out. Each becomes running under a lease of `lease_s` held by `replica_id`, its attempts
        one more (the number its holder passes to `finish`), its progress zero. Two claimers
        never get the same job for the same lease."""

    @abc.abstractmethod
    def renew(self, replica_id: str, held: Mapping[str, int], lease_s: float) -> dict[str, bool]:
        """Extend the leases of `held` (job id -> attempt) by `lease_s` from now. Returns, for
        each job still held, whether a cancel was asked; a job missing from the answer is no
        longer this holder's (its lease ran out and another took it, or it was finished or
        deleted): the holder stops working on it and writes nothing of it."""

    @abc.abstractmethod
    def record_progress(self, updates: Mapping[str, Progress]) -> set[str]:
        """Write running jobs' progress for every replica to read; returns the ids written
        (those still running at the given attempt)."""

    @abc.abstractmethod
    def append_segments(self, job_id: str, attempt: int, segments: Sequence[Segment]) -> bool:
        """Add segments the holder completed, after those it added before (recording order), for
        other replicas to stream; False (nothing written) unless the job is running at `attempt`.
        A claim starts the list afresh; a finish drops it (the result holds them all)."""

    @abc.abstractmethod
    def segments(self, job_id: str, start: int = 0) -> tuple[int, list[Segment]]:
        """The attempt whose segments are stored, and those of them from the `start`-th on. A
        reader that sees the attempt change knows the job began again from its first segment."""

    @abc.abstractmethod
    def request_cancel(
        self, job_id: str, *, error: str | None = None, error_type: str = "JobCancelled"
    ) -> JobRecord | None:
        """Ask an unfinished job to stop, from any replica: a queued one is cancelled at once (its
        stored recording deleted), a running one gets `cancel_requested` for its holder to see.
        Returns the row afterwards; None for an unknown id."""

    @abc.abstractmethod
    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` that are unfinished and asked to stop."""

    @abc.abstractmethod
    def queue_position(self, job_id: str) -> int:
        """1 = the next queued job to be claimed; 0 when it is not queued (or unknown)."""

    @abc.abstractmethod
    def queued_count(self) -> int:
        """How many jobs wait in the queue (queued, not claimed yet)."""

    @abc.abstractmethod
    def read_recording(self, job_id: str, destination: Path) -> bool:
        """Write the recording stored with the job to `destination` (0600), a chunk at a time;
        False (nothing written) when the database holds none for it."""

    # -- reading ---------------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The row, or None."""

    @abc.abstractmethod
    def unfinished(self) -> list[JobRecord]:
        """Queued and running rows, oldest first: the order a restart queues them again."""

    @abc.abstractmethod
    def recent(
        self, owner: str | None = None, limit: int = 20, any_owner: bool = False, after: str | None = None
    ) -> list[JobRecord]:
        """Newest first; one owner's jobs (None = jobs without an owner) or everyone's. `after`:
        only those listed after that job (the next page), in insertion order, so jobs added
        meanwhile do not shift the pages."""

    @abc.abstractmethod
    def finished_before(self, cutoff: float) -> list[JobRecord]:
        """Finished rows whose finished_at is before `cutoff` (unix time): the expired ones."""

    def secret(self, name: str) -> str:
        """A random secret every process of this store reads alike, made on first use (the page's
        owner ids are encrypted with one, so a browser keeps its jobs on every replica). Here a
        file `name` in data_dir (0600), for a store of one process; a shared store keeps it in
        the database."""
        path = self.data_dir / name
        if not path.exists():
            with private_file(path) as out:
                out.write(secrets.token_urlsafe(32).encode())
        return path.read_text().strip()

    def audio_in_use(self) -> set:
        """Recording file names that an unfinished job still needs."""
        return {r.audio for r in self.unfinished() if r.audio}

    @abc.abstractmethod
    def close(self) -> None:
        """Close the database (and give data_dir up, where the store holds it)."""


def open_job_store(
    job_store: str, data_dir: str | Path, *, legacy_api_owner: str | None = None, **options: Any
) -> JobStore:
    """The store `job_store` names (the `job_store` setting): "" = SQLite in `data_dir`, a
    postgresql:// (or postgres://) URL = PostgreSQL, with `data_dir` this process's own folder.
    `legacy_api_owner` is for SQLite databases from before API keys had names (SqliteJobStore);
    `options` go to PostgresJobStore. Raises a StorageError when the store cannot be used."""
    if not job_store:
        from jobs.sqlite_store import SqliteJobStore

        return SqliteJobStore(data_dir, legacy_api_owner)
    if job_store.split("://", 1)[0] in ("postgresql", "postgres"):
        from jobs.postgres_store import PostgresJobStore

        return PostgresJobStore(job_store, data_dir, **options)
    raise ValueError("job_store: must be empty (SQLite in data_dir) or a postgresql:// URL")
