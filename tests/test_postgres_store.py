"""PostgresJobStore's own behaviour, on a real server (tests/postgres_server.py), beside the suite
both stores pass (test_jobs_store.py): a replica process killed with its jobs held, the server
restarted under a store, replicas creating the schema at once, a wrong password, a schema newer
than the code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psycopg
import pytest

from conftest import ROOT
from jobs.errors import StorageError, StoreUnavailable
from jobs.postgres_pool import redact
from jobs.postgres_schema import JOBS, MIGRATIONS, SCHEMA_VERSION, VERSIONS
from jobs.postgres_store import PostgresJobStore
from jobs.store import JobRecord, open_job_store
from postgres_server import PASSWORD

# A replica that claims three jobs under a short lease and keeps renewing it until it is killed.
HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from jobs.postgres_store import PostgresJobStore
    store = PostgresJobStore(sys.argv[2], sys.argv[3])
    held = {job.id: job.attempts for job in store.claim("holder", 3, 1.0)}
    print(",".join(sorted(held)), flush=True)
    while True:
        store.renew("holder", held, 1.0)
        time.sleep(0.2)
""")


@pytest.fixture
def store(postgres_dsn, tmp_path):
    store = PostgresJobStore(postgres_dsn, tmp_path / "data", wait_s=1)
    yield store
    store.close()


def test_the_url_picks_postgresql_and_its_data_dir_is_not_locked(postgres_dsn, tmp_path):
    first = open_job_store(postgres_dsn, tmp_path / "data")
    other_spelling = postgres_dsn.replace("postgresql://", "postgres://")
    second = open_job_store(other_spelling, tmp_path / "data")  # the same folder
    try:
        assert isinstance(first, PostgresJobStore) and first.shared and (tmp_path / "data").is_dir()
        assert PASSWORD not in first.location and first.location == redact(postgres_dsn)
        first.add(JobRecord("a" * 12, 1.0, "queued"))
        assert second.get("a" * 12).status == "queued"
    finally:
        first.close()
        second.close()


def test_the_jobs_of_a_killed_replica_are_claimed_by_another_once_its_lease_runs_out(
    store, postgres_dsn, tmp_path
):
    for i in range(4):
        store.add(JobRecord(f"{i:012d}", float(i), "queued"), recording=b"audio")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ROOT), postgres_dsn, str(tmp_path / "holder")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = holder.stdout.readline().strip().split(",")
        assert held == [f"{i:012d}" for i in range(3)]
        time.sleep(1.5)  # longer than its lease: it renews, so they stay its own
        assert [job.id for job in store.claim("survivor", 10, 30)] == [f"{3:012d}"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no clean shutdown: nothing gives the leases back
        holder.wait()
    deadline = time.monotonic() + 10
    taken = []
    while len(taken) < 3 and time.monotonic() < deadline:
        taken += store.claim("survivor", 10, 30)
        time.sleep(0.1)
    assert sorted(job.id for job in taken) == held and {job.attempts for job in taken} == {2}
    for job in taken:  # decoded again from the start: the recording is still there
        assert store.read_recording(job.id, tmp_path / job.id)
        assert store.finish(job.id, "done", attempt=job.attempts)
    assert [r.attempts for r in store.recent(limit=3, any_owner=True, after=f"{3:012d}")] == [2, 2, 2]


def test_a_server_restarted_under_a_store_is_a_clear_error_meanwhile_and_works_again_after(
    store, postgres_server
):
    store.add(JobRecord("a" * 12, 1.0, "queued"))
    assert store.get("a" * 12).status == "queued"  # a pooled connection, idle when the server goes
    postgres_server.stop()
    try:
        for call in (
            lambda: store.get("a" * 12),
            lambda: store.claim("r1", 1, 30),
            lambda: store.add(JobRecord("b" * 12, 2.0, "queued")),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as error:
                call()
            assert time.monotonic() - started < 5  # wait_s, not a hang
            message = str(error.value)
            assert store.location in message and "cannot be reached" in message and PASSWORD not in message
    finally:
        postgres_server.start_again()
    assert store.get("a" * 12).status == "queued"  # the same store, no reopening
    assert [job.id for job in store.claim("r1", 5, 30)] == ["a" * 12]


def test_replicas_started_at_once_on_an_empty_database_create_the_schema_once(postgres_dsn, tmp_path):
    start, opened, failed = threading.Barrier(4), [], []

    def open_one(n):
        start.wait()
        try:
            opened.append(PostgresJobStore(postgres_dsn, tmp_path / f"data{n}"))
        except Exception as exc:
            failed.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert failed == [] and len(opened) == 4
        with psycopg.connect(postgres_dsn) as db:
            versions = db.execute(f"SELECT version FROM {VERSIONS}").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each applied once
        opened[0].add(JobRecord("a" * 12, 1.0, "queued"))
        assert [store.get("a" * 12).status for store in opened] == ["queued"] * 4
    finally:
        for store in opened:
            store.close()


def test_a_wrong_password_stops_the_start_with_a_message_that_does_not_show_it(
    postgres_server, postgres_dsn, tmp_path
):
    wrong = postgres_dsn.replace(f":{PASSWORD}@", ":not-the-password@")
    with pytest.raises(StoreUnavailable) as error:
        PostgresJobStore(wrong, tmp_path / "data")
    message = str(error.value)
    assert "password authentication failed" in message and "not-the-password" not in message
    assert redact(postgres_dsn) in message


def test_a_schema_from_before_speaker_names_is_migrated_and_its_jobs_kept(postgres_dsn, tmp_path):
    with psycopg.connect(postgres_dsn) as db:  # what a replica of the release before left: version 2
        db.execute(f"CREATE TABLE {VERSIONS} (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
        for version in (1, 2):
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute(f"INSERT INTO {VERSIONS} (version) VALUES (%s)", (version,))
        db.execute(f"INSERT INTO {JOBS} (id, created_at, status) VALUES ('a00000000000', 1, 'done')")
    store = PostgresJobStore(postgres_dsn, tmp_path / "data")
    try:
        assert store.get("a00000000000").speaker_names == {}
        assert store.name_speakers("a00000000000", {"A": "Ada"})
        assert store.get("a00000000000").speaker_names == {"A": "Ada"}
    finally:
        store.close()


def test_a_schema_newer_than_this_server_is_refused(store, postgres_dsn, tmp_path):
    with psycopg.connect(postgres_dsn) as db:
        db.execute(f"INSERT INTO {VERSIONS} (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer than this server"):
        PostgresJobStore(postgres_dsn, tmp_path / "other")
