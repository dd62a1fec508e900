"""Replicas sharing one queue: JobManagers, each with its own Engine (micro checkpoints), on one
real PostgreSQL database (tests/postgres_server.py; skipped where none can be started).

Ten jobs through two replicas finish exactly once; a replica killed with -9 while it holds
running jobs has them finished by the other once the lease runs out; a job is cancelled, listed,
followed and streamed through the replica that does not run it; the database restarted under a
running replica is a clear StoreUnavailable meanwhile, and the replica carries on after; two
replicas started at once on an empty database create the schema once. The ten-job case also runs
on SQLite, where the one process is its only replica.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from conftest import FIVE_MIN, JFK, ROOT, fast_settings, shared_audio
from engine import Engine, JobCancelled
from jobs.errors import StoreUnavailable
from jobs.manager import JobManager
from jobs.postgres_schema import SCHEMA_VERSION, VERSIONS
from jobs.postgres_store import PostgresJobStore
from jobs.sqlite_store import SqliteJobStore
from jobs.store import open_job_store

LEASE_S = 2.0  # short, so a dead replica's jobs move on within seconds


class Gate:
    """The engine's `before_step` hook: each decode step waits while the gate is closed and
    sleeps `delay_s`, so tests hold jobs running, or slow them so their progress can be
    watched. Open at first."""

    def __init__(self):
        self.open = threading.Event()
        self.open.set()
        self.delay_s = 0.0

    def __call__(self, decode) -> None:
        if not self.open.wait(300):
            raise TimeoutError("test gate never opened")
        time.sleep(self.delay_s)


GATES = {"a": Gate(), "b": Gate()}
WORKERS = {"a": 2, "b": 1}  # replica b has one worker: one held job leaves it no room


@pytest.fixture(scope="module")
def engines(micro_checkpoint):
    engines = {
        name: Engine(
            # batch_size 1: one section, its windows one after another, its segments out one by one
            fast_settings(
                micro_checkpoint, workers=WORKERS[name], batch_size=1, language="en", job_lease_s=LEASE_S
            ),
            before_step=gate,
        )
        for name, gate in GATES.items()
    }
    yield engines
    for gate in GATES.values():
        gate.open.set()
    for engine in engines.values():
        engine.close(drain=False, timeout=10)


@pytest.fixture
def replica(engines, tmp_path):
    """replica("a", dsn) -> a started JobManager on that engine; all closed after the test, and
    the engines left idle for the next one."""
    opened: list[JobManager] = []

    def open_replica(name: str, dsn: str) -> JobManager:
        store = open_job_store(dsn, tmp_path / f"{name}{len(opened)}") if dsn else SqliteJobStore(tmp_path)
        manager = JobManager(engines[name], store).start()
        opened.append(manager)
        return manager

    yield open_replica
    for gate in GATES.values():
        gate.open.set()
        gate.delay_s = 0.0
    for manager in reversed(opened):
        manager.close()
    for engine in engines.values():
        wait_until(lambda e=engine: e.status().busy_workers == 0, what="the engines to be idle")


@pytest.fixture
def jfk():
    return shared_audio(JFK)


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_here(manager: JobManager, job_id: str) -> bool:
    run = manager.feed.leases.get(job_id)
    return run is not None and run.handle.status.value == "running"


def first_line(process: subprocess.Popen, timeout_s: float) -> str:
    """The process's first line of output ("" if it ends or says nothing within `timeout_s`)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return lines[0].strip() if lines else ""


def finished_jobs(engine: Engine) -> list[str]:
    """Record the id of each job the engine finishes, from now on."""
    ids: list[str] = []
    engine.listeners.callbacks.append(lambda event, handle: event == "job_finished" and ids.append(handle.id))
    return ids


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_two_replicas_on_one_queue_finish_ten_jobs_exactly_once(kind, request, replica, engines, jfk):
    dsn = request.getfixturevalue("postgres_dsn") if kind == "postgresql" else ""
    ran = {name: finished_jobs(engine) for name, engine in engines.items()}
    try:
        for gate in GATES.values():
            gate.open.clear()
        a = replica("a", dsn)
        b = replica("b", dsn) if dsn else a  # SQLite: one process, its own only replica
        tickets = [(a, b)[i % 2].submit(jfk, name=f"{i}.flac", owner="me") for i in range(10)]
        # Every replica holds what its workers take before any job may end.
        held = (a, b) if dsn else (a,)
        wait_until(lambda: all(m.feed.room() == 0 for m in held), what="both replicas to be full")
        for gate in GATES.values():
            gate.open.set()
        results = [ticket.result(timeout=120) for ticket in tickets]
        wait_until(lambda: all(r.finished for r in a.store.recent("me", 20)), what="every row written")
        rows = {r.id: r for r in b.store.recent("me", 20)}
        assert set(rows) == {t.id for t in tickets}  # nothing lost
        assert all(r.status == "done" and r.attempts == 1 for r in rows.values())  # run once each
        assert [rows[t.id].transcription() for t in tickets] == results  # what each client was told
        engine_runs = [job for jobs in ran.values() for job in jobs if job in rows]
        assert sorted(engine_runs) == sorted(rows)  # exactly once: no job decoded twice anywhere
        if dsn:
            assert all(ran[name] for name in ("a", "b")), "one replica took every job"
    finally:
        for engine in engines.values():
            engine.listeners.callbacks.clear()


def test_the_jobs_of_a_replica_killed_with_9_are_finished_by_another_after_the_lease(
    postgres_dsn, replica, micro_checkpoint, tmp_path, jfk
):
    holder = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "replica_process.py"),
            str(micro_checkpoint),
            postgres_dsn,
            str(tmp_path / "killed"),
            str(jfk),
            "2",
            str(LEASE_S),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = first_line(holder, timeout_s=120)
        assert line, f"the holder process ended ({holder.poll()}) before its jobs ran"
        ids = line.split(",")
        store = open_job_store(postgres_dsn, tmp_path / "reader")
        leases = [store.get(job_id).lease_expires_at for job_id in ids]
        killed_at = time.time()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    other = replica("a", postgres_dsn)
    wait_until(lambda: all(store.get(i).finished for i in ids), what="the other replica to finish them")
    for job_id, lease in zip(ids, leases, strict=True):
        row = store.get(job_id)
        assert row.status == "done" and row.attempts == 2 and row.transcription().text
        assert row.started_at >= lease - 0.1  # claimed again only once the dead holder's lease ran out
    print(f"killed replica's jobs done {time.time() - killed_at:.1f} s after the kill (lease {LEASE_S} s)")
    assert other.get(ids[0]).status == "done"
    store.close()


class StallingStore(PostgresJobStore):
    """The real store, whose renewals hang while `stalled` is set: a replica cut off from the
    database (or paused) for longer than its lease, which then wakes up."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stalled = threading.Event()
        self.released = threading.Event()

    def renew(self, *args, **kwargs):
        if self.stalled.is_set():
            self.released.wait(60)
        return super().renew(*args, **kwargs)


def test_a_replica_that_wakes_up_after_its_lease_ran_out_writes_nothing(
    postgres_dsn, replica, engines, jfk, tmp_path
):
    GATES["a"].open.clear()
    store = StallingStore(postgres_dsn, tmp_path / "late")
    late = JobManager(engines["a"], store).start()
    try:
        ticket = late.submit(jfk, name="jfk.flac", owner="me")
        wait_until(lambda: running_here(late, ticket.id), what="the job to run on the late replica")
        store.stalled.set()
        lease = store.get(ticket.id).lease_expires_at
        other = replica("b", postgres_dsn)
        wait_until(lambda: store.get(ticket.id).attempts == 2, timeout=30, what="the other to claim it")
        assert store.get(ticket.id).started_at >= lease - 0.1
        GATES["a"].open.set()  # the late replica's run ends first (b decodes under the same CPU lock)
        late_result = ticket.result(timeout=60)  # its client is answered all the same
        wait_until(lambda: other.get(ticket.id).finished, what="the other replica's result")
        row = other.get(ticket.id).record
        assert row.status == "done" and row.attempts == 2 and row.transcription().text == late_result.text
        assert not late.feed.durations and other.feed.durations  # only b's write applied
        store.released.set()
        wait_until(lambda: late.feed.leases.get(ticket.id) is None, what="the late replica to let go")
    finally:
        store.released.set()
        GATES["a"].open.set()
        late.close()


def test_a_job_is_cancelled_through_the_replica_that_does_not_run_it(postgres_dsn, replica):
    five_min = shared_audio(FIVE_MIN)
    GATES["a"].open.clear()
    holder = replica("a", postgres_dsn)
    ticket = holder.submit(five_min, name="talk.mp3", owner="me")
    wait_until(lambda: running_here(holder, ticket.id), what="the job to run on a")
    other = replica("b", postgres_dsn)
    assert other.get(ticket.id).status == "running"
    assert other.cancel(ticket.id).status == "cancelling"  # asked through b, not run there
    run = holder.feed.leases.get(ticket.id)
    wait_until(run.handle.cancel_requested, timeout=10, what="the holder to see the request")
    GATES["a"].open.set()
    with pytest.raises(JobCancelled):
        ticket.result(timeout=60)
    wait_until(lambda: other.get(ticket.id).status == "cancelled", what="the row to say cancelled")
    assert other.get(ticket.id).record.error_type == "JobCancelled"
    # A queued job is cancelled at once, through either replica.
    GATES["a"].open.clear()
    GATES["b"].open.clear()
    busy = [holder.submit(five_min, owner="me") for _ in range(2)] + [other.submit(five_min, owner="me")]
    wait_until(lambda: holder.feed.room() == 0 and other.feed.room() == 0, what="both replicas to be full")
    queued = holder.submit(five_min, owner="me")
    assert other.get(queued.id).status == "queued" and other.get(queued.id).queue_position == 1
    assert other.cancel(queued.id).status == "cancelled"
    with pytest.raises(JobCancelled):
        queued.result(timeout=10)  # the submitter's ticket learns it too
    for job in busy:
        holder.cancel(job.id)


def test_a_job_is_listed_followed_and_streamed_through_the_replica_that_did_not_run_it(
    postgres_dsn, replica, jfk
):
    five_min = shared_audio(FIVE_MIN)
    front = replica("b", postgres_dsn)
    # b's workers all busy. (Not with a held job: in one process both engines decode under the
    # one CPU model lock, so a job held in b's decoder would hold a's too.)
    front.feed.room = lambda: 0
    GATES["a"].delay_s = 0.05  # each token step slow (24 a window): progress and segments can be watched
    worker = replica("a", postgres_dsn)
    ticket = front.submit(five_min, name="talk.mp3", owner="me")  # b has no room: a takes it
    ticket.stream_text()
    wait_until(lambda: running_here(worker, ticket.id), what="the job to run on a")
    assert not running_here(front, ticket.id)
    seen: list = []
    progress: list[float] = []

    def watch() -> bool:
        info = front.get(ticket.id)
        if info.status == "running":
            progress.append(info.progress)
        if not ticket.done() and ticket.segments_so_far():
            seen[:] = ticket.segments_so_far()
        return ticket.done()

    wait_until(watch, timeout=120, what="the job to finish")
    result = ticket.result()
    assert seen, "no segment reached the front replica before the job ended"
    assert [s.text for s in result.segments[: len(seen)]] == [s.text for s in seen]
    assert any(0 < p < 1 for p in progress) and ticket.status.value == "done"
    # Either replica lists the same jobs, with the same states.
    other = worker.submit(jfk, name="jfk.flac", owner="me")
    other.result(timeout=60)
    wait_until(lambda: front.get(other.id).finished, what="its row")
    listed = [[(i.id, i.status, i.record.name) for i in m.recent("me")] for m in (front, worker)]
    assert listed[0] == listed[1] == [(other.id, "done", "jfk.flac"), (ticket.id, "done", "talk.mp3")]


def test_the_database_restarted_under_a_running_replica(postgres_server, postgres_dsn, replica, jfk):
    GATES["a"].open.clear()
    jobs = replica("a", postgres_dsn)
    ticket = jobs.submit(jfk, name="jfk.flac", owner="me")
    wait_until(lambda: running_here(jobs, ticket.id), what="the job to run")
    postgres_server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            jobs.get(ticket.id)
        with pytest.raises(StoreUnavailable):
            jobs.submit(jfk)
        with pytest.raises(StoreUnavailable):
            jobs.recent("me")
        GATES["a"].open.set()
        result = ticket.result(timeout=60)  # the client has its transcript meanwhile
        time.sleep(LEASE_S)  # the loop meets the outage: renewals and the result's write fail
    finally:
        postgres_server.start_again()
    wait_until(lambda: jobs.get(ticket.id).finished, timeout=30, what="the kept result to be written")
    row = jobs.get(ticket.id).record
    assert row.status == "done" and row.attempts == 1 and row.transcription() == result
    after = jobs.submit(jfk, owner="me")  # and it takes new work again
    assert after.result(timeout=60).text


def test_two_replicas_started_at_once_on_an_empty_database_create_the_schema_once(
    postgres_dsn, engines, tmp_path, jfk
):
    barrier = threading.Barrier(2)
    started: dict[str, JobManager] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            barrier.wait()
            started[name] = JobManager(engines[name], open_job_store(postgres_dsn, tmp_path / name)).start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors and set(started) == {"a", "b"}
        with psycopg.connect(postgres_dsn) as db:
            versions = db.execute(f"SELECT version FROM {VERSIONS} ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each applied once
        ticket = started["b"].submit(jfk, owner="me")
        assert ticket.result(timeout=60).text
        wait_until(lambda: started["a"].get(ticket.id).status == "done", what="a to read b's job")
    finally:
        for manager in started.values():
            manager.close()


def test_a_recording_travels_in_the_database_unless_a_shared_folder_is_set(
    postgres_dsn, engines, tmp_path, jfk
):
    jobs = JobManager(engines["a"], open_job_store(postgres_dsn, tmp_path / "a")).start()
    try:
        GATES["a"].open.clear()
        first = jobs.submit(jfk)
        wait_until(lambda: running_here(jobs, first.id), what="the first job to run")
        second, third = jobs.submit(jfk), jobs.submit(jfk)
        third_row = jobs.store.get(third.id)
        assert jobs.recordings.in_store and not (jobs.audio_dir / third_row.audio).exists()
        with psycopg.connect(postgres_dsn) as db:
            stored = db.execute(
                "SELECT SUM(LENGTH(data)) FROM whisper_recordings WHERE job_id = %s", (third.id,)
            )
            assert stored.fetchone()[0] == JFK.stat().st_size
        GATES["a"].open.set()
        for ticket in (first, second, third):
            ticket.result(timeout=60)
        wait_until(lambda: not any(jobs.audio_dir.iterdir()), what="the local copies to go")
    finally:
        GATES["a"].open.set()
        jobs.close()
    shared = tmp_path / "shared-audio"
    engine = Engine(fast_settings(engines["a"].settings.model, language="en", shared_audio_dir=str(shared)))
    jobs = JobManager(engine, open_job_store(postgres_dsn, tmp_path / "c")).start()
    try:
        assert jobs.audio_dir == shared and not jobs.recordings.in_store
        ticket = jobs.submit(jfk)
        assert ticket.result(timeout=60).text
        wait_until(lambda: not any(Path(shared).iterdir()), what="the shared file to go")
    finally:
        jobs.close()
        engine.close()
