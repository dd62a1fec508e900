"""The decode loop with its own decoder: one running decode that windows join and leave.

Windows end at different lengths; the loop hands an ended row's result to its stream at
once and lets that stream's next window (or another stream's) join the running decode, so
steps stay full. These tests watch the running decode (engine.fast_decode.GreedyDecode)
through its own methods, called through: rows of two jobs in one step, a cancelled job
gone within a step, an allocation failure halving the batch, and the model lock let go
between steps. Tests that need to hold or fail the decoder from outside inject one
(tests/test_worker.py, tests/test_memory.py), which decodes whole batches instead.
"""
import threading
import time

import pytest
import torch

from conftest import LONG_11_MIN, fast_settings, shared_audio
from engine import Engine, JobCancelled, load_audio
from engine.decode_loop import ModelLock
from engine.fast_decode import GreedyDecode
from test_worker import fingerprint, wait_for


class WatchedDecode:
    """Records, for every token step, the jobs whose rows are in the running decode; `gate`
    holds every step until set."""

    def __init__(self, monkeypatch):
        self.steps = []  # one set of jobs per step
        self.gate = threading.Event()
        self.gate.set()
        step = GreedyDecode.step

        def watched(decode):
            if not self.gate.wait(60):
                raise TimeoutError("test gate never opened")
            # a whole-batch decode (decode_rows) tags its rows with numbers: no job to record
            live = {getattr(decode.tags[slot], "job", None) for slot in range(len(decode.tags))
                    if slot not in decode.free} - {None}
            self.steps.append(live)
            return step(decode)

        monkeypatch.setattr(GreedyDecode, "step", watched)


@pytest.fixture(scope="module")
def audio():
    return load_audio(shared_audio(LONG_11_MIN))


def test_two_jobs_share_the_running_decode_and_each_gets_what_it_gets_alone(micro_checkpoint, audio, monkeypatch):
    watch = WatchedDecode(monkeypatch)
    first, second = audio[:16000 * 250], audio[16000 * 300:16000 * 550]
    with Engine(fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)) as engine:
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
    first, second = audio[:16000 * 250], audio[16000 * 300:16000 * 550]
    with Engine(fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)) as engine:
        greedy = fingerprint(engine.transcribe(second))
        watch.gate.clear()
        watch.steps.clear()
        jobs = [engine.submit(first), engine.submit(second, temperature=1.0)]
        assert wait_for(lambda: engine.loop.live_streams == 8), "both jobs' sections should be in the loop"
        watch.gate.set()
        results = [job.result(120) for job in jobs]
    assert max(len(jobs) for jobs in watch.steps) == 1, "a sampled row was decoded in the greedy decode"
    assert fingerprint(results[1]) != greedy, "the job asked for temperature 1.0 and got the greedy transcript"


def test_a_cancelled_job_leaves_the_running_decode_within_one_step(micro_checkpoint, audio, monkeypatch):
    watch = WatchedDecode(monkeypatch)
    with Engine(fast_settings(micro_checkpoint, workers=2, batch_size=8, language="en", min_section_s=60)) as engine:
        running = engine.submit(audio[:16000 * 250])
        other = engine.submit(audio[16000 * 300:16000 * 550])
        assert wait_for(lambda: len(watch.steps) > 3 and len(watch.steps[-1]) == 2), "the jobs never shared a step"
        watch.gate.clear()
        time.sleep(0.2)  # the loop now waits at the gate, inside a step
        steps_before = len(watch.steps)
        running.cancel()
        watch.gate.set()
        with pytest.raises(JobCancelled):
            running.result(60)
        assert other.result(120).segments
    # the job's `cancelled` is its handle's cancel_requested
    with_cancelled = [jobs for jobs in watch.steps[steps_before:] if any(j.cancelled.__self__ is running for j in jobs)]
    assert len(with_cancelled) <= 1, f"the cancelled job's rows went on for {len(with_cancelled)} steps"


def test_an_allocation_failure_halves_the_running_decode_and_gives_the_same_transcript(micro_checkpoint, audio,
                                                                                         monkeypatch):
    """The CUDA branch on the CPU: the decode is thrown away, the batch limit halved and the
    same windows decoded again (their streams had not moved); the transcript does not change."""
    settings = fast_settings(micro_checkpoint, batch_size=8, language="en", min_section_s=30)
    recording = audio[:16000 * 250]
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
