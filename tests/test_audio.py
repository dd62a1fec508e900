"""engine.audio.files on files made here with ffmpeg (never committed), plus the shared real recordings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.audio import files as audio
from engine.audio.files import (
    SAMPLE_RATE,
    AudioError,
    AudioFileNotFound,
    AudioTooLong,
    EmptyAudio,
    FfmpegMissing,
    NotAudio,
    TruncatedAudio,
    load_audio,
    probe,
)

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
SINE = ["-f", "lavfi", "-i", "sine=frequency=440:duration=3"]  # 3 s of tone, 44.1 kHz mono
SINE_SECONDS = 3.0
TINY_VIDEO = ["-f", "lavfi", "-i", "testsrc=duration=3:size=64x48:rate=10"]


def make(path: Path, *args: str) -> Path:
    """Write `path` with ffmpeg; args are everything between `ffmpeg -y` and the output name."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args, str(path)], check=True
    )
    return path


def make_piped(path: Path, container: str, *args: str) -> Path:
    """Write through a pipe, as a browser or a live recorder does: the header cannot say the length."""
    with open(path, "wb") as out:
        subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *args, "-f", container, "pipe:1"],
            stdout=out,
            check=True,
        )
    return path


def cut_in_half(source: Path) -> Path:
    data = source.read_bytes()
    half = source.with_name("half_" + source.name)
    half.write_bytes(data[: len(data) // 2])
    return half


def assert_whisper_ready(samples: np.ndarray, seconds: float) -> None:
    assert samples.dtype == np.float32
    assert samples.ndim == 1  # mono
    assert len(samples) == pytest.approx(seconds * SAMPLE_RATE, rel=0.01)
    assert np.abs(samples).max() <= 1.0


@pytest.fixture(autouse=True)
def fresh_ffmpeg_check():
    """check_ffmpeg caches its answer; no test may inherit another's PATH."""
    audio.check_ffmpeg.cache_clear()
    yield
    audio.check_ffmpeg.cache_clear()


# --- every format a user or a browser sends -------------------------------------------------

FORMATS = {
    "wav 44.1k stereo": ("tone.wav", [*SINE, "-ac", "2", "-ar", "44100"]),
    "wav 6 channels": ("surround.wav", [*SINE, "-ac", "6"]),
    "flac": ("tone.flac", SINE),
    "mp3": ("tone.mp3", SINE),
    "m4a/aac": ("tone.m4a", [*SINE, "-c:a", "aac"]),
    "ogg/opus": ("tone.ogg", [*SINE, "-c:a", "libopus"]),
    "webm/opus 48k stereo": ("tone.webm", [*SINE, "-ac", "2", "-ar", "48000", "-c:a", "libopus"]),
    "mp4 video with sound": ("clip.mp4", [*TINY_VIDEO, *SINE, "-c:v", "mpeg4", "-c:a", "aac", "-shortest"]),
    "mkv video with sound": (
        "clip.mkv",
        [*TINY_VIDEO, *SINE, "-c:v", "mpeg4", "-c:a", "libopus", "-shortest"],
    ),
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_becomes_float32_mono_16k(tmp_path: Path, kind: str):
    name, args = FORMATS[kind]
    samples = load_audio(make(tmp_path / name, *args))
    assert_whisper_ready(samples, SINE_SECONDS)
    assert np.abs(samples).max() > 0.02  # the tone survived resampling and down-mixing


def test_browser_recording_without_declared_length_loads(tmp_path: Path):
    # MediaRecorder streams webm, so the header has no duration; 48 kHz stereo like a mic.
    path = make_piped(tmp_path / "mic.webm", "webm", *SINE, "-ac", "2", "-ar", "48000", "-c:a", "libopus")
    info = probe(path)
    assert info.duration_s is None
    assert (info.sample_rate, info.channels, info.codec) == (48000, 2, "opus")
    assert_whisper_ready(load_audio(path), SINE_SECONDS)


def test_probe_describes_the_audio_track_of_a_video(tmp_path: Path):
    name, args = FORMATS["mp4 video with sound"]
    info = probe(make(tmp_path / name, *args))
    assert info.has_audio and info.has_video
    assert info.codec == "aac" and info.sample_rate == 44100 and info.channels == 1
    assert info.duration_s == pytest.approx(SINE_SECONDS, abs=0.05)


def test_odd_file_names_reach_ffmpeg_intact(tmp_path: Path):
    # ffmpeg would read "meeting 10:30.wav" as a URL with protocol "meeting 10".
    path = make(tmp_path / "meeting 10:30 -é.wav", *SINE)
    assert_whisper_ready(load_audio(path), SINE_SECONDS)


def test_silence_is_not_an_error(tmp_path: Path):
    path = make(tmp_path / "quiet.wav", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", "2")
    samples = load_audio(path)
    assert_whisper_ready(samples, 2.0)
    assert np.abs(samples).max() < 1e-3


# --- files that cannot become audio ---------------------------------------------------------


def test_missing_path_is_both_an_audio_error_and_file_not_found(tmp_path: Path):
    with pytest.raises(AudioFileNotFound, match="no file") as caught:
        load_audio(tmp_path / "nope.wav")
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, AudioError)


def test_zero_byte_file_is_empty(tmp_path: Path):
    path = tmp_path / "upload.webm"
    path.touch()
    with pytest.raises(EmptyAudio, match="0 bytes"):
        load_audio(path)


def test_audio_track_without_samples_is_empty(tmp_path: Path):
    path = make(tmp_path / "nothing.wav", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0")
    with pytest.raises(EmptyAudio, match="no sound samples"):
        load_audio(path)


def test_text_file_is_not_audio(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("Meeting notes: buy milk.\n" * 20)
    with pytest.raises(NotAudio, match="notes.txt") as caught:
        load_audio(path)
    assert "Upload a recording" in str(caught.value)


def test_png_is_not_audio(tmp_path: Path):
    path = make(tmp_path / "logo.png", *TINY_VIDEO, "-frames:v", "1")
    with pytest.raises(NotAudio, match="no sound track"):
        load_audio(path)


def test_random_bytes_are_not_audio(tmp_path: Path):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(NotAudio):
        load_audio(path)


def test_video_without_sound_is_not_audio(tmp_path: Path):
    path = make(tmp_path / "silent_film.mp4", *TINY_VIDEO, "-c:v", "mpeg4")
    assert probe(path).has_audio is False
    with pytest.raises(NotAudio, match="video without a sound track"):
        load_audio(path)


# --- truncated and damaged files ------------------------------------------------------------

TRUNCATABLE = {
    "flac": ("tone.flac", SINE),  # STREAMINFO declares the sample count
    "wav": ("tone.wav", [*SINE, "-ac", "2"]),  # the RIFF header declares the data size
    "mp3": ("tone.mp3", SINE),  # LAME's Xing/Info frame declares the frame count
    "webm": ("tone.webm", [*SINE, "-c:a", "libopus"]),  # the segment info declares the duration
    "m4a, index first": ("tone.m4a", [*SINE, "-c:a", "aac", "-movflags", "+faststart"]),
    "m4a, index last": ("late_index.m4a", [*SINE, "-c:a", "aac"]),  # cut off before its moov atom
}


@pytest.mark.parametrize("kind", list(TRUNCATABLE))
def test_file_cut_in_half_is_truncated(tmp_path: Path, kind: str):
    name, args = TRUNCATABLE[kind]
    half = cut_in_half(make(tmp_path / name, *args))
    with pytest.raises(TruncatedAudio, match="upload the complete file again|Upload the complete file again"):
        load_audio(half)


def test_truncation_reports_declared_and_decoded_lengths(tmp_path: Path):
    half = cut_in_half(make(tmp_path / "tone.flac", *SINE))
    with pytest.raises(TruncatedAudio, match=r"should last 3\.0 s") as caught:
        load_audio(half)
    assert caught.value.declared_s == pytest.approx(SINE_SECONDS)
    assert 0 < caught.value.decoded_s < SINE_SECONDS / 2 + 0.1


def test_file_cut_right_after_its_header_is_truncated(tmp_path: Path):
    whole = make(tmp_path / "tone.flac", *SINE)
    stub = tmp_path / "stub.flac"
    stub.write_bytes(whole.read_bytes()[:200])  # STREAMINFO survives, no audio frame does
    with pytest.raises(TruncatedAudio, match="cut off"):
        load_audio(stub)


# --- length limit ---------------------------------------------------------------------------


def ten_minutes(path: Path, *codec: str) -> Path:
    return make(path, "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "600", *codec)


def test_too_long_is_refused_from_the_header_without_decoding(tmp_path: Path, monkeypatch):
    path = ten_minutes(tmp_path / "lecture.flac")

    def must_not_decode(*_args, **_kwargs):
        raise AssertionError("load_audio decoded a file whose header already said it was too long")

    monkeypatch.setattr(audio, "_decode_pcm16", must_not_decode)
    with pytest.raises(AudioTooLong, match="10 min 0 s") as caught:
        load_audio(path, max_duration_s=5)
    assert caught.value.duration_s == pytest.approx(600)
    assert caught.value.max_duration_s == 5


def test_too_long_without_declared_length_stops_decoding_just_past_the_limit(tmp_path: Path, monkeypatch):
    # A WAV written through a pipe says "unknown" in its size fields; ffprobe can only guess.
    path = make_piped(
        tmp_path / "stream.wav", "wav", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "600"
    )
    assert probe(path).duration_s is None
    limits: list[float] = []
    real_decode = audio._decode_pcm16

    def spy(path_arg, limit_s):
        limits.append(limit_s)
        return real_decode(path_arg, limit_s)

    monkeypatch.setattr(audio, "_decode_pcm16", spy)
    with pytest.raises(AudioTooLong, match="more than") as caught:
        load_audio(path, max_duration_s=5)
    assert limits == [6]
    assert caught.value.duration_s <= 6.01


def test_recording_within_the_limit_loads(tmp_path: Path):
    path = make(tmp_path / "tone.flac", *SINE)
    assert_whisper_ready(load_audio(path, max_duration_s=SINE_SECONDS + 0.5), SINE_SECONDS)


def test_limit_must_be_positive(tmp_path: Path):
    with pytest.raises(ValueError):
        load_audio(make(tmp_path / "tone.flac", *SINE), max_duration_s=0)


# --- ffmpeg missing -------------------------------------------------------------------------


def test_missing_ffmpeg_says_how_to_install(tmp_path: Path, monkeypatch):
    path = make(tmp_path / "tone.flac", *SINE)
    empty_dir = tmp_path / "empty_bin"
    empty_dir.mkdir()
    monkeypatch.setenv("PATH", str(empty_dir))
    audio.check_ffmpeg.cache_clear()
    with pytest.raises(FfmpegMissing) as caught:
        load_audio(path)
    message = str(caught.value)
    for hint in (
        "apt-get install ffmpeg",
        "brew install ffmpeg",
        "conda install -c conda-forge ffmpeg",
        "winget",
    ):
        assert hint in message
    with pytest.raises(FfmpegMissing):
        audio.check_ffmpeg()  # the failure was not cached as success, nor the other way round


def test_ffmpeg_found_is_remembered(monkeypatch):
    audio.check_ffmpeg()
    calls: list[str] = []
    monkeypatch.setattr(shutil, "which", lambda tool: calls.append(tool))
    audio.check_ffmpeg()
    assert calls == []


# --- real recordings ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jfk/jfk.flac", "jfk/jfk.mp3"])
def test_real_recording_loads(name: str):
    path = SHARED_AUDIO / name
    if not path.exists():
        pytest.skip(
            f"shared recordings not found at {SHARED_AUDIO} (they live beside the project, not in it)"
        )
    samples = load_audio(path)
    assert_whisper_ready(samples, 11.0)
    assert np.abs(samples).max() > 0.3  # speech, not silence
