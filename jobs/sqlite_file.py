"""The SQLite file behind SqliteJobStore: opened durable and private, its schema migrated, and
moved aside when it is damaged so that the server starts anyway.

    db = open_database(data_dir / DB_NAME, legacy_api_owner=None)
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from jobs.data_dir import PRIVATE_FILE, storage_error, tighten
from jobs.sqlite_schema import BASE_SCHEMA, migrate

log = logging.getLogger(__name__)

DB_NAME = "jobs.sqlite3"


def open_database(path: Path, legacy_api_owner: str | None) -> sqlite3.Connection:
    """The database at `path`, durable and private to this user, its schema brought up to date;
    a damaged one moved aside (with a warning) and a new one started. StorageError (naming the
    folder and what to do) when it cannot be written."""
    try:
        return _connect(path, legacy_api_owner)
    except sqlite3.DatabaseError as exc:
        if not _is_corrupt(exc):
            raise storage_error(exc, path.parent, path) from None
        reason = exc
    aside = _move_aside(path)
    log.warning(
        "The jobs database %s is damaged (%s): moved it to %s and started a new, empty one. "
        "The jobs stored in it are not in the new database (their results can only be "
        "read from the moved file).",
        path,
        reason,
        aside.name,
    )
    return _connect(path, legacy_api_owner)


def _connect(path: Path, legacy_api_owner: str | None) -> sqlite3.Connection:
    try:
        # Created 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    except OSError as exc:
        raise storage_error(exc, path.parent, path) from None
    for file in _files(path):
        tighten(file)
    db = None
    try:
        # isolation_level=None: autocommit, each statement is its own durable transaction.
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        db.execute("PRAGMA synchronous=FULL")  # a committed job survives a power cut too
        db.execute("PRAGMA secure_delete=ON")  # a deleted transcript is overwritten, not just unlinked
        db.executescript(BASE_SCHEMA)
        migrate(db, legacy_api_owner)
        # Reads every page once (quick: rows are small), so damage shows here, not in a job later.
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
    except BaseException:
        if db is not None:
            db.close()
        raise
    for file in _files(path):  # -wal and -shm exist now
        tighten(file)
    return db


def _files(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))]


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{DB_NAME}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{DB_NAME}.corrupt-{stamp}-{n}")
    try:
        for file, suffix in zip(_files(path), ("", "-wal", "-shm")):
            if file.exists():
                file.rename(aside.with_name(aside.name + suffix))
    except OSError as exc:
        raise storage_error(exc, path.parent, path) from None
    return aside


def _is_corrupt(error: sqlite3.DatabaseError) -> bool:
    """A file that is not a database or whose pages are damaged, as opposed to one that cannot
    be opened or written (OperationalError: permissions, read-only, full)."""
    name = getattr(error, "sqlite_errorname", "")
    return name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or type(error) is sqlite3.DatabaseError
