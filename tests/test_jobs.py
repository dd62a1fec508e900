"""JobManager on a real Engine (micro checkpoint): stored before queued, recovered after a stop,
pending when the queue is full, cancellable, purged after retention; client names never paths."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import JFK, fast_settings, shared_audio
from engine import Engine, JobOptions, NotAudio, QueueFull
from jobs.manager import FEED_INTERVAL_S, ORPHAN_AGE_S, JobManager, stored_extension
from jobs.sqlite_store import SqliteJobStore
from jobs.store import JobRecord

FIVE_MIN = JFK.parent.parent / "long" / "lj050_0159_5min.mp3"
GATE = threading.Event()  # decoding waits on it: tests hold jobs "running" as long as they need
GATE.set()


DECODED = []  # the rows of every step of the running decode


def gated_step(decode) -> None:
    """The engine's `before_step` hook: each step waits for GATE, then is counted."""
    if not GATE.wait(30):
        raise TimeoutError("test gate never opened")
    DECODED.append(len(decode))


def make_engine(checkpoint, **overrides) -> Engine:
    values = dict(workers=1, queue_size=2, batch_size=1, language="en")
    values.update(overrides)
    return Engine(fast_settings(checkpoint, **values), before_step=gated_step)


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    engine = make_engine(micro_checkpoint)
    yield engine
    GATE.set()
    engine.close(drain=False, timeout=10)


@pytest.fixture
def jobs(engine, tmp_path):
    manager = JobManager(engine, SqliteJobStore(tmp_path / "data")).start()
    yield manager
    GATE.set()
    manager.close()


@pytest.fixture
def jfk():
    return shared_audio(JFK)


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_finished(jobs: JobManager, job_id: str, timeout=60.0):
    wait_until(lambda: jobs.store.get(job_id).finished, timeout, f"job {job_id} to finish")
    return jobs.get(job_id)


def test_job_is_stored_before_it_runs_and_result_after(jobs, jfk):
    GATE.clear()
    handle = jobs.submit(jfk, name="jfk.flac", language="en", word_timestamps=True)
    record = jobs.store.get(handle.id)  # committed before submit returned, while nothing has run
    assert record.status == "queued"  # the options as the engine prepared them: the model by its id, the task
    assert record.options == JobOptions(
        model=jobs.engine.model_names.default_id, language="en", task="transcribe", word_timestamps=True
    )
    assert (jobs.audio_dir / record.audio).is_file() and record.audio == f"{handle.id}.flac"
    assert jfk.is_file()  # copied, the caller's file is untouched
    GATE.set()
    result = handle.result(timeout=60)
    info = wait_finished(jobs, handle.id)
    assert info.status == "done" and info.progress == 1.0 and info.result() == result
    assert info.record.started_at and info.record.finished_at >= info.record.started_at
    # Audio is deleted once the job is finished; the stored result renders every format.
    assert info.record.audio is None
    wait_until(lambda: not any(jobs.audio_dir.iterdir()), what="the recording to be deleted")
    assert all(segment.words for segment in info.result().segments)


def test_client_names_never_become_paths(jobs, jfk):
    data = jfk.read_bytes()
    for name, extension in [
        ("../../etc/passwd.FLAC", ".flac"),
        ("C:\\Users\\x\\talk.mp3", ".mp3"),
        ("evil.sh", ""),
        ("..", ""),
        ("", ""),
    ]:
        handle = jobs.submit(data, name=name)
        record = jobs.store.get(handle.id)
        assert record.audio == f"{handle.id}{extension}"
        assert "/" not in record.name and "\\" not in record.name
        handle.result(timeout=60)
    assert stored_extension("x.webm") == ".webm" and stored_extension("x.webm.exe") == ""
    # Nothing was written anywhere but the database and the audio folder, emptied at the end.
    wait_until(lambda: not any(jobs.audio_dir.iterdir()), what="recordings to be deleted")
    written = {str(p.relative_to(jobs.store.data_dir)) for p in jobs.store.data_dir.rglob("*")}
    assert written <= {
        "jobs.sqlite3",
        "jobs.sqlite3-wal",
        "jobs.sqlite3-shm",
        "owner.lock",
        "audio",
        "uploads",
    }


def test_refused_jobs_leave_nothing_behind(jobs, jfk, engine):
    with pytest.raises(NotAudio, match="notes.wav"):  # the client's name, not the stored one
        jobs.submit(b"this is not audio" * 100, name="notes.wav")
    with pytest.raises(FileNotFoundError):
        jobs.submit(jfk.parent / "missing.flac")
    GATE.clear()
    held = [jobs.submit(jfk)]  # running (one worker)
    wait_until(lambda: held[0].status.value == "running", what="first job to start")
    held += [jobs.submit(jfk), jobs.submit(jfk)]  # the queue (2) is full now
    with pytest.raises(QueueFull):
        jobs.submit(jfk)
    assert len(jobs.store.recent(any_owner=True)) == 3
    assert len(list(jobs.audio_dir.iterdir())) == 3
    GATE.set()
    for handle in held:
        handle.result(timeout=60)


def test_cancel_queued_and_running_jobs(jobs, jfk):
    five_min = shared_audio(FIVE_MIN)
    GATE.clear()
    running = jobs.submit(five_min)  # many windows: cancellation lands between token steps
    wait_until(lambda: running.status.value == "running", what="job to start")
    queued = jobs.submit(jfk)
    assert jobs.get(queued.id).queue_position == 1
    assert jobs.cancel(queued.id).status == "cancelled"
    assert jobs.store.get(queued.id).audio is None
    steps_before = len(DECODED)
    assert jobs.cancel(running.id).status == "cancelling"  # held inside a step: it stops after that one
    GATE.set()
    info = wait_finished(jobs, running.id)
    assert info.status == "cancelled" and info.record.error_type == "JobCancelled"
    assert len(DECODED) <= steps_before + 1, "the cancelled job went on decoding"
    assert jobs.cancel(running.id).status == "cancelled"  # cancelling again changes nothing
    assert jobs.cancel("0" * 12) is None


def test_unfinished_jobs_run_again_after_a_stop(micro_checkpoint, tmp_path, jfk):
    data_dir = tmp_path / "data"
    first_engine = make_engine(micro_checkpoint)
    first = JobManager(first_engine, SqliteJobStore(data_dir)).start()
    GATE.clear()
    running = first.submit(jfk, name="a.flac")
    wait_until(lambda: running.status.value == "running", what="job to start")
    waiting = first.submit(jfk, name="b.flac")
    # Stop the way a shutdown does: the manager first, then the engine cancels what it holds.
    first.close()
    first_engine.close(drain=False, timeout=10)
    GATE.set()
    store = SqliteJobStore(data_dir)
    assert {r.id for r in store.unfinished()} == {running.id, waiting.id}  # not marked failed

    second_engine = make_engine(micro_checkpoint)
    second = JobManager(second_engine, store).start()
    try:
        for job_id in (running.id, waiting.id):
            info = wait_finished(second, job_id)
            assert info.status == "done" and info.result().segments is not None
            assert info.record.attempts == 1  # a clean stop does not count the start it cut short
        wait_until(lambda: not any(second.audio_dir.iterdir()), what="recordings to be deleted")
    finally:
        second.close()
        second_engine.close()


def left_by_a_killed_server(store: SqliteJobStore, jfk, rows) -> Path:
    """What kill -9 leaves in `store`: unfinished rows and their recordings (copies of `jfk`).
    `rows`: (job id, seconds after now it was created, status, client's name, attempts).
    Returns the recordings' folder."""
    audio_dir = store.data_dir / "audio"
    audio_dir.mkdir()
    for job_id, later_s, status, name, attempts in rows:
        shutil.copyfile(jfk, audio_dir / f"{job_id}.flac")
        store.add(
            JobRecord(
                job_id,
                time.time() + later_s,
                status,
                name=name,
                audio=f"{job_id}.flac",
                options=JobOptions(language="en"),
                attempts=attempts,
            )
        )
    return audio_dir


def test_recovery_waits_for_room_instead_of_dropping(micro_checkpoint, tmp_path, jfk):
    store = SqliteJobStore(tmp_path / "data")
    ids = [f"{i:012x}" for i in range(6)]
    left_by_a_killed_server(
        store, jfk, [(job_id, i, "queued", f"{i}.flac", 1) for i, job_id in enumerate(ids)]
    )
    store.add(JobRecord("f" * 12, time.time() + 9, "queued", name="gone.flac", audio="ffffffffffff.flac"))
    engine = make_engine(micro_checkpoint, queue_size=1)
    GATE.clear()
    jobs = JobManager(engine, store).start()
    try:
        assert jobs.pending_count >= 4  # one running, one queued, the rest wait here
        last = jobs.get(ids[-1])
        assert last.status == "queued" and last.queue_position > 1
        GATE.set()
        for job_id in ids:
            assert wait_finished(jobs, job_id).status == "done"
        gone = wait_finished(jobs, "f" * 12)  # its recording vanished: failed, with the reason
        assert gone.status == "failed" and "gone.flac" in gone.record.error
        assert jobs.pending_count == 0
    finally:
        GATE.set()
        jobs.close()
        engine.close()


def test_purge_removes_expired_jobs_and_stray_files(jobs, jfk):
    handle = jobs.submit(jfk)
    handle.result(timeout=60)
    wait_finished(jobs, handle.id)
    GATE.clear()
    kept = jobs.submit(jfk)  # unfinished: never purged, its recording stays
    stray = jobs.audio_dir / "0123456789ab.wav"
    stray.write_bytes(b"left by a crash")
    old = time.time() - 2 * ORPHAN_AGE_S
    os.utime(stray, (old, old))
    os.utime(jobs.audio_dir / jobs.store.get(kept.id).audio, (old, old))

    assert jobs.purge_expired() == 0  # finished just now: within retention
    assert not stray.exists() and (jobs.audio_dir / jobs.store.get(kept.id).audio).exists()
    assert jobs.purge_expired(now=time.time() + jobs.retention_s + 1) == 1
    assert jobs.get(handle.id) is None and jobs.get(kept.id) is not None
    GATE.set()
    kept.result(timeout=60)


def test_retry_after_follows_recent_job_durations(jobs, jfk):
    assert 1 <= jobs.retry_after_s() <= 60
    jobs.submit(jfk).result(timeout=60)
    wait_until(lambda: jobs._durations, what="duration to be recorded")
    assert 1 <= jobs.retry_after_s() <= 60


# --- the row's life cycle: guarded state changes, the cancel race, capped re-runs -----------------


def test_the_row_says_running_once_a_worker_starts_it_and_counts_starts(jobs, jfk):
    GATE.clear()
    running = jobs.submit(jfk)
    wait_until(lambda: running.status.value == "running", what="job to start")
    waiting = jobs.submit(jfk)
    row, queued = jobs.store.get(running.id), jobs.store.get(waiting.id)
    assert row.status == "running" and row.attempts == 1 and row.started_at == running.started_at
    assert queued.status == "queued" and queued.attempts == 0  # handed over, not started: no attempt
    GATE.set()
    for handle in (running, waiting):
        handle.result(timeout=60)
        assert wait_finished(jobs, handle.id).record.attempts == 1


class ReadThenWait(SqliteJobStore):
    """A SqliteJobStore whose next read in the thread that arms it returns only once the job has
    finished and its row was written (or a second has passed): the interleaving a slow disk
    gives a cancel that lands as the job ends. The reading and writing are SqliteJobStore's own."""

    armed_in = None  # the thread whose next read pauses
    handle = None  # the job that is let go during that pause

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.written = threading.Event()

    def get(self, job_id):
        record = super().get(job_id)
        if self.armed_in is threading.current_thread():
            self.armed_in = None
            GATE.set()
            wait_until(self.handle.done, what="the job to finish")
            self.written.wait(1.0)
        return record

    def finish(self, *args, **kwargs):
        applied = super().finish(*args, **kwargs)
        self.written.set()
        return applied


def test_a_cancel_that_lands_as_the_job_finishes_keeps_its_result(engine, tmp_path, jfk):
    store = ReadThenWait(tmp_path / "data")
    jobs = JobManager(engine, store).start()
    try:
        GATE.clear()
        handle = jobs.submit(jfk, name="jfk.flac")
        wait_until(lambda: handle.status.value == "running", what="job to start")
        store.handle, store.armed_in = handle, threading.current_thread()
        jobs.cancel(handle.id)  # reads the row while the job finishes and its row is written
        result = handle.result(timeout=60)  # what a synchronous client got
        info = wait_finished(jobs, handle.id)
        assert info.status == "done" and info.result() == result and info.record.error is None
        assert jobs.cancel(handle.id).status == "done"  # and a later cancel changes nothing
    finally:
        GATE.set()
        jobs.close()


def test_a_job_the_server_stopped_in_max_attempts_times_is_failed(micro_checkpoint, tmp_path, jfk):
    store = SqliteJobStore(tmp_path / "data")
    audio_dir = left_by_a_killed_server(
        store, jfk, [("a" * 12, 0, "running", "a.flac", 3), ("b" * 12, 0, "running", "b.flac", 2)]
    )
    engine = make_engine(micro_checkpoint)
    jobs = JobManager(engine, store).start()  # max_attempts: 3, the default
    try:
        capped, again = wait_finished(jobs, "a" * 12), wait_finished(jobs, "b" * 12)
        assert capped.status == "failed" and capped.record.error_type == "JobInterrupted"
        assert "interrupted 3 times" in capped.record.error and "not started again" in capped.record.error
        assert again.status == "done" and again.record.attempts == 3  # its third start, which finished
        wait_until(lambda: not any(audio_dir.iterdir()), what="recordings to be deleted")
    finally:
        jobs.close()
        engine.close()


def test_a_job_error_names_the_clients_file_or_the_job_never_a_server_path(jobs, jfk):
    GATE.clear()
    first = jobs.submit(jfk)
    wait_until(lambda: first.status.value == "running", what="job to start")
    named, nameless = jobs.submit(jfk, name="talk.flac"), jobs.submit(jfk.read_bytes())
    for handle in (named, nameless):  # the recording vanishes while the job waits
        (jobs.audio_dir / jobs.store.get(handle.id).audio).unlink()
    GATE.set()
    for handle, shown in ((named, "talk.flac"), (nameless, f"job {nameless.id}")):
        error = wait_finished(jobs, handle.id).record.error
        assert shown in error, error
        assert str(jobs.audio_dir) not in error and str(jobs.audio_dir.resolve()) not in error
        assert "/audio/" not in error and f"{handle.id}.flac" not in error
        with pytest.raises(FileNotFoundError) as raised:  # what the synchronous client is told
            handle.result()
        assert "/audio/" not in str(raised.value)


# --- a full disk: the result is kept and written once there is room ---------------------------


def test_a_result_that_cannot_be_written_is_written_when_space_returns(engine, jfk):
    from small_disk import fill, small_disk

    with small_disk(20) as root:
        jobs = JobManager(engine, SqliteJobStore(root / "data")).start()
        try:
            GATE.clear()
            handle = jobs.submit(jfk, name="jfk.flac")
            wait_until(lambda: handle.status.value == "running", what="job to start")
            stored = jobs.audio_dir / jobs.store.get(handle.id).audio
            filler = fill(root)
            GATE.set()
            result = handle.result(timeout=60)  # transcribed while the disk is full
            time.sleep(2 * FEED_INTERVAL_S)  # a few writes failed meanwhile
            waiting = jobs.get(handle.id)
            assert waiting.status == "running" and waiting.queue_position == 0 and waiting.progress == 1.0
            assert not waiting.record.finished and stored.exists()
            filler.unlink()  # space is back: the kept result is written, nothing runs again
            info = wait_finished(jobs, handle.id, timeout=30)
            assert info.status == "done" and info.result() == result and info.record.attempts == 1
            wait_until(lambda: not stored.exists(), what="the recording to be deleted")
        finally:
            GATE.set()
            jobs.close()


def test_recordings_and_their_folders_are_readable_by_this_user_only(engine, tmp_path, jfk):
    import stat

    data_dir = tmp_path / "data"
    for folder in (data_dir, data_dir / "audio", data_dir / "uploads"):  # as an older version left them
        folder.mkdir(mode=0o755)
        os.chmod(folder, 0o755)
    jobs = JobManager(engine, SqliteJobStore(data_dir)).start()
    try:
        GATE.clear()
        upload = jobs.new_upload_path("b.flac")
        shutil.copyfile(jfk, upload)
        os.chmod(upload, 0o644)  # received with the process's umask
        handles = [
            jobs.submit(jfk, name="a.flac"),
            jobs.submit(upload, name="b.flac", move=True),
            jobs.submit(jfk.read_bytes(), name="c.flac"),
        ]
        recordings = [jobs.audio_dir / jobs.store.get(h.id).audio for h in handles]
        mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
        assert [mode(p) for p in (data_dir, jobs.audio_dir, jobs.upload_dir)] == [0o700] * 3
        assert [mode(p) for p in recordings] == [0o600] * 3
        database = ("jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", "owner.lock")
        assert [mode(data_dir / name) for name in database] == [0o600] * 4
    finally:
        GATE.set()
        jobs.close()
