"""The PostgreSQL job store's tables, created and migrated by the app itself.

    migrate(connection)     # under an advisory lock: any number of replicas may start at once

Tables are prefixed `whisper_` (as oban_jobs, good_jobs, procrastinate_jobs are), in whatever
schema the connection's search_path names first (`?options=-csearch_path%3Dstt` in the URL
picks another). `whisper_schema` lists each migration applied, once: the first replica to take
the lock applies what is missing, the others wait for it and find nothing left to do.
"""

from __future__ import annotations

import psycopg

from jobs.errors import StorageError

JOBS = "whisper_jobs"
RECORDINGS = "whisper_recordings"
SEGMENTS = "whisper_segments"
SECRETS = "whisper_secrets"
VERSIONS = "whisper_schema"
# pg_advisory_xact_lock key for migrating: any fixed number; the lock lasts the transaction.
MIGRATION_LOCK = 0x57485350  # "WHSP"

# version -> the statements that bring the schema of the version before to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"""CREATE TABLE {JOBS} (
            seq              BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,  -- insertion order, for pages
            id               TEXT PRIMARY KEY,
            created_at       DOUBLE PRECISION NOT NULL,
            status           TEXT NOT NULL
                             CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            name             TEXT NOT NULL DEFAULT '',
            owner            TEXT,
            source           TEXT NOT NULL DEFAULT 'api',
            options          JSONB NOT NULL DEFAULT '{{}}',
            audio            TEXT,
            -- JSON as text, not JSONB: Python writes NaN and Infinity, which JSONB refuses, and
            -- nothing queries inside a result.
            result           TEXT,
            error            TEXT,
            error_type       TEXT,
            started_at       DOUBLE PRECISION,
            finished_at      DOUBLE PRECISION,
            attempts         INTEGER NOT NULL DEFAULT 0,
            lease_owner      TEXT,
            lease_expires_at DOUBLE PRECISION,  -- the database's clock, so replicas' clocks never matter
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            progress         DOUBLE PRECISION NOT NULL DEFAULT 0,
            seconds_done     DOUBLE PRECISION NOT NULL DEFAULT 0,
            seconds_total    DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        # What claim scans: the unfinished rows only, oldest first.
        f"CREATE INDEX {JOBS}_queue ON {JOBS} (created_at, seq) WHERE status IN ('queued', 'running')",
        f"CREATE INDEX {JOBS}_owner ON {JOBS} (owner, created_at, seq)",
        f"CREATE INDEX {JOBS}_finished ON {JOBS} (finished_at) "
        "WHERE status IN ('done', 'failed', 'cancelled')",
        f"""CREATE TABLE {RECORDINGS} (
            job_id TEXT NOT NULL REFERENCES {JOBS} (id) ON DELETE CASCADE,
            seq    INTEGER NOT NULL,
            data   BYTEA NOT NULL,
            PRIMARY KEY (job_id, seq)
        )""",
        # Recordings are compressed already (mp3, opus, flac): stored as they are, without
        # PostgreSQL trying to compress them again.
        f"ALTER TABLE {RECORDINGS} ALTER COLUMN data SET STORAGE EXTERNAL",
        # The segments a running job completed so far (JSON text, as the result), in recording order.
        f"""CREATE TABLE {SEGMENTS} (
            job_id TEXT NOT NULL REFERENCES {JOBS} (id) ON DELETE CASCADE,
            seq    INTEGER NOT NULL,
            data   TEXT NOT NULL,
            PRIMARY KEY (job_id, seq)
        )""",
    ),
    # 2: secrets every replica shares (the page's owner ids are encrypted with one).
    2: (f"CREATE TABLE {SECRETS} (name TEXT PRIMARY KEY, value TEXT NOT NULL)",),
    # 3: the names the user gave a done job's speakers ({"A": "Ada"}).
    3: (f"ALTER TABLE {JOBS} ADD COLUMN speaker_names JSONB NOT NULL DEFAULT '{{}}'",),
}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(connection: psycopg.Connection, where: str) -> int:
    """Bring the schema to SCHEMA_VERSION in one transaction; returns the version found before.
    Raises StorageError when the database's schema is newer than this code (a replica of an
    older release beside newer ones: upgrade it)."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSIONS} (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        version = connection.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSIONS}").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"The job store {where} has schema version {version}, newer than this "
                f"server's {SCHEMA_VERSION}: another replica runs a newer release. "
                "Upgrade this one."
            )
        for target in sorted(v for v in MIGRATIONS if v > version):
            for statement in MIGRATIONS[target]:
                connection.execute(statement)
            connection.execute(f"INSERT INTO {VERSIONS} (version) VALUES (%s)", (target,))
    return version
