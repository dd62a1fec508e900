"""The job store, one suite for both: SQLite (the embedded default) and PostgreSQL (a real server,
tests/postgres_server.py; skipped where none can be started). Rows survive a reopen (what a restart
sees), results round-trip, rows move forward only, and the shared queue: claims, leases, fenced
finishes, cancel requests and progress seen by another replica.

SQLite's own behaviour (WAL, corruption, permissions, its migrations) is in test_sqlite_store.py;
PostgreSQL's own (a server restarted under a store, replicas creating the schema at once, a
wrong password) in test_postgres_store.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from engine import JobOptions, Segment, TranscriptionResult, Word
from jobs.store import JobRecord, JobStore, Progress, open_job_store, result_from_dict, result_to_dict


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


class Stores:
    """The store under test, as the processes of a deployment open it. SQLite belongs to one
    process (it locks data_dir), so its "other replica" is the same store used from another
    thread under another replica id; PostgreSQL's is another store, its own pool of connections."""

    def __init__(self, kind: str, request, tmp_path):
        self.kind, self.tmp_path = kind, tmp_path
        self.url = "" if kind == "sqlite" else request.getfixturevalue("postgres_dsn")
        self._opened = []
        self.store = self.open()

    def open(self) -> JobStore:
        data_dir = self.tmp_path / f"data{len(self._opened)}" if self.url else self.tmp_path
        store = open_job_store(self.url, data_dir)
        self._opened.append(store)
        return store

    def replica(self) -> JobStore:
        """What another server process on the same queue uses."""
        return self.store if self.kind == "sqlite" else self.open()

    def reopen(self) -> JobStore:
        """Close everything and open the store again: what the next start sees."""
        self.close()
        self.store = self.open()
        return self.store

    def close(self) -> None:
        while self._opened:
            self._opened.pop().close()


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request, tmp_path):
    stores = Stores(request.param, request, tmp_path)
    yield stores
    stores.close()


@pytest.fixture
def store(stores) -> JobStore:
    return stores.store


def test_result_round_trips_through_json():
    result = _result()
    assert result_from_dict(result_to_dict(result)) == result


def test_rows_survive_reopening(stores):
    stores.store.add(
        JobRecord(
            "a" * 12, time.time(), "queued", name="talk.mp3", options=JobOptions(language="en"), audio="x.mp3"
        )
    )
    reopened = stores.reopen()  # what a crash leaves: the committed row, nothing in memory
    record = reopened.get("a" * 12)
    assert (
        record.status == "queued" and record.options == JobOptions(language="en") and record.audio == "x.mp3"
    )
    assert [r.id for r in reopened.unfinished()] == ["a" * 12]


def _diarized() -> TranscriptionResult:
    words = [Word(" hello", 0.0, 0.4, 0.9, "A"), Word(" there", 1.0, 1.4, 0.8, "B")]
    return TranscriptionResult(
        segments=[
            Segment(0, 0.0, 0.4, " hello", words=words[:1], speaker="A"),
            Segment(1, 1.0, 1.4, " there", words=words[1:], speaker="B"),
        ],
        language="en",
        duration=2.0,
    )


def test_speaker_names_survive_reopening_and_only_a_done_job_takes_them(stores):
    store = stores.store
    store.add(JobRecord("a" * 12, 1.0, "queued", options=JobOptions(diarize=True, num_speakers=2)))
    assert not store.name_speakers("a" * 12, {"A": "Ada"})  # no result yet: nothing to name
    assert store.get("a" * 12).speaker_names == {}
    store.mark_running("a" * 12)
    store.finish("a" * 12, "done", result=_diarized())
    assert store.name_speakers("a" * 12, {"A": "Ada", "B": "Bob"})
    assert store.name_speakers("a" * 12, {"A": "Ada Lovelace"})  # the whole map is replaced
    assert not store.name_speakers("f" * 12, {"A": "Ada"})  # no such job

    record = stores.reopen().get("a" * 12)  # what Recent jobs and the jobs API read after a restart
    assert record.speaker_names == {"A": "Ada Lovelace"}
    assert record.options == JobOptions(diarize=True, num_speakers=2)
    assert record.transcription() == _diarized()  # the words and labels as transcribed
    named = record.named_transcription()
    assert [s.speaker for s in named.segments] == ["Ada Lovelace", "B"]
    assert [w.speaker for s in named.segments for w in s.words] == ["Ada Lovelace", "B"]
    assert [(w.word, w.start, w.end) for s in named.segments for w in s.words] == [
        (" hello", 0.0, 0.4),
        (" there", 1.0, 1.4),
    ]


def test_finish_stores_result_and_error(store):
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


def test_an_existing_id_is_refused_and_its_row_kept(store):
    store.add(JobRecord("a" * 12, 1.0, "queued", name="first"))
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        store.add(JobRecord("a" * 12, 2.0, "queued", name="second"))
    assert store.get("a" * 12).name == "first"


def test_recent_and_finished_before(store):
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


def test_pages_follow_insertion_order_even_for_jobs_of_the_same_instant(store):
    for i in range(5):
        store.add(JobRecord(f"{i:012d}", 7.0, "queued", owner="me"))
    first = store.recent("me", limit=2)
    rest = store.recent("me", limit=10, after=first[-1].id)
    assert [r.id for r in first + rest] == [f"{i:012d}" for i in reversed(range(5))]


def test_update_rejects_unknown_columns(store):
    store.add(JobRecord("d" * 12, 1.0, "queued", audio="d.wav"))
    store.update("d" * 12, audio=None, attempts=3)
    assert store.get("d" * 12).audio is None and store.get("d" * 12).attempts == 3
    with pytest.raises(ValueError, match="unknown"):
        store.update("d" * 12, **{"audio = NULL; DROP TABLE jobs; --": 1})


def test_threads_share_one_store_and_another_replica_sees_every_row(stores):
    def add(n):
        for i in range(25):
            stores.store.add(JobRecord(f"{n:02d}{i:010d}", time.time(), "queued"))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stores.store.unfinished()) == 100
    assert len(stores.replica().recent(limit=200, any_owner=True)) == 100


def test_a_row_moves_forward_only_and_a_finished_row_is_never_written_again(store):
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
    assert store.request_cancel(job).status == "done" and store.claim("late", 5, 30) == []
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


def test_requeue_after_a_clean_stop_takes_the_start_back(store):
    store.add(JobRecord("f" * 12, 1.0, "queued"))
    store.mark_running("f" * 12)
    assert store.requeue("f" * 12, count_attempt=False)
    assert (store.get("f" * 12).status, store.get("f" * 12).attempts) == ("queued", 0)
    store.mark_running("f" * 12)
    assert store.requeue("f" * 12)  # what recovery does after a kill: that start counts
    assert (store.get("f" * 12).status, store.get("f" * 12).attempts) == ("queued", 1)


def test_a_recording_travels_in_the_database_in_chunks_and_goes_with_its_job(store, tmp_path, monkeypatch):
    monkeypatch.setattr("jobs.store.RECORDING_CHUNK_BYTES", 1000)  # 2500 bytes: three chunks
    data = bytes(range(256)) * 9 + b"tail"
    source = tmp_path / "upload.flac"
    source.write_bytes(data)
    store.add(JobRecord("a" * 12, 1.0, "queued", audio="a.flac"), recording=source)
    store.add(JobRecord("b" * 12, 2.0, "queued"), recording=b"")  # stored, if empty
    store.add(JobRecord("c" * 12, 3.0, "queued", audio="c.wav"))  # kept in a file instead
    assert store.read_recording("a" * 12, tmp_path / "a.flac") and (tmp_path / "a.flac").read_bytes() == data
    assert (tmp_path / "a.flac").stat().st_mode & 0o077 == 0
    assert store.read_recording("b" * 12, tmp_path / "b") and (tmp_path / "b").read_bytes() == b""
    assert not store.read_recording("c" * 12, tmp_path / "c") and not (tmp_path / "c").exists()
    (job,) = store.claim("r1", 1, 30)
    assert store.finish(job.id, "done", attempt=job.attempts, result=_result())
    assert not store.read_recording("a" * 12, tmp_path / "again")  # a finished job keeps none
    store.delete("b" * 12)
    assert not store.read_recording("b" * 12, tmp_path / "again")


# -- the shared queue ---------------------------------------------------------------------------
def test_claim_takes_the_oldest_queued_jobs_up_to_its_room(store):
    for i in range(5):
        store.add(JobRecord(f"{i:012d}", float(10 - i), "queued"))  # the last added is the oldest
    store.mark_running(f"{4:012d}")  # started without a lease: no claimer takes it
    assert store.claim("r1", 0, 30) == []
    claimed = store.claim("r1", 2, 30)
    assert [r.id for r in claimed] == [f"{3:012d}", f"{2:012d}"]
    assert all(r.status == "running" and r.attempts == 1 and r.lease_owner == "r1" for r in claimed)
    assert all(r.lease_expires_at > time.time() + 20 and r.started_at for r in claimed)
    assert store.get(claimed[0].id) == claimed[0]  # what the claimer got is what the row says
    assert [store.queue_position(f"{i:012d}") for i in range(5)] == [2, 1, 0, 0, 0]
    assert store.queue_position("nonexistent0") == 0
    assert [r.id for r in store.claim("r2", 10, 30)] == [f"{1:012d}", f"{0:012d}"]
    assert store.claim("r3", 10, 30) == []


def test_two_replicas_on_one_queue_claim_ten_jobs_exactly_once(stores):
    for i in range(10):
        stores.store.add(JobRecord(f"{i:012d}", float(i), "queued"))
    replicas = {"r1": stores.store, "r2": stores.replica()}
    start, claimed = threading.Barrier(2), {name: [] for name in replicas}

    def work(name):
        store = replicas[name]
        start.wait()
        while True:
            jobs = store.claim(name, 2, 30)
            if not jobs:
                return
            claimed[name] += [job.id for job in jobs]
            for job in jobs:
                assert store.finish(job.id, "done", attempt=job.attempts, result=_result())

    threads = [threading.Thread(target=work, args=(name,)) for name in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = claimed["r1"] + claimed["r2"]
    assert sorted(every) == [f"{i:012d}" for i in range(10)]  # each once, none lost
    rows = stores.store.recent(limit=20, any_owner=True)
    assert {(r.status, r.attempts, r.lease_owner) for r in rows} == {("done", 1, None)}


def test_an_expired_lease_is_claimed_again_and_the_late_holder_writes_nothing(stores):
    first, second = stores.store, stores.replica()
    first.add(JobRecord("a" * 12, 1.0, "queued", audio="a.wav"))
    (job,) = first.claim("r1", 5, 30)
    assert second.claim("r2", 5, 30) == []  # held: nobody else takes it
    assert first.renew("r1", {job.id: job.attempts}, 30) == {job.id: False}
    assert second.claim("r2", 5, 30) == []
    assert first.renew("r1", {job.id: job.attempts}, 0.2) == {job.id: False}  # then r1 stops renewing
    time.sleep(0.4)
    (again,) = second.claim("r2", 5, 30)  # r1 died (kill -9, power, network): its lease ran out
    assert (again.id, again.attempts, again.lease_owner, again.progress) == (job.id, 2, "r2", 0.0)
    # r1 wakes up: its lease is gone, and so is every write of its attempt.
    assert first.renew("r1", {job.id: job.attempts}, 30) == {}
    assert first.record_progress({job.id: Progress(job.attempts, 0.9, 9.0, 10.0)}) == set()
    assert not first.finish(job.id, "done", attempt=job.attempts, result=_result())
    assert not first.requeue(job.id, attempt=job.attempts, count_attempt=False)
    assert second.renew("r2", {job.id: again.attempts}, 30) == {job.id: False}
    assert second.finish(job.id, "done", attempt=again.attempts, result=_result())
    row = first.get(job.id)
    assert (row.status, row.attempts, row.lease_owner, row.transcription()) == ("done", 2, None, _result())


def test_a_clean_stop_gives_the_lease_back_at_once(store):
    store.add(JobRecord("a" * 12, 1.0, "queued"))
    (job,) = store.claim("r1", 1, 30)
    assert store.requeue(job.id, attempt=job.attempts, count_attempt=False)
    row = store.get(job.id)
    assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at) == ("queued", 0, None, None)
    assert [r.attempts for r in store.claim("r2", 1, 30)] == [1]


def test_progress_written_by_the_holder_is_read_through_another_replica(stores):
    holder, other = stores.store, stores.replica()
    holder.add(JobRecord("a" * 12, 1.0, "queued"))
    (job,) = holder.claim("r1", 1, 30)
    assert holder.record_progress({job.id: Progress(job.attempts, 0.25, 15.0, 60.0)}) == {job.id}
    row = other.get(job.id)
    assert (row.progress, row.seconds_done, row.seconds_total) == (0.25, 15.0, 60.0)
    stale = Progress(job.attempts + 1, 0.5, 30.0, 60.0)  # not its attempt
    assert holder.record_progress({job.id: stale}) == set()


def test_a_cancel_asked_through_one_replica_reaches_the_holder_through_another(stores, tmp_path):
    holder, other = stores.store, stores.replica()
    holder.add(JobRecord("a" * 12, 1.0, "queued"), recording=b"running")
    holder.add(JobRecord("b" * 12, 2.0, "queued"), recording=b"waiting")
    (running,) = holder.claim("r1", 1, 30)
    assert other.request_cancel("unknown00000") is None
    waiting = other.request_cancel("b" * 12)  # queued: cancelled at once, nobody runs it
    assert (waiting.status, waiting.error_type, waiting.finished) == ("cancelled", "JobCancelled", True)
    assert not holder.read_recording("b" * 12, tmp_path / "b") and holder.claim("r1", 5, 30) == []
    asked = other.request_cancel(running.id)  # running: its holder is asked
    assert (asked.status, asked.cancel_requested) == ("running", True)
    assert holder.cancel_requested([running.id, "b" * 12, "unknown00000"]) == {running.id}
    assert holder.renew("r1", {running.id: running.attempts}, 30) == {running.id: True}
    assert holder.finish(
        running.id, "cancelled", attempt=running.attempts, error="cancelled", error_type="JobCancelled"
    )
    assert other.get(running.id).status == "cancelled" and other.cancel_requested([running.id]) == set()


def test_segments_streamed_by_the_holder_are_read_through_another_replica_and_restart_with_a_claim(stores):
    holder, other = stores.store, stores.replica()
    holder.add(JobRecord("a" * 12, 1.0, "queued"))
    first, second = _result().segments
    assert not holder.append_segments("a" * 12, 1, [first])  # not claimed yet: nobody's to write
    (job,) = holder.claim("r1", 1, 0.2)
    assert holder.append_segments(job.id, job.attempts, [first])
    assert holder.append_segments(job.id, job.attempts, [second])
    assert other.segments(job.id) == (1, [first, second]) and other.segments(job.id, 1) == (1, [second])
    time.sleep(0.4)  # the holder died: the next claim decodes from the start
    (again,) = other.claim("r2", 1, 30)
    assert not holder.append_segments(job.id, job.attempts, [second])  # the late holder adds nothing
    assert holder.segments(job.id) == (2, [])
    assert other.append_segments(job.id, again.attempts, [first]) and holder.segments(job.id) == (2, [first])
    assert other.finish(job.id, "done", attempt=again.attempts, result=_result())
    assert holder.segments(job.id) == (2, [])  # the result holds them all now
    assert holder.segments("unknown00000") == (0, [])


def test_the_queue_length_counts_the_jobs_no_replica_has_claimed(stores):
    for i in range(3):
        stores.store.add(JobRecord(f"{i:012d}", float(i), "queued"))
    assert stores.replica().queued_count() == 3
    stores.replica().claim("other", 1, 30)
    stores.store.request_cancel(f"{2:012d}")
    assert stores.store.queued_count() == 1


def test_every_replica_and_every_restart_reads_one_secret(stores):
    secret = stores.store.secret("browser_state_secret")
    assert len(secret) >= 32 and stores.store.secret("another") != secret
    assert stores.replica().secret("browser_state_secret") == secret
    assert stores.reopen().secret("browser_state_secret") == secret
