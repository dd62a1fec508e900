"""JobStore: every accepted job as a row in an embedded SQLite database under `data_dir`.

SQLite because it ships with Python, needs no server, and its commit is durable: once
`add` returns, the row is on disk and survives `kill -9` (WAL journal, synchronous=FULL,
so a power cut cannot lose it either). One connection guarded by a lock serves every
thread; job rows are few and small, so contention does not matter.

A row moves forward only (TRANSITIONS): queued -> running -> done / failed / cancelled, each
write applying only from the state before it (`UPDATE ... WHERE status IN (...)`, which says
whether it applied). So a late writer, a second run or a cancel can never overwrite a
finished row. The store takes `data_dir` for its process (jobs.data_dir.DataDirLock): a
second server on the same folder refuses to start instead of running its jobs again.

Results are stored as JSON of the whole `TranscriptionResult` (segments, words, timings),
so any format can be rendered again later without the audio.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.job_options import JobOptions
from engine.results import Segment, TokenLogprob, TranscriptionResult, Word
from jobs.data_dir import PRIVATE_FILE, DataDirLock, storage_error, tighten

log = logging.getLogger(__name__)

DB_NAME = "jobs.sqlite3"
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    status      TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    owner       TEXT,
    source      TEXT NOT NULL DEFAULT 'api',
    options     TEXT NOT NULL DEFAULT '{}',
    audio       TEXT,
    result      TEXT,
    error       TEXT,
    error_type  TEXT,
    started_at  REAL,
    finished_at REAL,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs(owner, created_at);
"""
# PRAGMA user_version of the layout this code writes. 1: jobs sent through the API are owned
# by the name of the API key that sent them ("api:<name>"); before, they had no owner.
SCHEMA_VERSION = 1


@dataclass
class JobRecord:
    """One stored job, as the database holds it."""

    id: str  # 12 hex characters, also the engine's job id
    created_at: float  # unix time the job was accepted
    status: str  # "queued" | "running" | "done" | "failed" | "cancelled"
    name: str = ""  # the client's file name, for display and download names only, never a path
    # who may see it: "browser:<id>" / "user:<login>" (page), "api:<key name>" (API)
    owner: str | None = None
    source: str = "api"  # "api" | "jobs" | "page": which front end submitted it
    options: JobOptions = field(default_factory=JobOptions)  # what was asked; a JSON object in the row
    audio: str | None = None  # file name inside data_dir/audio (server-chosen); None once deleted
    result: dict[str, Any] | None = None  # `result_to_dict(TranscriptionResult)` once done
    error: str | None = None  # the failure's message, written for people
    error_type: str | None = None  # exception class name (NotAudio, QueueFull, ...) to map to HTTP codes
    started_at: float | None = None  # unix time a worker started it (last attempt)
    finished_at: float | None = None  # unix time it reached done/failed/cancelled
    attempts: int = 0  # times a worker started it, less those a clean shutdown stopped (max_attempts caps it)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def transcription(self) -> TranscriptionResult | None:
        return None if self.result is None else result_from_dict(self.result)


def result_to_dict(result: TranscriptionResult) -> dict[str, Any]:
    """Every field of the result (asdict), numpy floats made plain so JSON takes them."""
    return json.loads(json.dumps(asdict(result), default=float))


def result_from_dict(data: dict[str, Any]) -> TranscriptionResult:
    segments = []
    for raw in data.get("segments", []):
        raw = dict(raw)
        words = raw.pop("words", None)
        logprobs = raw.pop("logprobs", None)
        segments.append(
            Segment(
                **raw,
                words=None if words is None else [Word(**w) for w in words],
                logprobs=None if logprobs is None else [TokenLogprob(**p) for p in logprobs],
            )
        )
    fields = {k: v for k, v in data.items() if k != "segments"}
    return TranscriptionResult(segments=segments, **fields)


class JobStore:
    """The jobs table in `data_dir/jobs.sqlite3`; safe to use from any thread.

    Opening takes the data_dir for this process (DataDirInUse when another holds it) and raises
    a StorageError that names the folder and what to do when it cannot be written. A database
    that is not one (or is damaged) is moved aside as jobs.sqlite3.corrupt-<time> and a fresh
    one started beside it, with a warning: its jobs are not in the new one.

    A database written by an older version is brought up to SCHEMA_VERSION when opened. API
    jobs from before keys had names have no owner; they are given `legacy_api_owner` (the
    JobManager passes the config's only key's owner, or "anonymous"'s with no key), or,
    when that is None, stay ownerless: readable by no API key, still run and expired as usual.
    """

    def __init__(self, data_dir: Path | str, legacy_api_owner: str | None = None):
        self._owner = DataDirLock(data_dir)
        self.data_dir = self._owner.path
        self.path = self.data_dir / DB_NAME
        self._lock = threading.Lock()
        try:
            self._db = self._open(legacy_api_owner)
        except BaseException:
            self._owner.release()
            raise

    def _open(self, legacy_api_owner: str | None) -> sqlite3.Connection:
        try:
            return self._connect(legacy_api_owner)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise storage_error(exc, self.data_dir, self.path) from None
            reason = exc
        aside = self._move_aside()
        log.warning(
            "The jobs database %s is damaged (%s): moved it to %s and started a new, empty one. "
            "The jobs stored in it are not in the new database (their results can only be "
            "read from the moved file).",
            self.path,
            reason,
            aside.name,
        )
        return self._connect(legacy_api_owner)

    def _connect(self, legacy_api_owner: str | None) -> sqlite3.Connection:
        try:
            # Created 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
        except OSError as exc:
            raise storage_error(exc, self.data_dir, self.path) from None
        for path in self._files():
            tighten(path)
        db = None
        try:
            # isolation_level=None: autocommit, each statement is its own durable transaction.
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            db.execute("PRAGMA synchronous=FULL")  # a committed job survives a power cut too
            db.execute("PRAGMA secure_delete=ON")  # a deleted transcript is overwritten, not just unlinked
            db.executescript(_SCHEMA)
            _migrate(db, legacy_api_owner)
            # Reads every page once (quick: rows are small), so damage shows here, not in a job later.
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
        except BaseException:
            if db is not None:
                db.close()
            raise
        for path in self._files():  # -wal and -shm exist now
            tighten(path)
        return db

    def _files(self) -> list[Path]:
        return [self.path, *(self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm"))]

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}-{n}")
        try:
            for path, suffix in zip(self._files(), ("", "-wal", "-shm")):
                if path.exists():
                    path.rename(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise storage_error(exc, self.data_dir, self.path) from None
        return aside

    # -- writing ---------------------------------------------------------------------------
    def add(self, record: JobRecord) -> None:
        """Insert a new row (an existing id raises sqlite3.IntegrityError, so no row is written
        over); durable on disk when this returns."""
        row = self._to_row(record)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))

    def update(self, job_id: str, **changes: Any) -> bool:
        """Set some columns of one unfinished row (names as in JobRecord; not its status, which
        only the state changes below move). Returns whether a row was changed."""
        unknown = set(changes) - set(JobRecord.__dataclass_fields__) - {"id"}
        if unknown:
            raise ValueError(f"unknown job columns: {', '.join(sorted(unknown))}")
        if "status" in changes:
            raise ValueError("status changes go through mark_running, requeue or finish")
        return bool(changes) and self._write(job_id, UNFINISHED, changes)

    def mark_running(self, job_id: str, started_at: float | None = None) -> bool:
        """queued -> running: a worker started the job; counts the attempt. Whether it applied."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE id = ? AND status = 'queued'",
                (started_at or time.time(), job_id),
            )
        return cursor.rowcount == 1

    def requeue(self, job_id: str, *, count_attempt: bool = True) -> bool:
        """running -> queued: the job stopped unfinished and runs again at the next start.
        `count_attempt=False` for a clean shutdown, which is not the job's doing: that start is
        taken back off `attempts` (the cap is for jobs that keep killing the server)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'queued', attempts = MAX(0, attempts - ?) "
                "WHERE id = ? AND status = 'running'",
                (0 if count_attempt else 1, job_id),
            )
        return cursor.rowcount == 1

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: TranscriptionResult | None = None,
        error: str | None = None,
        error_type: str | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> bool:
        """Record the outcome, if the row is in a state it may come from (done: running;
        failed, cancelled: queued or running); returns whether it applied (False: finished
        already, or gone). The row forgets its recording in the same write (a finished job
        keeps none; the caller deletes the file after), so no reader sees one without the other."""
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status!r}")
        changes = dict(
            result=None if result is None else result_to_dict(result),
            error=error,
            error_type=error_type,
            finished_at=finished_at or time.time(),
            audio=None,
        )
        if started_at is not None:
            changes["started_at"] = started_at
        return self._write(job_id, TRANSITIONS[status], {"status": status, **changes})

    def _write(self, job_id: str, from_states: tuple[str, ...], changes: dict[str, Any]) -> bool:
        values = {k: _encode(k, v) for k, v in changes.items()}
        assignments = ", ".join(f"{k} = ?" for k in values)
        marks = ",".join("?" * len(from_states))
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
                (*values.values(), job_id, *from_states),
            )
        return cursor.rowcount == 1

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def delete_finished(self, job_id: str) -> bool:
        """Delete the row if it is finished; False when it is not (or not there), so a job that
        is still running is never deleted behind its worker."""
        marks = ",".join("?" * len(FINISHED))
        with self._lock:
            cursor = self._db.execute(
                f"DELETE FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *FINISHED)
            )
        return cursor.rowcount == 1

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._from_row(row)

    def unfinished(self) -> list[JobRecord]:
        """Queued and running rows, oldest first: the order a restart queues them again."""
        return self._select(
            f"status IN ({','.join('?' * len(UNFINISHED))}) ORDER BY created_at, rowid", UNFINISHED
        )

    def recent(
        self, owner: str | None = None, limit: int = 20, any_owner: bool = False, after: str | None = None
    ) -> list[JobRecord]:
        """Newest first; one owner's jobs (None = jobs without an owner) or everyone's. `after`:
        only those listed after that job (the next page), by (created_at, rowid), so jobs
        added meanwhile do not shift the pages."""
        where, params = ("1", ()) if any_owner else ("owner IS ?", (owner,))
        if after is not None:
            where += " AND (created_at, rowid) < (SELECT created_at, rowid FROM jobs WHERE id = ?)"
            params += (after,)
        return self._select(f"{where} ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit))

    def finished_before(self, cutoff: float) -> list[JobRecord]:
        return self._select(
            f"status IN ({','.join('?' * len(FINISHED))}) AND finished_at < ?", (*FINISHED, cutoff)
        )

    def audio_in_use(self) -> set:
        """File names under data_dir/audio that an unfinished job still needs."""
        return {r.audio for r in self.unfinished() if r.audio}

    def close(self) -> None:
        """Close the database and give data_dir up."""
        with self._lock:
            self._db.close()
        self._owner.release()

    # -- rows <-> records ----------------------------------------------------------------------
    def _select(self, where: str, params: tuple) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE {where}", params).fetchall()
        return [self._from_row(row) for row in rows]

    @staticmethod
    def _to_row(record: JobRecord) -> dict[str, Any]:
        return {f.name: _encode(f.name, getattr(record, f.name)) for f in fields(record)}

    @staticmethod
    def _from_row(row: sqlite3.Row) -> JobRecord:
        data = dict(row)
        data["options"] = JobOptions.from_json(json.loads(data["options"] or "{}"))
        data["result"] = None if data["result"] is None else json.loads(data["result"])
        return JobRecord(**data)


def _migrate(db: sqlite3.Connection, legacy_api_owner: str | None) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < 1:
        db.execute("BEGIN IMMEDIATE")
        if legacy_api_owner is not None:
            db.execute(
                "UPDATE jobs SET owner = ? WHERE owner IS NULL AND source != 'page'", (legacy_api_owner,)
            )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")


def _is_corrupt(error: sqlite3.DatabaseError) -> bool:
    """A file that is not a database or whose pages are damaged, as opposed to one that cannot
    be opened or written (OperationalError: permissions, read-only, full)."""
    name = getattr(error, "sqlite_errorname", "")
    return name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or type(error) is sqlite3.DatabaseError


_JSON_COLUMNS = ("options", "result")  # stored as JSON text


def _encode(column: str, value: Any) -> Any:
    if isinstance(value, JobOptions):
        value = value.to_json()
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value
