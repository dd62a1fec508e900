"""Shared fixtures: small random whisper checkpoints, the real recordings, fast settings, a
served app."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import `engine`, `ui`, `app` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # import `checkpoints`

from checkpoints import write_checkpoint  # noqa: E402

SHARED_AUDIO = ROOT.parent / "shared" / "audio"
JFK = SHARED_AUDIO / "jfk" / "jfk.flac"
LONG_11_MIN = SHARED_AUDIO / "long" / "lj050_0159-0258_full.mp3"
FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"


def window_mels(audio, n_mels: int = 80):
    """Whisper's log-mel of every 30 s window of `audio`, back to back, stacked: what the
    tests that compare decoders window by window feed them."""
    import torch
    import whisper

    step = whisper.audio.N_SAMPLES
    return torch.stack(
        [
            whisper.log_mel_spectrogram(
                whisper.pad_or_trim(torch.from_numpy(audio[start : start + step])), n_mels=n_mels
            )
            for start in range(0, len(audio), step)
        ]
    )


def srt_cues(srt: str):
    """(start, end, lines) of each cue of an srt file, times in seconds."""

    def seconds(stamp):
        h, m, s = stamp.replace(",", ".").split(":")
        return 3600 * int(h) + 60 * int(m) + float(s)

    cues = []
    for block in srt.strip().split("\n\n"):
        _, times, *lines = block.splitlines()
        start, end = times.split(" --> ")
        cues.append((seconds(start), seconds(end), lines))
    return cues


def shared_audio(path: Path) -> Path:
    """A recording from ../shared/audio, or skip: a user's fresh clone does not have it."""
    if not path.is_file():
        pytest.skip(f"{path} is absent (real recordings live in ../shared/audio beside the checkout)")
    return path


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def micro_checkpoint(checkpoint_dir) -> Path:
    """Lively micro model (64 wide, 80 mels): tokens and timestamps depend on the audio."""
    return write_checkpoint(checkpoint_dir / "micro.pt", "micro")


@pytest.fixture(scope="session")
def v3micro_checkpoint(checkpoint_dir) -> Path:
    """large-v3's vocabulary (51866) and 128 mel bins at micro width."""
    return write_checkpoint(checkpoint_dir / "v3micro.pt", "v3micro")


def fast_settings(model: Path | str, **overrides):
    """CPU fp32, greedy only, guards off, a small token cap: fast and deterministic."""
    from engine import load_settings

    values = dict(
        model=str(model),
        device="cpu",
        precision="fp32",
        temperatures=[0.0],
        max_new_tokens=24,
        compression_ratio_threshold=None,
        logprob_threshold=None,
        no_speech_threshold=None,
        warm_up=False,
        vad=False,
    )  # VAD has its own tests; synthetic tones are not speech
    values.update(overrides)
    return load_settings(None, values, environ={})


@contextmanager
def app_server(model: Path | str, data_dir: Path, *, before_step=None, load_first: bool = True, **overrides):
    """The whole app (page, HTTP routes, durable jobs in `data_dir`) served on a free port with
    `fast_settings(model, **overrides)`, as `app.serve` serves it to users. The model is loaded
    before the first request unless `load_first=False` (the server then answers while it loads,
    as a user's does). `before_step` (a DecodeGate, SlowSteps, ...) runs before every decode
    step; a gate is opened on the way out, so held jobs can end and the server can close."""
    from app import serve
    from engine import Engine

    settings = fast_settings(model, data_dir=str(data_dir), **overrides)
    engine = Engine(settings, before_step=before_step, background=not load_first)
    with serve(settings, engine=engine, port=0) as server:
        try:
            yield server
        finally:
            if isinstance(before_step, threading.Event):
                before_step.set()


class DecodeGate(threading.Event):
    """A `before_step` hook (engine.decoding.decode_loop) that holds every step of the running
    decode until this event is set: `clear()` holds jobs running or queued, `set()` lets them
    go. Open at first."""

    def __init__(self, timeout_s: float = 60.0):
        super().__init__()
        self.timeout_s = timeout_s
        self.set()

    def __call__(self, decode) -> None:
        if not self.wait(self.timeout_s):
            raise TimeoutError("test gate never opened")


# --- real Whisper weights from installed packages (tests/real_models.py); skip when absent ---
@pytest.fixture(scope="session")
def tiny_en_model_dir() -> Path:
    from real_models import tiny_en_dir

    return tiny_en_dir()


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from real_models import base_dir

    return base_dir()


# --- a real PostgreSQL server (tests/postgres_server.py); skip when none can be started ---
@pytest.fixture(scope="session")
def postgres_server():
    from postgres_server import PostgresServer, Unavailable

    try:
        server = PostgresServer.start()
    except Unavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.close()


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.new_database()
