"""SqliteJobStore's own behaviour, beside the suite both stores pass (test_jobs_store.py): WAL, a
database another connection reads, the migrations of older databases, damaged files moved
aside, private files."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

import pytest

from jobs.sqlite_schema import BASE_SCHEMA, MIGRATIONS, SCHEMA_VERSION
from jobs.sqlite_store import SqliteJobStore
from jobs.store import JobRecord


def test_the_database_is_in_wal_mode_and_another_connection_sees_every_committed_row(tmp_path):
    store = SqliteJobStore(tmp_path)
    for i in range(10):
        store.add(JobRecord(f"{i:012d}", time.time(), "queued"))
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # readers never wait for a writer
    # Another connection (another process after a restart) sees every committed row.
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 10
    store.close()


def test_a_database_from_before_named_keys_opens_and_its_api_jobs_get_the_only_key(tmp_path):
    old = sqlite3.connect(tmp_path / "jobs.sqlite3")  # the layout as the first version left it
    old.executescript(BASE_SCHEMA)
    insert = "INSERT INTO jobs (id, created_at, status, owner, source) VALUES (?, ?, 'done', ?, ?)"
    old.execute(insert, ("a00000000000", 1, None, "api"))
    old.execute(insert, ("b00000000000", 2, None, "jobs"))
    old.execute(insert, ("c00000000000", 3, "browser:x", "page"))
    old.commit()
    old.close()
    store = SqliteJobStore(tmp_path, legacy_api_owner="api:default")
    assert [r.id for r in store.recent("api:default")] == ["b00000000000", "a00000000000"]
    assert store.get("c00000000000").owner == "browser:x"
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.add(JobRecord("d" * 12, 4.0, "queued", source="api"))  # migrated once: later rows keep their owner
    store.close()
    assert SqliteJobStore(tmp_path, legacy_api_owner="api:other").get("d" * 12).owner is None


def test_a_database_from_before_the_queue_columns_gets_them_and_its_jobs_run(tmp_path):
    old = sqlite3.connect(tmp_path / "jobs.sqlite3")  # version 1: owners, no lease, no recordings
    old.executescript(BASE_SCHEMA)
    old.execute("INSERT INTO jobs (id, created_at, status, attempts) VALUES ('a00000000000', 1, 'queued', 1)")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    store = SqliteJobStore(tmp_path)
    row = store.get("a00000000000")
    assert (row.lease_owner, row.cancel_requested, row.progress, row.seconds_total) == (None, False, 0.0, 0.0)
    (job,) = store.claim("r1", 1, 30)
    assert job.attempts == 2 and store.finish(job.id, "failed", attempt=2, error="x")
    store.close()


def test_a_database_from_before_speaker_names_gets_them_and_keeps_its_results(tmp_path):
    old = sqlite3.connect(tmp_path / "jobs.sqlite3")  # version 2: the queue's columns, no speaker names
    old.executescript(BASE_SCHEMA)
    for statement in MIGRATIONS[2]:
        old.execute(statement)
    result = '{"segments": [], "language": "en", "duration": 1.0}'
    old.execute(
        "INSERT INTO jobs (id, created_at, status, result) VALUES ('a00000000000', 1, 'done', ?)", (result,)
    )
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    store = SqliteJobStore(tmp_path)
    row = store.get("a00000000000")
    assert row.speaker_names == {} and row.transcription().duration == 1.0
    assert store.name_speakers("a00000000000", {"A": "Ada"})
    store.close()
    assert SqliteJobStore(tmp_path).get("a00000000000").speaker_names == {"A": "Ada"}


def _damaged_database(path):
    """A real jobs database whose pages after the first are overwritten, as a bad disk leaves one."""
    store = SqliteJobStore(path.parent)
    for i in range(200):
        store.add(JobRecord(f"{i:012d}", float(i), "queued", name="x" * 200))
    store.close()
    data = bytearray(path.read_bytes())
    data[4096:] = bytes(range(256)) * ((len(data) - 4096) // 256) + bytes((len(data) - 4096) % 256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["not a database", "damaged pages"])
def test_a_corrupt_database_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog, damage):
    path = tmp_path / "jobs.sqlite3"
    if damage == "not a database":
        path.write_bytes(b"these bytes were never an SQLite database\n" * 100)
    else:
        _damaged_database(path)
    damaged = path.read_bytes()
    with caplog.at_level("WARNING", logger="jobs.sqlite_store"):
        store = SqliteJobStore(tmp_path)
    aside = list(tmp_path.glob("jobs.sqlite3.corrupt-*"))
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [damaged]  # as it was
    warning = caplog.text
    assert str(path) in warning and aside[0].name in warning and "not in the new database" in warning
    store.add(JobRecord("a" * 12, 1.0, "queued"))  # the fresh one works, and is empty but for that
    assert [r.id for r in store.recent(any_owner=True)] == ["a" * 12]


def test_the_database_and_data_dir_are_private_even_when_they_were_not(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    SqliteJobStore(data_dir).close()
    for path in data_dir.iterdir():  # as an older version (or a careless umask) left them
        os.chmod(path, 0o644)
    leftover = sqlite3.connect(data_dir / "jobs.sqlite3")  # keeps -wal and -shm on disk, 0644
    leftover.execute("PRAGMA journal_mode=WAL")
    leftover.execute("INSERT INTO jobs (id, created_at, status) VALUES ('b00000000000', 1, 'queued')")
    leftover.commit()
    for suffix in ("-wal", "-shm"):
        os.chmod(data_dir / f"jobs.sqlite3{suffix}", 0o644)

    store = SqliteJobStore(data_dir)
    store.add(JobRecord("c" * 12, 2.0, "queued"))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [data_dir, *data_dir.iterdir()]}
    assert modes == {
        "data": 0o700,
        "jobs.sqlite3": 0o600,
        "jobs.sqlite3-wal": 0o600,
        "jobs.sqlite3-shm": 0o600,
        "owner.lock": 0o600,
    }
    leftover.close()
    store.close()

    fresh = tmp_path / "fresh"  # and a new one is created so
    SqliteJobStore(fresh).add(JobRecord("d" * 12, 3.0, "queued"))
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in [fresh, *fresh.iterdir()]} == {
        "fresh": 0o700,
        "jobs.sqlite3": 0o600,
        "jobs.sqlite3-wal": 0o600,
        "jobs.sqlite3-shm": 0o600,
        "owner.lock": 0o600,
    }
