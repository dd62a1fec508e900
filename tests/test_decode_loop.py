"""The decode loop: one running decode that windows join and leave.

Windows end at different lengths; the loop hands an ended row's result to its stream at
once and lets that stream's next window (or another stream's) join the running decode, so
steps stay full. These tests watch the running decode through the loop's `before_step`
hook: rows of two jobs in one step, a sampled job kept out of a greedy decode, a cancelled
job gone within a step, the model lock let go between steps, progress that moves inside a
window, and a streaming job's first section ahead of its others. An allocation failure
halving the batch is tests/test_memory.py's.
"""

import threading
import time

import pytest

from conftest import LONG_11_MIN, SHARED_AUDIO, fast_settings, shared_audio
from engine import Engine, JobCancelled, load_audio
from engine.decoding.model_lock import ModelLock
from test_worker import fingerprint, wait_for

FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"


class WatchedDecode:
    """The engine's `before_step` hook: records, for every step, the jobs whose rows are in the
    running decode (and in `rows`, their streams); `gate` holds every step until set;
    `look(decode)`, when given, is called before each step and what it returns kept in `seen`.
    Each row's tag is the loop's entry for it: its `job` and its `stream`."""

    def __init__(self, look=None):
        self.steps = []  # one set of jobs per step
        self.rows = []  # one list of the rows' (job, stream) per step
        self.seen = []
        self.look = look
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, decode) -> None:
        if not self.gate.wait(60):
            raise TimeoutError("test gate never opened")
        entries = decode.live_tags()
        self.steps.append({entry.job for entry in entries})
        self.rows.append([(entry.job, entry.stream) for entry in entries])
        if self.look is not None:
            self.seen.append(self.look(decode))


@pytest.fixture(scope="module")
def audio():
    return load_audio(shared_audio(LONG_11_MIN))


def test_two_jobs_share_the_running_decode_and_each_gets_what_it_gets_alone(micro_checkpoint, audio):
    """Two users' jobs fill one batch instead of taking turns: with four sections each and a
    batch of eight, alone a job fills half the running decode, together they fill it."""
    watch = WatchedDecode()
    first, second = audio[: 16000 * 250], audio[16000 * 300 : 16000 * 550]
    settings = fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)
    with Engine(settings, before_step=watch) as engine:
        alone = [fingerprint(engine.transcribe(first)), fingerprint(engine.transcribe(second))]
        assert max(len(jobs) for jobs in watch.steps) == 1 and max(len(rows) for rows in watch.rows) == 4
        watch.gate.clear()
        watch.steps.clear()
        jobs = [engine.submit(first), engine.submit(second)]
        assert wait_for(lambda: engine.loop.live_streams == 8), "both jobs' sections should be in the loop"
        watch.gate.set()
        together = [fingerprint(job.result(120)) for job in jobs]
    shared = sum(len(jobs) == 2 for jobs in watch.steps)
    assert shared > len(watch.steps) // 2, f"the jobs took turns: {shared} of {len(watch.steps)} steps shared"
    assert max(len(rows) for rows in watch.rows) == 8
    assert together == alone


def test_a_sampled_job_never_joins_a_greedy_decode(micro_checkpoint, audio):
    # A running decode decodes at one temperature; a job asking for temperature 1.0 that
    # joined a greedy one would be decoded at 0 and get the greedy transcript without a word said.
    watch = WatchedDecode()
    first, second = audio[: 16000 * 250], audio[16000 * 300 : 16000 * 550]
    settings = fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)
    with Engine(settings, before_step=watch) as engine:
        greedy = fingerprint(engine.transcribe(second))
        watch.gate.clear()
        watch.steps.clear()
        jobs = [engine.submit(first), engine.submit(second, temperature=1.0)]
        assert wait_for(lambda: engine.loop.live_streams == 8), "both jobs' sections should be in the loop"
        watch.gate.set()
        results = [job.result(120) for job in jobs]
    assert max(len(jobs) for jobs in watch.steps) == 1, "a sampled row was decoded in the greedy decode"
    assert fingerprint(results[1]) != greedy, (
        "the job asked for temperature 1.0 and got the greedy transcript"
    )


def test_a_cancelled_job_leaves_the_running_decode_within_one_step(micro_checkpoint, audio):
    watch = WatchedDecode()
    settings = fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)
    with Engine(settings, before_step=watch) as engine:
        running = engine.submit(audio[: 16000 * 250])
        other = engine.submit(audio[16000 * 300 : 16000 * 550])
        assert wait_for(lambda: len(watch.steps) > 3 and len(watch.steps[-1]) == 2), (
            "the jobs never shared a step"
        )
        watch.gate.clear()
        time.sleep(0.2)  # the loop now waits at the gate, inside a step
        steps_before = len(watch.steps)
        running.cancel()
        watch.gate.set()
        with pytest.raises(JobCancelled):
            running.result(60)
        assert other.result(120).segments
    # the job's `cancelled` is its handle's cancel_requested
    with_cancelled = [
        jobs for jobs in watch.steps[steps_before:] if any(j.cancelled.__self__ is running for j in jobs)
    ]
    assert len(with_cancelled) <= 1, f"the cancelled job's rows went on for {len(with_cancelled)} steps"


def test_the_loop_lets_a_waiting_thread_have_the_model_between_steps():
    """A new job's language detection takes the model lock while a long job decodes: the loop
    holds it one step at a time and steps aside when someone waits."""
    lock, stop, got_it = ModelLock(), threading.Event(), threading.Event()

    def loop():
        while not stop.is_set():
            with lock:
                time.sleep(0.01)  # a token step
            lock.let_waiters_in()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.05)
        started = time.monotonic()
        with lock:
            got_it.set()
        assert time.monotonic() - started < 0.5
    finally:
        stop.set()
        thread.join()


def _rows(decode):
    """(handle, section index, windows decoded by that job's first section) of each row."""
    return [
        (
            entry.job.cancelled.__self__,
            entry.job.streams.index(entry.stream),
            entry.job.streams[0].windows_decoded,
        )
        for entry in decode.live_tags()
    ]


def test_progress_moves_inside_the_first_window_before_a_second_section_joins(tiny_en_model_dir):
    """Real tiny.en, 100 s in two sections of two windows each. The page's bar and /v1/jobs
    used to read 0 until a whole 30 s window had been decoded (every section's first window
    was encoded, then all were decoded side by side, so none ended sooner): progress now
    counts the timestamps each row has reached, and the second section waits until the
    first has shown some, so a user sees the job move after one window's encoding."""
    handles = []

    def look(decode):
        entries = decode.live_tags()
        streams = entries[0].job.streams
        return (
            handles[0].seconds_done,
            sum(stream.windows_decoded for stream in streams),
            {streams.index(entry.stream) for entry in entries},
        )

    watch = WatchedDecode(look)
    audio = load_audio(shared_audio(FIVE_MIN))[: 16000 * 100]
    settings = fast_settings(tiny_en_model_dir, batch_size=2, max_new_tokens=224, language="en")
    with Engine(settings, before_step=watch) as engine:
        watch.gate.clear()
        handles.append(engine.submit(audio))
        watch.gate.set()
        result = handles[0].result(300)
    assert result.windows >= 4 and max(len(sections) for _, _, sections in watch.seen) == 2
    before_any_ended = [done for done, ended, _ in watch.seen if ended == 0]
    assert any(done > 0 for done in before_any_ended), "no progress until a window had ended"
    done_when_second_joined = next(done for done, _, sections in watch.seen if sections != {0})
    assert done_when_second_joined > 0, "the second section joined before the job had shown any progress"
    progress = [done for done, _, _ in watch.seen]
    assert progress == sorted(progress), "progress went back"


def test_a_streaming_jobs_first_section_keeps_a_row_while_rows_are_scarce(micro_checkpoint, audio):
    """Two jobs of four sections on four rows. The job whose client streams its text (deltas
    go out in recording order) has its first section decoded alone until its first window is
    done, and that section never waits for a row; its transcript is what it is alone."""
    watch = WatchedDecode(_rows)
    other, streamed = audio[: 16000 * 250], audio[16000 * 300 : 16000 * 550]
    settings = fast_settings(micro_checkpoint, workers=2, batch_size=4, language="en", min_section_s=60)
    with Engine(settings, before_step=watch) as engine:
        alone = fingerprint(engine.transcribe(streamed))
        watch.gate.clear()
        watch.seen.clear()
        running = engine.submit(other)
        assert wait_for(lambda: engine.loop.live_streams == 4)
        job = engine.submit(streamed)
        job.stream_text()  # what ui/routes/streaming does for stream=true
        assert wait_for(lambda: engine.loop.live_streams == 8), "both jobs' sections should be in the loop"
        watch.gate.set()
        together = fingerprint(job.result(120))
        running.result(120)
    assert together == alone
    mine = [
        [(section, first_done) for handle, section, first_done in rows if handle is job]
        for rows in watch.seen
    ]
    present = [i for i, rows in enumerate(mine) if any(section == 0 for section, _ in rows)]
    assert any(first_done >= 1 for i in present for section, first_done in mine[i] if section == 0), (
        "the first section should have more than one window"
    )
    assert present == list(range(present[0], present[-1] + 1)), "the first section waited for a row"
    assert all(first_done >= 1 for rows in mine for section, first_done in rows if section > 0), (
        "a later section was decoded before the first section's first window was done"
    )
    assert any(section > 0 for rows in mine for section, _ in rows)
