"""PostgresJobStore: one job queue in PostgreSQL that any number of server processes share.

    store = PostgresJobStore("postgresql://stt:secret@db:5432/stt", "data")

Jobs, their results, progress, cancel requests and (by default) their recordings live in the
database, so replicas on different machines need nothing in common but its URL. Work is taken
with the leased-claim pattern that good_job, Oban, Que, river, procrastinate and pgqueuer are
built on: `SELECT ... FOR UPDATE SKIP LOCKED` in the claiming UPDATE, so two replicas claiming
at once never get the same row and never wait for each other; the lease times come from the
database's clock, so the replicas' clocks never matter.

Why psycopg and not procrastinate or pgqueuer: both run one task function per job from their
own job table, with their own statuses. Here one process claims as many jobs as its devices
have room for and feeds them all into one batching decode loop, and every replica lists,
follows and cancels any job: the job row is the queue entry, the listing and the result at
once, so a second table of queue state would be two truths to keep in step.

Connections, their settings and errors are jobs/postgres_pool.py's: a call while the server
cannot be reached raises StoreUnavailable (HTTP 503) within seconds, never hangs.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine.job_options import JobOptions
from engine.results import Segment
from jobs.data_dir import private_dir
from jobs.postgres_pool import Connections, connection_settings, redact, store_error
from jobs.postgres_schema import JOBS, RECORDINGS, SECRETS, SEGMENTS, migrate
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

NOW = "EXTRACT(EPOCH FROM statement_timestamp())::float8"  # the database's clock, unix seconds


class PostgresJobStore(JobStore):
    """The job tables in the PostgreSQL database at `dsn`; safe to use from any thread.

    Opening connects once (StoreUnavailable naming the server when it cannot), creates or
    migrates the tables (jobs/postgres_schema.py) and opens a pool of up to `pool_size`
    connections. `data_dir` is this process's own folder (uploads being received, the page's
    files); it is not locked, since many processes share this store by design. `wait_s`: how
    long a call waits for a free connection while all `pool_size` are busy.
    """

    shared = True

    def __init__(self, dsn: str, data_dir: Path | str, *, pool_size: int = 10, wait_s: float = 5.0):
        self.location = redact(dsn)
        self.data_dir = private_dir(Path(data_dir))
        settings = connection_settings(dsn)
        try:
            with psycopg.connect(**settings) as connection:
                found = migrate(connection, self.location)
        except psycopg.Error as exc:
            raise store_error(exc, self.location, opening=True) from None
        if found == 0:
            log.info("Created the job tables in %s", self.location)
        self._pool = Connections(settings, pool_size, wait_s, self.location)
        self._connection = self._pool.connection  # one transaction; the server's absence as StoreUnavailable

    def _execute(self, sql: str, params: Any = ()) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        with self._connection() as connection:
            return connection.execute(sql, params).rowcount

    def _changed_one(self, sql: str, params: Any = ()) -> bool:
        return self._execute(sql, params) == 1

    def _fetch(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        with self._connection() as connection:
            return connection.execute(sql, params).fetchall()

    def _rows(self, sql: str, params: Any = ()) -> list[JobRecord]:
        return [self._from_row(row) for row in self._fetch(sql, params)]

    # -- writing ---------------------------------------------------------------------------
    def add(self, record: JobRecord, recording: Recording | None = None) -> None:
        row = {k: _encode(k, getattr(record, k)) for k in COLUMNS}
        columns, marks = ", ".join(row), ", ".join("%s" for _ in row)
        with self._connection() as connection:
            connection.execute(f"INSERT INTO {JOBS} ({columns}) VALUES ({marks})", tuple(row.values()))
            if recording is not None:
                for seq, chunk in enumerate(recording_chunks(recording)):
                    connection.execute(
                        f"INSERT INTO {RECORDINGS} (job_id, seq, data) VALUES (%s, %s, %s)",
                        (record.id, seq, chunk),
                    )

    def update(self, job_id: str, **changes: Any) -> bool:
        check_update(changes)
        if not changes:
            return False
        return self._write(job_id, UNFINISHED, changes)

    def _write(self, job_id: str, from_states: tuple[str, ...], changes: dict[str, Any]) -> bool:
        with self._connection() as connection:
            return _update(connection, job_id, from_states, changes)

    def mark_running(self, job_id: str, started_at: float | None = None) -> bool:
        return self._changed_one(
            f"UPDATE {JOBS} SET status = 'running', started_at = %s, "
            "attempts = attempts + 1 WHERE id = %s AND status = 'queued'",
            (started_at or time.time(), job_id),
        )

    def requeue(self, job_id: str, *, count_attempt: bool = True, attempt: int | None = None) -> bool:
        fence, params = ("", ()) if attempt is None else (" AND attempts = %s", (attempt,))
        return self._changed_one(
            f"UPDATE {JOBS} SET status = 'queued', attempts = GREATEST(0, attempts - %s), "
            f"lease_owner = NULL, lease_expires_at = NULL WHERE id = %s AND status = 'running'{fence}",
            (0 if count_attempt else 1, job_id, *params),
        )

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
        with self._connection() as connection:
            applied = _update(connection, job_id, from_states, changes, attempt)
            if applied:
                _forget_recording(connection, job_id)
        return applied

    def delete(self, job_id: str) -> None:
        self._execute(f"DELETE FROM {JOBS} WHERE id = %s", (job_id,))  # its recording goes with it (cascade)

    def delete_finished(self, job_id: str) -> bool:
        return (
            self._execute(f"DELETE FROM {JOBS} WHERE id = %s AND status = ANY(%s)", (job_id, list(FINISHED)))
            == 1
        )

    # -- the queue --------------------------------------------------------------------------------
    def claim(self, replica_id: str, limit: int, lease_s: float) -> list[JobRecord]:
        if limit <= 0:
            return []
        # MATERIALIZED: the locked ids are picked once, so the UPDATE cannot plan the SELECT
        # into a join that locks (or skips) other rows than the ones it returns.
        with self._connection() as connection:
            rows = connection.execute(
                f"WITH picked AS MATERIALIZED (SELECT id FROM {JOBS} WHERE status = 'queued' "
                f"OR (status = 'running' AND lease_expires_at < {NOW}) ORDER BY created_at, seq LIMIT %s "
                f"FOR UPDATE SKIP LOCKED) "
                f"UPDATE {JOBS} AS j SET status = 'running', attempts = j.attempts + 1, lease_owner = %s, "
                f"lease_expires_at = {NOW} + %s, started_at = {NOW}, progress = 0, seconds_done = 0, "
                f"seconds_total = 0 FROM picked WHERE j.id = picked.id RETURNING j.*",
                (limit, replica_id, float(lease_s)),
            ).fetchall()
            if rows:  # a new attempt decodes from the start: the segments a dead holder streamed go
                connection.execute(
                    f"DELETE FROM {SEGMENTS} WHERE job_id = ANY(%s)", ([row["id"] for row in rows],)
                )
        return sorted((self._from_row(row) for row in rows), key=lambda r: r.created_at)

    def renew(self, replica_id: str, held: Mapping[str, int], lease_s: float) -> dict[str, bool]:
        if not held:
            return {}
        with self._connection() as connection:
            rows = connection.execute(
                f"UPDATE {JOBS} AS j SET lease_expires_at = {NOW} + %s "
                "FROM (SELECT unnest(%s::text[]) AS id, unnest(%s::int[]) AS attempt) AS h "
                "WHERE j.id = h.id AND j.attempts = h.attempt AND j.status = 'running' "
                "AND j.lease_owner = %s RETURNING j.id, j.cancel_requested",
                (float(lease_s), list(held), list(held.values()), replica_id),
            ).fetchall()
        return {row["id"]: row["cancel_requested"] for row in rows}

    def record_progress(self, updates: Mapping[str, Progress]) -> set[str]:
        if not updates:
            return set()
        values = list(updates.values())
        with self._connection() as connection:
            rows = connection.execute(
                f"UPDATE {JOBS} AS j SET progress = u.progress, seconds_done = u.done, "
                "seconds_total = u.total FROM (SELECT unnest(%s::text[]) AS id, "
                "unnest(%s::int[]) AS attempt, unnest(%s::float8[]) AS progress, "
                "unnest(%s::float8[]) AS done, unnest(%s::float8[]) AS total) AS u "
                "WHERE j.id = u.id AND j.attempts = u.attempt AND j.status = 'running' RETURNING j.id",
                (
                    list(updates),
                    [p.attempt for p in values],
                    [float(p.progress) for p in values],
                    [float(p.seconds_done) for p in values],
                    [float(p.seconds_total) for p in values],
                ),
            ).fetchall()
        return {row["id"] for row in rows}

    def request_cancel(
        self, job_id: str, *, error: str | None = None, error_type: str = "JobCancelled"
    ) -> JobRecord | None:
        cancelled = final_changes(
            "cancelled", None, error or f"job {job_id} was cancelled", error_type, None, time.time()
        )
        with self._connection() as connection:
            # The first write locks the row: a claim running now either took it before (it is
            # running: its holder sees the request) or skips it until this commits.
            connection.execute(
                f"UPDATE {JOBS} SET cancel_requested = TRUE WHERE id = %s "
                "AND status IN ('queued', 'running')",
                (job_id,),
            )
            if _update(connection, job_id, ("queued",), cancelled):
                _forget_recording(connection, job_id)
            row = connection.execute(f"SELECT * FROM {JOBS} WHERE id = %s", (job_id,)).fetchone()
        return None if row is None else self._from_row(row)

    def append_segments(self, job_id: str, attempt: int, segments: Sequence[Segment]) -> bool:
        with self._connection() as connection:
            # FOR SHARE: no claim moves the job to another attempt until these are in.
            if (
                connection.execute(
                    f"SELECT 1 FROM {JOBS} WHERE id = %s AND attempts = %s AND status = 'running' FOR SHARE",
                    (job_id, attempt),
                ).fetchone()
                is None
            ):
                return False
            start = connection.execute(
                f"SELECT COALESCE(MAX(seq) + 1, 0) AS n FROM {SEGMENTS} WHERE job_id = %s", (job_id,)
            ).fetchone()["n"]
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {SEGMENTS} (job_id, seq, data) VALUES (%s, %s, %s)",
                    [(job_id, start + n, segment_to_json(s)) for n, s in enumerate(segments)],
                )
        return True

    def segments(self, job_id: str, start: int = 0) -> tuple[int, list[Segment]]:
        with self._connection() as connection:
            attempt = connection.execute(f"SELECT attempts FROM {JOBS} WHERE id = %s", (job_id,)).fetchone()
            rows = connection.execute(
                f"SELECT data FROM {SEGMENTS} WHERE job_id = %s AND seq >= %s ORDER BY seq", (job_id, start)
            ).fetchall()
        segments = [segment_from_dict(json.loads(row["data"])) for row in rows]
        return (0 if attempt is None else attempt["attempts"]), segments

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        rows = self._fetch(
            f"SELECT id FROM {JOBS} WHERE id = ANY(%s) AND cancel_requested "
            "AND status IN ('queued', 'running')",
            (ids,),
        )
        return {row["id"] for row in rows}

    def queue_position(self, job_id: str) -> int:
        rows = self._fetch(
            f"SELECT COUNT(*) AS n FROM {JOBS} AS q, (SELECT created_at, seq FROM {JOBS} "
            "WHERE id = %s AND status = 'queued') AS me "
            "WHERE q.status = 'queued' AND (q.created_at, q.seq) <= (me.created_at, me.seq)",
            (job_id,),
        )
        return rows[0]["n"]

    def queued_count(self) -> int:
        return self._fetch(f"SELECT COUNT(*) AS n FROM {JOBS} WHERE status = 'queued'")[0]["n"]

    def secret(self, name: str) -> str:
        # The first replica's value wins; every later one reads it.
        with self._connection() as connection:
            connection.execute(
                f"INSERT INTO {SECRETS} (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, secrets.token_urlsafe(32)),
            )
            return connection.execute(f"SELECT value FROM {SECRETS} WHERE name = %s", (name,)).fetchone()[
                "value"
            ]

    def read_recording(self, job_id: str, destination: Path) -> bool:
        out, seq = None, 0
        try:
            with self._connection() as connection:
                chunk = f"SELECT data FROM {RECORDINGS} WHERE job_id = %s AND seq = %s"
                while (row := connection.execute(chunk, (job_id, seq)).fetchone()) is not None:
                    out = out or private_file(destination)
                    out.write(row["data"])
                    seq += 1
        finally:
            if out is not None:
                out.close()
        return out is not None

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        records = self._rows(f"SELECT * FROM {JOBS} WHERE id = %s", (job_id,))
        return records[0] if records else None

    def unfinished(self) -> list[JobRecord]:
        return self._rows(
            f"SELECT * FROM {JOBS} WHERE status IN ('queued', 'running') ORDER BY created_at, seq"
        )

    def recent(
        self, owner: str | None = None, limit: int = 20, any_owner: bool = False, after: str | None = None
    ) -> list[JobRecord]:
        where, params = (
            ("TRUE", ())
            if any_owner
            else (("owner IS NULL", ()) if owner is None else ("owner = %s", (owner,)))
        )
        if after is not None:
            where += f" AND (created_at, seq) < (SELECT created_at, seq FROM {JOBS} WHERE id = %s)"
            params += (after,)
        return self._rows(
            f"SELECT * FROM {JOBS} WHERE {where} ORDER BY created_at DESC, seq DESC LIMIT %s",
            (*params, limit),
        )

    def finished_before(self, cutoff: float) -> list[JobRecord]:
        return self._rows(
            f"SELECT * FROM {JOBS} WHERE status = ANY(%s) AND finished_at < %s", (list(FINISHED), cutoff)
        )

    def close(self) -> None:
        self._pool.close()

    # -- rows <-> records ----------------------------------------------------------------------
    @staticmethod
    def _from_row(row: dict[str, Any]) -> JobRecord:
        data = {k: row[k] for k in COLUMNS}
        data["options"] = JobOptions.from_json(data["options"] or {})
        data["result"] = None if data["result"] is None else json.loads(data["result"])
        data["speaker_names"] = data["speaker_names"] or {}
        return JobRecord(**data)


def _forget_recording(connection: psycopg.Connection, job_id: str) -> None:
    """What a finished job keeps no more: its stored recording and streamed segments."""
    connection.execute(f"DELETE FROM {RECORDINGS} WHERE job_id = %s", (job_id,))
    connection.execute(f"DELETE FROM {SEGMENTS} WHERE job_id = %s", (job_id,))


def _update(
    connection: psycopg.Connection,
    job_id: str,
    from_states: tuple[str, ...],
    changes: dict[str, Any],
    attempt: int | None = None,
) -> bool:
    """One row's columns (names checked by the caller), if it is in one of `from_states` (and
    at `attempt`); whether it applied."""
    values = {k: _encode(k, v) for k, v in changes.items()}
    assignments = ", ".join(f"{k} = %s" for k in values)
    fence, params = ("", ()) if attempt is None else (" AND attempts = %s", (attempt,))
    cursor = connection.execute(
        f"UPDATE {JOBS} SET {assignments} WHERE id = %s AND status = ANY(%s){fence}",
        (*values.values(), job_id, list(from_states), *params),
    )
    return cursor.rowcount == 1


def _encode(column: str, value: Any) -> Any:
    if column == "options":
        return Jsonb(value.to_json() if isinstance(value, JobOptions) else value or {})
    if column == "speaker_names":
        return Jsonb(value or {})
    if column == "result" and value is not None:
        return json.dumps(value)
    return value
