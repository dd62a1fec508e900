"""On CPU only the decode loop's thread runs torch on every core (engine.device.cpu_threads): a
second thread running multi-threaded ops halves the decoder's speed. These tests hold the
thread counts that make that true; the speed itself is measured by `python -m bench`."""

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from engine.device import cpu_threads
from engine.worker import TranscriptionWorker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_single_threaded_thread_leaves_the_others_their_cores(two_threads):
    def one_core_then_ask():
        cpu_threads.single_threaded_here()
        x = torch.randn(256, 256)
        (x @ x).sum()  # ops still run, on one core
        return torch.get_num_threads()

    assert cpu_threads.in_passing_thread(one_core_then_ask) == 1
    assert torch.get_num_threads() == 2  # this thread
    # a new thread, such as the decode loop's
    assert cpu_threads.in_passing_thread(torch.get_num_threads) == 2


def test_job_threads_run_on_one_core(two_threads):
    worker = TranscriptionWorker(
        lambda request, handle: torch.get_num_threads(),
        workers=2,
        prepare_thread=cpu_threads.single_threaded_here,
    )
    try:
        assert [worker.submit(None).result(timeout=30) for _ in range(4)] == [1] * 4
    finally:
        worker.shutdown()
    assert cpu_threads.in_passing_thread(torch.get_num_threads) == 2


def test_in_passing_thread_returns_and_raises_as_a_call_would():
    ran_in = []
    assert cpu_threads.in_passing_thread(lambda: ran_in.append(threading.current_thread()) or 42) == 42
    assert ran_in[0] is not threading.current_thread() and not ran_in[0].is_alive()
    with pytest.raises(ValueError, match="bad model"):
        cpu_threads.in_passing_thread(lambda: (_ for _ in ()).throw(ValueError("bad model")))


def test_loading_the_voice_activity_model_keeps_the_process_thread_count():
    """silero_vad's import sets torch to one thread for the whole process; the engine loads it
    from a job thread (itself on one core) and the decode loop must keep both cores. In a
    fresh interpreter, so that the import really happens here."""
    pytest.importorskip("silero_vad")
    script = textwrap.dedent("""
        import threading, numpy as np, torch
        from engine.audio import vad
        from engine.device import cpu_threads
        torch.set_num_threads(2)
        def job():
            cpu_threads.single_threaded_here()
            vad.speech_map(np.zeros(32000, dtype=np.float32), vad.VadOptions())
        for work in (job, lambda: print(torch.get_num_threads())):
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2"]
