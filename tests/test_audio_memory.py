"""Host memory a recording costs: what decoding peaks at, and that a refused job lets go of it.

Measured with tracemalloc, which counts what Python and numpy allocate (the PCM buffer and the
float32 samples), in bytes, independently of the allocator's pools and of other tests: the
figures are exact, so the bounds can be tight. `python -m bench.memory` measures the same
for hours of audio, in resident memory.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import fast_settings
from engine import Engine
from engine.audio.files import SAMPLE_RATE, AudioTooLong, load_audio, probe
from test_audio import make

MINUTES = 10
LIMIT_S = 300  # the server's max_audio_duration_s in these tests: half the recording
FLOAT32_BYTES = MINUTES * 60 * SAMPLE_RATE * 4


def silent_mp3_without_length(path: Path) -> Path:
    """Ten minutes of silence in an mp3 without a Xing header: ffprobe can only guess its length
    from the bitrate, so nothing but decoding it can tell it is too long."""
    make(
        path,
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=8000:cl=mono",
        "-t",
        str(MINUTES * 60),
        "-c:a",
        "libmp3lame",
        "-b:a",
        "8k",
        "-write_xing",
        "0",
    )
    assert probe(path).duration_s is None
    return path


def held_after_the_loop_settles(before: int, bound: float, wait_s: float = 5.0) -> int:
    """Traced bytes over `before` once below `bound`, or after `wait_s`: the decode loop's
    thread finishes its step a moment after the job's client has its result."""
    deadline = time.monotonic() + wait_s
    while (held := tracemalloc.get_traced_memory()[0]) - before >= bound and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


def noise_flac(path: Path) -> Path:
    """Ten minutes of quiet noise: every window is decoded (silence would be skipped)."""
    return make(path, "-f", "lavfi", "-i", "anoisesrc=r=16000:a=0.1:d=" + str(MINUTES * 60))


@pytest.fixture()
def traced():
    gc.collect()
    tracemalloc.start()
    gc.disable()  # what is kept must be kept by references, not by garbage awaiting a collection
    yield
    gc.enable()
    tracemalloc.stop()


def test_a_refused_recording_keeps_no_samples_alive(tmp_path: Path, traced):
    path = silent_mp3_without_length(tmp_path / "lecture.mp3")
    before, _ = tracemalloc.get_traced_memory()
    with pytest.raises(AudioTooLong, match="more than 5 min") as caught:
        load_audio(path, max_duration_s=LIMIT_S)
    error = caught.value  # kept, as a job keeps its error for the client that asks
    held, peak = tracemalloc.get_traced_memory()
    pcm_bytes = (LIMIT_S + 1) * SAMPLE_RATE * 2
    assert peak - before >= pcm_bytes  # it did decode up to just past the limit...
    # ...and let go
    assert held - before < pcm_bytes / 20, f"the refusal keeps {(held - before) / 2**20:.1f} MiB"
    assert error.duration_s == pytest.approx(LIMIT_S + 1, abs=0.1)


def test_decoding_peaks_at_one_int16_and_one_float32_copy(tmp_path: Path, traced):
    path = noise_flac(tmp_path / "lecture.flac")
    before, _ = tracemalloc.get_traced_memory()
    samples = load_audio(path)
    held, peak = tracemalloc.get_traced_memory()
    assert samples.nbytes == FLOAT32_BYTES
    assert held - before == pytest.approx(FLOAT32_BYTES, rel=0.02)  # what a running job holds
    # int16 from ffmpeg (2 bytes a sample, grown in place) beside the float32 result (4 bytes):
    # the "while decoding" figure of the README; bytearray over-allocates by up to an eighth.
    assert peak - before < FLOAT32_BYTES * 1.5 * 1.07


def test_a_refused_job_leaves_no_samples_in_the_server(tmp_path: Path, micro_checkpoint, traced):
    path = silent_mp3_without_length(tmp_path / "lecture.mp3")
    engine = Engine(fast_settings(micro_checkpoint, max_audio_duration_s=LIMIT_S, workers=1))
    try:
        before, _ = tracemalloc.get_traced_memory()
        handle = engine.submit(str(path))  # accepted: its header does not say how long it is
        with pytest.raises(AudioTooLong):
            handle.result(timeout=120)
        assert handle.status.value == "failed"
        held, _ = tracemalloc.get_traced_memory()
        assert held - before < (LIMIT_S * SAMPLE_RATE * 2) / 20, (
            f"the failed job keeps {(held - before) / 2**20:.1f} MiB"
        )
    finally:
        engine.close()


def test_a_finished_job_leaves_no_samples_in_the_server(tmp_path: Path, micro_checkpoint, traced):
    path = noise_flac(tmp_path / "lecture.flac")
    engine = Engine(fast_settings(micro_checkpoint, workers=1, max_new_tokens=4))
    try:
        engine.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32) + 0.01)  # tokenizer and caches loaded
        before, _ = tracemalloc.get_traced_memory()
        handle = engine.submit(str(path))
        assert handle.result(timeout=300).duration == pytest.approx(MINUTES * 60, abs=0.1)
        held = held_after_the_loop_settles(before, FLOAT32_BYTES / 20)
        # The handle is kept, as the job list keeps it; the recording must not be.
        assert held - before < FLOAT32_BYTES / 20, f"the finished job keeps {(held - before) / 2**20:.1f} MiB"
    finally:
        engine.close()
