"""JobStore: rows survive a reopen (what a restart sees), results round-trip, queries."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from engine import JobOptions, Segment, TranscriptionResult, Word
from jobs.store import JobRecord, JobStore, result_from_dict, result_to_dict


def _result() -> TranscriptionResult:
    words = [Word(" hello", 0.0, 0.4, 0.9), Word(" world", 0.4, 0.9, 0.8)]
    return TranscriptionResult(
        segments=[
            Segment(0, 0.0, 0.9, " hello world", [1, 2], 0.0, -0.3, 1.1, 0.01, words),
            Segment(1, 1.0, 2.0, " again", [3], 0.2, -0.5, 1.0, 0.02),
        ],
        language="en",
        duration=2.0,
        model="micro",
        windows=1,
        tokens_decoded=7,
        processing_s=0.5,
    )


def test_result_round_trips_through_json():
    result = _result()
    assert result_from_dict(result_to_dict(result)) == result


def test_rows_survive_reopening(tmp_path):
    store = JobStore(tmp_path)
    store.add(
        JobRecord(
            "a" * 12, time.time(), "queued", name="talk.mp3", options=JobOptions(language="en"), audio="x.mp3"
        )
    )
    store.close()  # what a crash leaves: the committed row, nothing in memory

    reopened = JobStore(tmp_path)
    record = reopened.get("a" * 12)
    assert (
        record.status == "queued" and record.options == JobOptions(language="en") and record.audio == "x.mp3"
    )
    assert [r.id for r in reopened.unfinished()] == ["a" * 12]
    # WAL mode: readers never wait for a writer.
    assert reopened._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_finish_stores_result_and_error(tmp_path):
    store = JobStore(tmp_path)
    store.add(JobRecord("b" * 12, 1.0, "queued"))
    store.add(JobRecord("c" * 12, 2.0, "queued"))
    assert store.mark_running("b" * 12, started_at=5.0)
    assert store.finish("b" * 12, "done", result=_result(), finished_at=6.0)
    store.finish("c" * 12, "failed", error="not audio", error_type="NotAudio")
    done, failed = store.get("b" * 12), store.get("c" * 12)
    assert done.finished and done.transcription() == _result() and done.finished_at == 6.0
    assert failed.error == "not audio" and failed.error_type == "NotAudio" and failed.transcription() is None
    assert store.unfinished() == []
    with pytest.raises(ValueError):
        store.finish("b" * 12, "running")


def test_recent_and_finished_before(tmp_path):
    store = JobStore(tmp_path)
    for i, owner in enumerate(["me", "me", "you", None]):
        store.add(JobRecord(f"{i:012d}", float(i), "queued", owner=owner))
    store.mark_running(f"{0:012d}")
    store.finish(f"{0:012d}", "done", finished_at=10.0)
    store.finish(f"{1:012d}", "cancelled", finished_at=100.0)
    assert [r.id for r in store.recent("me")] == [f"{1:012d}", f"{0:012d}"]  # newest first
    assert [r.id for r in store.recent(None)] == [f"{3:012d}"]
    assert len(store.recent(limit=2, any_owner=True)) == 2
    assert [r.id for r in store.finished_before(50.0)] == [f"{0:012d}"]  # unfinished never expire
    store.delete(f"{0:012d}")
    assert store.get(f"{0:012d}") is None


def test_update_rejects_unknown_columns(tmp_path):
    store = JobStore(tmp_path)
    store.add(JobRecord("d" * 12, 1.0, "queued", audio="d.wav"))
    store.update("d" * 12, audio=None, attempts=3)
    assert store.get("d" * 12).audio is None and store.get("d" * 12).attempts == 3
    with pytest.raises(ValueError, match="unknown"):
        store.update("d" * 12, **{"audio = NULL; DROP TABLE jobs; --": 1})


def test_threads_share_one_store(tmp_path):
    store = JobStore(tmp_path)

    def add(n):
        for i in range(25):
            store.add(JobRecord(f"{n:02d}{i:010d}", time.time(), "queued"))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.unfinished()) == 100
    # Another connection (another process after a restart) sees every committed row.
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 100


def test_a_database_from_before_named_keys_opens_and_its_api_jobs_get_the_only_key(tmp_path):
    from jobs.store import _SCHEMA, SCHEMA_VERSION

    old = sqlite3.connect(tmp_path / "jobs.sqlite3")  # the layout as the previous version left it
    old.executescript(_SCHEMA)
    old.execute(
        "INSERT INTO jobs (id, created_at, status, owner, source) VALUES ('a00000000000', 1, 'done', NULL, 'api')"
    )
    old.execute(
        "INSERT INTO jobs (id, created_at, status, owner, source) VALUES ('b00000000000', 2, 'done', NULL, 'jobs')"
    )
    old.execute(
        "INSERT INTO jobs (id, created_at, status, owner, source) "
        "VALUES ('c00000000000', 3, 'done', 'browser:x', 'page')"
    )
    old.commit()
    old.close()
    store = JobStore(tmp_path, legacy_api_owner="api:default")
    assert [r.id for r in store.recent("api:default")] == ["b00000000000", "a00000000000"]
    assert store.get("c00000000000").owner == "browser:x"
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.add(JobRecord("d" * 12, 4.0, "queued", source="api"))  # migrated once: later rows keep their owner
    store.close()
    assert JobStore(tmp_path, legacy_api_owner="api:other").get("d" * 12).owner is None


def test_a_row_moves_forward_only_and_a_finished_row_is_never_written_again(tmp_path):
    store = JobStore(tmp_path)
    job = "e" * 12
    store.add(JobRecord(job, 1.0, "queued", audio="e.wav"))
    assert not store.finish(job, "done", result=_result())  # done only from running
    assert store.mark_running(job, started_at=2.0) and store.get(job).attempts == 1
    assert not store.mark_running(job)  # running already: not a second start
    assert store.finish(job, "done", result=_result(), finished_at=3.0)
    # A late writer: a cancel, a second run's failure, a re-run, a requeue, a stray update.
    assert not store.finish(job, "cancelled", error="job was cancelled", error_type="JobCancelled")
    assert not store.finish(job, "failed", error="There is no file", error_type="AudioFileNotFound")
    assert not store.mark_running(job) and not store.requeue(job)
    assert not store.update(job, audio="e.wav", attempts=9)
    with pytest.raises(ValueError, match="status"):
        store.update(job, status="queued")
    row = store.get(job)
    assert (row.status, row.transcription(), row.error, row.audio, row.attempts, row.finished_at) == (
        "done",
        _result(),
        None,
        None,
        1,
        3.0,
    )


def test_requeue_after_a_clean_stop_takes_the_start_back(tmp_path):
    store = JobStore(tmp_path)
    store.add(JobRecord("f" * 12, 1.0, "queued"))
    store.mark_running("f" * 12)
    assert store.requeue("f" * 12, count_attempt=False)
    assert (store.get("f" * 12).status, store.get("f" * 12).attempts) == ("queued", 0)
    store.mark_running("f" * 12)
    assert store.requeue("f" * 12)  # what recovery does after a kill: that start counts
    assert (store.get("f" * 12).status, store.get("f" * 12).attempts) == ("queued", 1)


def _damaged_database(path):
    """A real jobs database whose pages after the first are overwritten, as a bad disk leaves one."""
    store = JobStore(path.parent)
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
    with caplog.at_level("WARNING", logger="jobs.store"):
        store = JobStore(tmp_path)
    aside = list(tmp_path.glob("jobs.sqlite3.corrupt-*"))
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [damaged]  # as it was
    warning = caplog.text
    assert str(path) in warning and aside[0].name in warning and "not in the new database" in warning
    store.add(JobRecord("a" * 12, 1.0, "queued"))  # the fresh one works, and is empty but for that
    assert [r.id for r in store.recent(any_owner=True)] == ["a" * 12]


def test_the_database_and_data_dir_are_private_even_when_they_were_not(tmp_path):
    import os
    import stat

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    JobStore(data_dir).close()
    for path in data_dir.iterdir():  # as an older version (or a careless umask) left them
        os.chmod(path, 0o644)
    leftover = sqlite3.connect(data_dir / "jobs.sqlite3")  # keeps -wal and -shm on disk, 0644
    leftover.execute("PRAGMA journal_mode=WAL")
    leftover.execute("INSERT INTO jobs (id, created_at, status) VALUES ('b00000000000', 1, 'queued')")
    leftover.commit()
    for suffix in ("-wal", "-shm"):
        os.chmod(data_dir / f"jobs.sqlite3{suffix}", 0o644)

    store = JobStore(data_dir)
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
    JobStore(fresh).add(JobRecord("d" * 12, 3.0, "queued"))
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in [fresh, *fresh.iterdir()]} == {
        "fresh": 0o700,
        "jobs.sqlite3": 0o600,
        "jobs.sqlite3-wal": 0o600,
        "jobs.sqlite3-shm": 0o600,
        "owner.lock": 0o600,
    }
