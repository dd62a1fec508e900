"""A two-speaker recording for the tests that rename speakers, built from ../shared/audio.

LibriSpeech reader 1089 (a man), then 2412 (a woman), then 1089 again, at one loudness, 0.6 s
apart: about 29 s, so diarization labels 1089 "A" and 2412 "B" (order of first speech).

    path, spans = two_speakers(folder)      # spans: [(start, end, "1089" | "2412")]
    spans = readers_in_turn(parts, path)    # any readers, one after another, at one loudness
    speaker_of(segment, spans)              # the reader whose part holds most of the segment
"""

from __future__ import annotations

import importlib.util
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_AUDIO, shared_audio

SR = 16000
LIBRISPEECH = SHARED_AUDIO / "librispeech"
PARTS = [
    ("1089", LIBRISPEECH / "1089-134686-0000.flac"),
    ("2412", LIBRISPEECH / "2412-153948-0000.flac"),
    ("1089", LIBRISPEECH / "1089-134691-0001.flac"),
]
GAP_S = 0.6
NAME = "interview.wav"


def needs_speaker_encoder() -> None:
    """Skip, saying what to install, where the GE2E encoder's weights are absent."""
    if importlib.util.find_spec("resemblyzer") is None:
        pytest.skip("the GE2E speaker encoder is absent: pip install --no-deps -r requirements-speakers.txt")


def two_speakers(folder: Path) -> tuple[Path, list[tuple[float, float, str]]]:
    path = folder / NAME
    return path, readers_in_turn(PARTS, path)


def readers_in_turn(parts, path: Path, gap_s: float = GAP_S) -> list[tuple[float, float, str]]:
    """`parts` ([(speaker, recording)]) one after another at one loudness, `gap_s` apart, written
    to `path` as 16 kHz WAV; returns [(start, end, speaker)] of each part."""
    from engine import load_audio

    pieces, spans, at = [], [], 0.0
    for speaker, part in parts:
        audio = load_audio(shared_audio(part))
        audio = audio * (0.05 / max(float(np.sqrt(np.mean(audio**2))), 1e-6))  # one loudness for all
        pieces += [audio, np.zeros(int(gap_s * SR), np.float32)]
        spans.append((at, at + len(audio) / SR, speaker))
        at += len(audio) / SR + gap_s
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes((np.clip(np.concatenate(pieces), -1, 1) * 32767).astype("<i2").tobytes())
    return spans


def speaker_of(start: float, end: float, spans) -> str:
    """The reader whose part holds most of [start, end]."""
    return max(spans, key=lambda s: min(end, s[1]) - max(start, s[0]))[2]
