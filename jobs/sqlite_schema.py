"""The SQLite job store's layout and its migrations, kept in the database's PRAGMA user_version.

    db.executescript(BASE_SCHEMA)     # the first layout, where no table exists yet
    migrate(db, legacy_api_owner)     # then every migration the database has not had, in order

One process owns the database (jobs.data_dir.DataDirLock), so nothing else migrates it at the
same time; each migration is one transaction, so a crash leaves the version before or after.
"""

from __future__ import annotations

import sqlite3

# The layout of version 1; later versions change it in MIGRATIONS, so a database of any
# version is brought to the same place.
BASE_SCHEMA = """
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
# PRAGMA user_version -> the statements that bring a database of the version before to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1: jobs sent through the API are owned by their API key's name ("api:<name>"); before,
    # they had no owner (the owner is filled in by migrate, from the configuration).
    1: (),
    # 2: the queue's columns (lease, cancel request, progress), recordings kept in the database,
    # and the segments a running job has completed so far.
    2: (
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires_at REAL",
        "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN progress REAL NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN seconds_done REAL NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN seconds_total REAL NOT NULL DEFAULT 0",
        "CREATE TABLE recordings (job_id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, "
        "PRIMARY KEY (job_id, seq)) WITHOUT ROWID",
        "CREATE TABLE segments (job_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL, "
        "PRIMARY KEY (job_id, seq)) WITHOUT ROWID",
    ),
    # 3: the names the user gave a done job's speakers (JSON, {"A": "Ada"}).
    3: ("ALTER TABLE jobs ADD COLUMN speaker_names TEXT NOT NULL DEFAULT '{}'",),
}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(db: sqlite3.Connection, legacy_api_owner: str | None) -> None:
    """Apply each migration past the database's user_version; `legacy_api_owner` is who gets the
    ownerless API jobs of a database from before named keys (version 1)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for target in sorted(v for v in MIGRATIONS if v > version):
        db.execute("BEGIN IMMEDIATE")
        try:
            if target == 1 and legacy_api_owner is not None:
                db.execute(
                    "UPDATE jobs SET owner = ? WHERE owner IS NULL AND source != 'page'", (legacy_api_owner,)
                )
            for statement in MIGRATIONS[target]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
