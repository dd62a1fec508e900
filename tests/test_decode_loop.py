"""The decode loop with its own decoder: one running decode that windows join and leave.

Windows end at different lengths; the loop hands an ended row's result to its stream at
once and lets that stream's next window (or another stream's) join the running decode, so
steps stay full. These tests watch the running decode (engine.decoding.fast_decode.GreedyDecode)
through its own methods, called through: rows of two jobs in one step, a cancelled job
gone within a step, an allocation failure halving the batch, the model lock let go
between steps, progress that moves inside a window, and a streaming job's first section
ahead of its others. Tests that need to hold or fail the decoder from outside inject one
(tests/test_worker.py, tests/test_memory.py), which decodes whole batches instead.
"""

import threading
import time

import pytest
import torch

from conftest import LONG_11_MIN, SHARED_AUDIO, fast_settings, shared_audio
from engine import Engine, JobCancelled, load_audio
from engine.decoding.decode_loop import ModelLock
from engine.decoding.fast_decode import GreedyDecode
from test_worker import fingerprint, wait_for

FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"


class WatchedDecode:
    """Records, for every token step, the jobs whose rows are in the running decode (and in
    `rows`, their streams); `gate` holds every step until set; `before_step(decode)`, when
    given, is called before each step and what it returns kept in `seen`."""

    def __init__(self, monkeypatch, before_step=None):
        self.steps = []  # one set of jobs per step
        self.rows = []  # one list of the rows' (job, stream) per step
        self.seen = []
        self.gate = threading.Event()
        self.gate.set()
        step = GreedyDecode.step

        def watched(decode):
            if not self.gate.wait(60):
                raise TimeoutError("test gate never opened")
            # a whole-batch decode (decode_rows) tags its rows with numbers: no job to record
            entries = [
                decode.tags[slot]
                for slot in range(len(decode.tags))
                if slot not in decode.free and hasattr(decode.tags[slot], "job")
            ]
            self.steps.append({entry.job for entry in entries})
            self.rows.append([(entry.job, entry.stream) for entry in entries])
            if before_step is not None:
                self.seen.append(before_step(decode))
            return step(decode)

        monkeypatch.setattr(GreedyDecode, "step", watched)


@pytest.fixture(scope="module")
def audio():
    return load_audio(shared_audio(LONG_11_MIN))


def test_two_jobs_share_the_running_decode_and_each_gets_what_it_gets_alone(
    micro_checkpoint, audio, monkeypatch
):
    watch = WatchedDecode(monkeypatch)
    first, second = audio[: 16000 * 250], audio[16000 * 300 : 16000 * 550]
    with Engine(
        fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)
    ) as engine:
        alone = [fingerprint(engine.transcribe(first)), fingerprint(engine.transcribe(second))]
        assert max(len(jobs) for jobs in watch.steps) == 1
        watch.gate.clear()
        watch.steps.clear()
        jobs = [engine.submit(first), engine.submit(second)]
        assert wait_for(lambda: engine.loop.live_streams == 8), "both jobs' sections should be in the loop"
        watch.gate.set()
        together = [fingerprint(job.result(120)) for job in jobs]
    shared = sum(len(jobs) == 2 for jobs in watch.steps)
    assert shared > len(watch.steps) // 2, f"the jobs took turns: {shared} of {len(watch.steps)} steps shared"
    assert together == alone


def test_a_sampled_job_never_joins_a_greedy_decode(micro_checkpoint, audio, monkeypatch):
    # The running decode is greedy; a job asking for temperature 1.0 that joined it would be
    # decoded at 0 and get the greedy transcript without a word said.
    watch = WatchedDecode(monkeypatch)
    first, second = audio[: 16000 * 250], audio[16000 * 300 : 16000 * 550]
    with Engine(
        fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)
    ) as engine:
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


def test_a_cancelled_job_leaves_the_running_decode_within_one_step(micro_checkpoint, audio, monkeypatch):
    watch = WatchedDecode(monkeypatch)
    with Engine(
        fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)
    ) as engine:
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


def test_an_allocation_failure_halves_the_running_decode_and_gives_the_same_transcript(
    micro_checkpoint, audio, monkeypatch
):
    """The CUDA branch on the CPU: the decode is thrown away, the batch limit halved and the
    same windows decoded again (their streams had not moved); the transcript does not change."""
    settings = fast_settings(micro_checkpoint, batch_size=8, language="en", min_section_s=30)
    recording = audio[: 16000 * 250]
    with Engine(settings) as engine:
        expected = fingerprint(engine.transcribe(recording))
    admit, failures, widths = GreedyDecode.admit, [], []

    def admit_within_four(decode, mel, *args, **kwargs):
        if len(decode) + len(mel) > 4:
            failures.append(len(decode) + len(mel))
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        widths.append(len(decode) + len(mel))
        return admit(decode, mel, *args, **kwargs)

    monkeypatch.setattr(GreedyDecode, "admit", admit_within_four)
    with Engine(settings) as engine:
        got = fingerprint(engine.transcribe(recording))
    assert failures and max(widths) == 4  # the limit went from 8 to 4 (and back to 8 once the loop was idle)
    assert got == expected


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
    entries = [decode.tags[slot] for slot in range(len(decode.tags)) if slot not in decode.free]
    return [
        (
            entry.job.cancelled.__self__,
            entry.job.streams.index(entry.stream),
            entry.job.streams[0].windows_decoded,
        )
        for entry in entries
    ]


def test_progress_moves_inside_the_first_window_before_a_second_section_joins(tiny_en_model_dir, monkeypatch):
    """Real tiny.en, 100 s in two sections of two windows each. The page's bar and /v1/jobs
    used to read 0 until a whole 30 s window had been decoded (every section's first window
    was encoded, then all were decoded side by side, so none ended sooner): progress now
    counts the timestamps each row has reached, and the second section waits until the
    first has shown some, so a user sees the job move after one window's encoding."""
    handles = []

    def look(decode):
        entries = [decode.tags[slot] for slot in range(len(decode.tags)) if slot not in decode.free]
        streams = entries[0].job.streams
        return (
            handles[0].seconds_done,
            sum(stream.windows_decoded for stream in streams),
            {streams.index(entry.stream) for entry in entries},
        )

    watch = WatchedDecode(monkeypatch, before_step=look)
    audio = load_audio(shared_audio(FIVE_MIN))[: 16000 * 100]
    with Engine(fast_settings(tiny_en_model_dir, batch_size=2, max_new_tokens=224, language="en")) as engine:
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


def test_a_streaming_jobs_first_section_keeps_a_row_while_rows_are_scarce(
    micro_checkpoint, audio, monkeypatch
):
    """Two jobs of four sections on four rows. The job whose client streams its text (deltas
    go out in recording order) has its first section decoded alone until its first window is
    done, and that section never waits for a row; its transcript is what it is alone."""
    watch = WatchedDecode(monkeypatch, before_step=_rows)
    other, streamed = audio[: 16000 * 250], audio[16000 * 300 : 16000 * 550]
    settings = fast_settings(micro_checkpoint, workers=2, batch_size=4, language="en", min_section_s=60)
    with Engine(settings) as engine:
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
