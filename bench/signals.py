"""Stretches without speech, made here (no recordings of music ship with the repo): what a
meeting holds between its talks, for the voice-activity benchmark and the tests that
check nothing is invented there. float32, 16 kHz, mono, like engine.load_audio's output."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
NOTES_HZ = (261.6, 329.6, 392.0, 523.3, 440.0, 349.2)  # a C-major arpeggio and back


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def noise(seconds: float, level: float = 0.05, seed: int = 0) -> np.ndarray:
    """White noise at `level` RMS (0.05: a loud fan or a busy room, -26 dBFS)."""
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(
        np.float32
    )


def music(seconds: float, note_s: float = 0.5, level: float = 0.2) -> np.ndarray:
    """Plucked notes with a harmonic, one every `note_s`: tonal, rhythmic, never silent for
    long, so an energy threshold lets it through and only a voice detector stops it."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = np.zeros_like(t)
    note_samples = int(note_s * SAMPLE_RATE)
    envelope = np.exp(-np.linspace(0, 3, note_samples))
    for index, start in enumerate(range(0, len(t), note_samples)):
        span = slice(start, min(start + note_samples, len(t)))
        f = NOTES_HZ[index % len(NOTES_HZ)]
        phase = 2 * np.pi * f * t[span]
        out[span] = level * envelope[: span.stop - span.start] * (np.sin(phase) + 0.5 * np.sin(2 * phase))
    return out.astype(np.float32)


NON_SPEECH = {"silence": silence, "noise": noise, "music": music}
