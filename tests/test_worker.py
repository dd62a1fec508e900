"""TranscriptionWorker through the real engine: concurrency, overflow, cancel, failure, release, shutdown."""

import shutil
import time

import pytest

from conftest import JFK, LONG_11_MIN, SHARED_AUDIO, fast_settings, shared_audio
from engine import AudioError, Engine, JobCancelled, JobStatus, QueueFull, WorkerShutDown

FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"
LIBRI = SHARED_AUDIO / "librispeech" / "1089-134686-0000.flac"


def wait_for(condition, timeout=60.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def fingerprint(result):
    return [(round(s.start, 2), round(s.end, 2), s.tokens) for s in result.segments]


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    # Small batches make the two jobs' model calls interleave batch by batch.
    with Engine(fast_settings(micro_checkpoint, workers=2, queue_size=3, batch_size=2)) as engine:
        yield engine


def test_two_workers_run_two_jobs_at_once_with_the_results_each_gives_alone(engine):
    long_path, short_path = shared_audio(FIVE_MIN), shared_audio(LIBRI)
    alone_long = engine.transcribe(long_path, language="en")
    alone_short = engine.transcribe(short_path, language="de")

    first = engine.submit(long_path, language="en")
    second = engine.submit(short_path, language="de")
    assert wait_for(
        lambda: first.status is JobStatus.RUNNING and second.status is JobStatus.RUNNING or first.done()
    ), "both jobs should run at the same time"
    assert second.status in (JobStatus.RUNNING, JobStatus.DONE) and not first.done()
    assert fingerprint(first.result(120)) == fingerprint(alone_long)
    assert fingerprint(second.result(120)) == fingerprint(alone_short)


def test_full_queue_refuses_at_once_and_cancel_frees_places(engine):
    path = shared_audio(LONG_11_MIN)
    jobs = [engine.submit(path) for _ in range(2)]  # both workers busy
    assert wait_for(lambda: all(j.status is JobStatus.RUNNING for j in jobs))
    waiting = [engine.submit(path) for _ in range(3)]  # queue_size places
    assert [j.queue_position for j in waiting] == [1, 2, 3]
    started = time.monotonic()
    with pytest.raises(QueueFull, match="queue is full"):
        engine.submit(path)
    assert time.monotonic() - started < 1.0, "refusal is immediate"

    assert waiting[0].cancel()  # a queued job: cancelled at once, the others move up
    assert waiting[0].status is JobStatus.CANCELLED and waiting[0].queue_position == 0
    with pytest.raises(JobCancelled):
        waiting[0].result(1)
    assert [j.queue_position for j in waiting[1:]] == [1, 2]

    assert wait_for(lambda: jobs[0].seconds_done > 0)
    assert jobs[0].cancel()  # a running job stops at its next batch
    with pytest.raises(JobCancelled):
        jobs[0].result(30)
    assert jobs[0].status is JobStatus.CANCELLED and jobs[0].seconds_done < jobs[0].seconds_total
    for job in [jobs[1], *waiting[1:]]:
        job.cancel()
    assert wait_for(lambda: engine.worker.busy == 0 and engine.worker.queue_length == 0)


def test_a_failing_job_fails_alone_and_the_worker_lives_on(engine, tmp_path):
    doomed = tmp_path / "gone.flac"
    shutil.copy(shared_audio(JFK), doomed)
    blockers = [engine.submit(shared_audio(FIVE_MIN)) for _ in range(2)]
    failing = engine.submit(doomed)
    fine = engine.submit(JFK)
    doomed.unlink()  # accepted, then the file vanishes before a worker reaches it
    with pytest.raises(AudioError, match="no file"):
        failing.result(120)
    assert failing.status is JobStatus.FAILED
    assert fine.result(120).segments and all(b.result(120).segments for b in blockers)
    assert engine.transcribe(JFK).segments, "threads survived the failure"


def test_release_while_a_job_runs_waits_for_it(engine):
    job = engine.submit(shared_audio(FIVE_MIN))
    assert wait_for(lambda: job.seconds_done > 0)
    report = engine.release()
    assert report.deferred == [engine.settings.model]
    assert job.result(120).segments, "the running job finished on its model"
    assert wait_for(lambda: not engine.status().loaded, timeout=5), "freed once the job returned it"
    assert engine.status().model.state == "released"
    assert engine.transcribe(JFK).segments  # loaded again on demand
    assert engine.status().model.state == "ready"


def test_idle_release(micro_checkpoint):
    with Engine(fast_settings(micro_checkpoint, idle_release_s=0.5)) as engine:
        assert engine.status().loaded
        assert wait_for(lambda: not engine.status().loaded, timeout=10)
        assert engine.transcribe(shared_audio(JFK)).segments


@pytest.mark.parametrize("drain", [True, False])
def test_shutdown_finishes_or_clearly_fails_every_accepted_job(micro_checkpoint, drain):
    engine = Engine(fast_settings(micro_checkpoint, workers=1, queue_size=3, batch_size=2))
    running = engine.submit(shared_audio(FIVE_MIN))
    assert wait_for(lambda: running.seconds_done > 0)
    waiting = [engine.submit(JFK) for _ in range(3)]
    engine.close(drain=drain, timeout=120)
    jobs = [running, *waiting]
    assert all(job.done() for job in jobs), "no accepted job is left hanging"
    if drain:
        assert all(job.status is JobStatus.DONE for job in jobs)
    else:
        assert running.status is JobStatus.CANCELLED  # stopped at its next step
        for job in waiting:
            assert job.status is JobStatus.FAILED
            with pytest.raises(WorkerShutDown, match="shut down"):
                job.result()
    with pytest.raises(WorkerShutDown):
        engine.submit(JFK)
