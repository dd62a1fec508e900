"""SqliteJobStore: every accepted job as a row in an embedded SQLite database under `data_dir`.

SQLite because it ships with Python, needs no server, and its commit is durable: once
`add` returns, the row is on disk and survives `kill -9` (WAL journal, synchronous=FULL,
so a power cut cannot lose it either). One connection guarded by a lock serves every
thread; job rows are few and small, so contention does not matter.

The store takes `data_dir` for its process (jobs.data_dir.DataDirLock): a second server on the
same folder refuses to start instead of running its jobs again. So its queue has one process,
and `claim`'s leases only matter between that process's own threads; the rules are those of
jobs/store.py, the same as PostgreSQL's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.job_options import JobOptions
from engine.results import Segment
from jobs.data_dir import DataDirLock
from jobs.sqlite_file import DB_NAME, open_database
from jobs.store import (
    COLUMNS,
    FINISHED,
    TRANSITIONS,
    UNFINISHED,
    JobRecord,
    JobStore,
    Progress,
    Recording,
    check_update,
    final_changes,
    private_file,
    recording_chunks,
    segment_from_dict,
    segment_to_json,
)

log = logging.getLogger(__name__)

_JSON_COLUMNS = ("options", "result", "speaker_names")  # stored as JSON text


class SqliteJobStore(JobStore):
    """The jobs table in `data_dir/jobs.sqlite3`; safe to use from any thread.

    Opening takes the data_dir for this process (DataDirInUse when another holds it) and raises
    a StorageError that names the folder and what to do when it cannot be written. A database
    that is not one (or is damaged) is moved aside as jobs.sqlite3.corrupt-<time> and a fresh
    one started beside it, with a warning: its jobs are not in the new one.

    A database written by an older version is brought up to the latest layout when opened
    (jobs/sqlite_schema.py). API jobs from before keys had names have no owner; they are given
    `legacy_api_owner` (the JobManager passes the config's only key's owner, or "anonymous"'s
    with no key), or, when that is None, stay ownerless: readable by no API key, still run and
    expired as usual.
    """

    shared = False

    def __init__(self, data_dir: Path | str, legacy_api_owner: str | None = None):
        self._owner = DataDirLock(data_dir)
        self.data_dir = self._owner.path
        self.path = self.data_dir / DB_NAME
        self.location = str(self.path)
        self._lock = threading.Lock()
        try:
            self._db = open_database(self.path, legacy_api_owner)
        except BaseException:
            self._owner.release()
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Several statements as one durable commit (one fsync), under the store's lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------
    def add(self, record: JobRecord, recording: Recording | None = None) -> None:
        row = {k: _encode(k, getattr(record, k)) for k in COLUMNS}
        columns, marks = ", ".join(row), ", ".join("?" for _ in row)
        with self._transaction() as db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))
            if recording is not None:
                chunks = enumerate(recording_chunks(recording))
                db.executemany(
                    "INSERT INTO recordings (job_id, seq, data) VALUES (?, ?, ?)",
                    ((record.id, seq, chunk) for seq, chunk in chunks),
                )

    def update(self, job_id: str, **changes: Any) -> bool:
        check_update(changes)
        return bool(changes) and self._write(job_id, UNFINISHED, changes)

    def mark_running(self, job_id: str, started_at: float | None = None) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE id = ? AND status = 'queued'",
                (started_at or time.time(), job_id),
            )
        return cursor.rowcount == 1

    def requeue(self, job_id: str, *, count_attempt: bool = True, attempt: int | None = None) -> bool:
        fence, params = ("", ()) if attempt is None else (" AND attempts = ?", (attempt,))
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'queued', attempts = MAX(0, attempts - ?), lease_owner = NULL, "
                f"lease_expires_at = NULL WHERE id = ? AND status = 'running'{fence}",
                (0 if count_attempt else 1, job_id, *params),
            )
        return cursor.rowcount == 1

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        attempt: int | None = None,
        result=None,
        error: str | None = None,
        error_type: str | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> bool:
        changes = final_changes(status, result, error, error_type, started_at, finished_at or time.time())
        from_states = TRANSITIONS[status] if attempt is None else ("running",)
        with self._transaction() as db:
            applied = self._update(db, job_id, from_states, changes, attempt)
            if applied:
                _forget_recording(db, job_id)
        return applied

    def _write(self, job_id: str, from_states: tuple[str, ...], changes: dict[str, Any]) -> bool:
        with self._lock:
            return self._update(self._db, job_id, from_states, changes)

    @staticmethod
    def _update(
        db: sqlite3.Connection,
        job_id: str,
        from_states: tuple[str, ...],
        changes: dict[str, Any],
        attempt: int | None = None,
    ) -> bool:
        values = {k: _encode(k, v) for k, v in changes.items()}
        assignments = ", ".join(f"{k} = ?" for k in values)
        marks = ",".join("?" * len(from_states))
        fence, params = ("", ()) if attempt is None else (" AND attempts = ?", (attempt,))
        cursor = db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks}){fence}",
            (*values.values(), job_id, *from_states, *params),
        )
        return cursor.rowcount == 1

    def delete(self, job_id: str) -> None:
        with self._transaction() as db:
            _forget_recording(db, job_id)
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def delete_finished(self, job_id: str) -> bool:
        marks = ",".join("?" * len(FINISHED))
        with self._transaction() as db:
            deleted = (
                db.execute(
                    f"DELETE FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *FINISHED)
                ).rowcount
                == 1
            )
            if deleted:
                _forget_recording(db, job_id)
        return deleted

    # -- the queue --------------------------------------------------------------------------------
    def claim(self, replica_id: str, limit: int, lease_s: float) -> list[JobRecord]:
        if limit <= 0:
            return []
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = ?, "
                "lease_expires_at = ?, started_at = ?, progress = 0, seconds_done = 0, seconds_total = 0 "
                "WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' "
                "OR (status = 'running' AND lease_expires_at < ?) ORDER BY created_at, rowid LIMIT ?) "
                "RETURNING rowid AS _seq, *",
                (replica_id, now + lease_s, now, now, limit),
            ).fetchall()
            # A new attempt decodes from the start: the segments a dead holder streamed go.
            db.executemany("DELETE FROM segments WHERE job_id = ?", [(row["id"],) for row in rows])
        rows.sort(key=lambda row: (row["created_at"], row["_seq"]))
        return [self._from_row(row) for row in rows]

    def renew(self, replica_id: str, held: Mapping[str, int], lease_s: float) -> dict[str, bool]:
        kept: dict[str, bool] = {}
        if not held:
            return kept
        with self._transaction() as db:
            for job_id, attempt in held.items():
                row = db.execute(
                    "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND attempts = ? AND "
                    "status = 'running' AND lease_owner = ? RETURNING cancel_requested",
                    (time.time() + lease_s, job_id, attempt, replica_id),
                ).fetchone()
                if row is not None:
                    kept[job_id] = bool(row[0])
        return kept

    def record_progress(self, updates: Mapping[str, Progress]) -> set[str]:
        written: set[str] = set()
        if not updates:
            return written
        with self._transaction() as db:
            for job_id, p in updates.items():
                cursor = db.execute(
                    "UPDATE jobs SET progress = ?, seconds_done = ?, seconds_total = ? "
                    "WHERE id = ? AND attempts = ? AND status = 'running'",
                    (p.progress, p.seconds_done, p.seconds_total, job_id, p.attempt),
                )
                if cursor.rowcount == 1:
                    written.add(job_id)
        return written

    def request_cancel(
        self, job_id: str, *, error: str | None = None, error_type: str = "JobCancelled"
    ) -> JobRecord | None:
        cancelled = final_changes(
            "cancelled", None, error or f"job {job_id} was cancelled", error_type, None, time.time()
        )
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status IN ('queued', 'running')",
                (job_id,),
            )
            if self._update(db, job_id, ("queued",), cancelled):
                _forget_recording(db, job_id)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._from_row(row)

    def append_segments(self, job_id: str, attempt: int, segments: Sequence[Segment]) -> bool:
        with self._transaction() as db:
            if (
                db.execute(
                    "SELECT 1 FROM jobs WHERE id = ? AND attempts = ? AND status = 'running'",
                    (job_id, attempt),
                ).fetchone()
                is None
            ):
                return False
            start = db.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM segments WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            db.executemany(
                "INSERT INTO segments (job_id, seq, data) VALUES (?, ?, ?)",
                [(job_id, start + n, segment_to_json(s)) for n, s in enumerate(segments)],
            )
        return True

    def segments(self, job_id: str, start: int = 0) -> tuple[int, list[Segment]]:
        with self._lock:
            attempt = self._db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            rows = self._db.execute(
                "SELECT data FROM segments WHERE job_id = ? AND seq >= ? ORDER BY seq", (job_id, start)
            ).fetchall()
        segments = [segment_from_dict(json.loads(row[0])) for row in rows]
        return (0 if attempt is None else attempt[0]), segments

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE id IN ({marks}) AND cancel_requested = 1 "
                "AND status IN ('queued', 'running')",
                ids,
            ).fetchall()
        return {row[0] for row in rows}

    def queue_position(self, job_id: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND (created_at, rowid) <= "
                "(SELECT created_at, rowid FROM jobs WHERE id = ? AND status = 'queued')",
                (job_id,),
            ).fetchone()[0]

    def queued_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]

    def read_recording(self, job_id: str, destination: Path) -> bool:
        out, seq = None, 0
        try:
            while (row := self._chunk(job_id, seq)) is not None:
                out = out or private_file(destination)
                out.write(row)
                seq += 1
        finally:
            if out is not None:
                out.close()
        return out is not None

    def _chunk(self, job_id: str, seq: int) -> bytes | None:
        with self._lock:  # one chunk at a time: the other threads' statements go between
            row = self._db.execute(
                "SELECT data FROM recordings WHERE job_id = ? AND seq = ?", (job_id, seq)
            ).fetchone()
        return None if row is None else row[0]

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._from_row(row)

    def unfinished(self) -> list[JobRecord]:
        marks = ",".join("?" * len(UNFINISHED))
        return self._select(f"status IN ({marks}) ORDER BY created_at, rowid", UNFINISHED)

    def recent(
        self, owner: str | None = None, limit: int = 20, any_owner: bool = False, after: str | None = None
    ) -> list[JobRecord]:
        where, params = ("1", ()) if any_owner else ("owner IS ?", (owner,))
        if after is not None:
            where += " AND (created_at, rowid) < (SELECT created_at, rowid FROM jobs WHERE id = ?)"
            params += (after,)
        return self._select(f"{where} ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit))

    def finished_before(self, cutoff: float) -> list[JobRecord]:
        marks = ",".join("?" * len(FINISHED))
        return self._select(f"status IN ({marks}) AND finished_at < ?", (*FINISHED, cutoff))

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._owner.release()

    # -- rows <-> records ----------------------------------------------------------------------
    def _select(self, where: str, params: tuple) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE {where}", params).fetchall()
        return [self._from_row(row) for row in rows]

    @staticmethod
    def _from_row(row: sqlite3.Row) -> JobRecord:
        data = {k: row[k] for k in COLUMNS}
        data["options"] = JobOptions.from_json(json.loads(data["options"] or "{}"))
        data["result"] = None if data["result"] is None else json.loads(data["result"])
        data["speaker_names"] = json.loads(data["speaker_names"] or "{}")
        data["cancel_requested"] = bool(data["cancel_requested"])
        return JobRecord(**data)


def _forget_recording(db: sqlite3.Connection, job_id: str) -> None:
    """What a job that finished or went keeps no more: its stored recording and streamed segments."""
    db.execute("DELETE FROM recordings WHERE job_id = ?", (job_id,))
    db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))


def _encode(column: str, value: Any) -> Any:
    if isinstance(value, JobOptions):
        value = value.to_json()
    if column == "cancel_requested":
        return int(bool(value))
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value
