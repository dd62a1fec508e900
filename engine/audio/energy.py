"""Loudness of a recording over time: where its pauses are, and whether a stretch is silent.

Sections (engine.audio.sections) are cut in the longest pauses, and windows quieter than the
silence threshold are skipped without decoding (engine.decoding.stream). Both read the energy of 20 ms
frames, smoothed over 200 ms so that the closure before a "p" or "t" inside a word does not
pass for a pause between words.

Pure functions over numpy arrays: no torch, no model, so they are cheap to test and to reuse.
"""

from __future__ import annotations

import math

import numpy as np

from engine.audio import SAMPLE_RATE

FRAME_S = 0.02  # energy frame; 20 ms is whisper's own timestamp resolution

# The cut is chosen on energy smoothed over this span, so a single quiet frame inside a word
# (the closure before a "p" or "t") does not pass for a pause between words.
SMOOTHING_S = 0.2
# Frames within this many dB of the quietest one count as equally quiet: the difference is
# noise, and among equals the latest gives longer windows, hence fewer of them.
TIE_DB = 3.0
# Below this level (dBFS) everything is silence; digital zeros and a faint hiss are equally
# good places to cut.
SILENCE_FLOOR_DB = -60.0
# A point whose (smoothed) level is this far below the speech level (its 90th percentile)
# lies in a pause: no word crosses it.
# Sentence pauses in read and conversational speech measure 40 dB and more below the speech
# around them; background noise rarely sits within 25 dB of it.
PAUSE_DB = 25.0
SPEECH_PERCENTILE = 90


def _as_float_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    # float32/float64 are used as they are (no copy); anything else (int16 PCM, float16)
    # would overflow or lose precision in the sum of squares, so it is converted.
    if audio.dtype not in (np.float32, np.float64):
        audio = audio.astype(np.float32)
    return audio


def _frame_length(sample_rate: int, frame_s: float) -> int:
    if not (sample_rate > 0 and math.isfinite(frame_s) and frame_s > 0):
        raise ValueError(f"sample_rate and frame_s must be positive, got {sample_rate}, {frame_s}")
    return max(1, int(round(frame_s * sample_rate)))


def _frame_mean_square(audio: np.ndarray, frame_length: int) -> np.ndarray:
    """Mean square per non-overlapping frame; the last, partial frame over its own samples."""
    audio = _as_float_audio(audio)
    n_full = len(audio) // frame_length
    body = audio[: n_full * frame_length].reshape(n_full, frame_length)
    # einsum sums the squares frame by frame without a squared copy of the whole recording
    # (an hour of float32 is 230 MB; a second one of those is not free).
    mean_square = np.einsum("ij,ij->i", body, body, dtype=np.float64) / frame_length
    tail = audio[n_full * frame_length :]
    if len(tail):
        tail_ms = np.dot(tail.astype(np.float64), tail.astype(np.float64)) / len(tail)
        mean_square = np.append(mean_square, tail_ms)
    return mean_square


def frame_energy(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, frame_s: float = FRAME_S) -> np.ndarray:
    """RMS of each non-overlapping `frame_s` frame of `audio` (a trailing partial frame counts).

    Samples are expected as floats in [-1, 1], as whisper.audio.load_audio returns them, so
    1.0 is 0 dBFS. Returns an empty array for empty audio.
    """
    return np.sqrt(_frame_mean_square(audio, _frame_length(sample_rate, frame_s)))


def _smoothed_db(mean_square: np.ndarray, width: int) -> np.ndarray:
    """Level in dB of a centred moving average of `width` frames (fewer at the edges)."""
    cumulative = np.concatenate(([0.0], np.cumsum(mean_square)))
    index = np.arange(len(mean_square))
    lo = np.maximum(index - width // 2, 0)
    hi = np.minimum(index + (width - width // 2), len(mean_square))
    average = (cumulative[hi] - cumulative[lo]) / (hi - lo)
    return 10.0 * np.log10(average + 1e-20)


def quietest_cut(
    level_db: np.ndarray, frame_length: int, lo: int, hi: int, quiet_enough_db: float = -np.inf
) -> int:
    """The sample in [lo, hi] where cutting disturbs the least speech.

    Candidate cuts are frame centres. Among the frames that are (near-)quietest, or at most
    `quiet_enough_db` (any pause is as good a place as the deepest one), take the
    latest run of consecutive ones and cut in its middle: that is as far as possible from the
    speech on both sides of the pause, so neither side starts or ends on a clipped word. A
    run that reaches `hi` continues past the search range (or the audio is equally loud
    everywhere), so the latest allowed point is as good as any.
    """
    half = frame_length // 2
    first = max(0, -(-(lo - half) // frame_length))  # first frame whose centre is >= lo
    last = min(len(level_db) - 1, (hi - half) // frame_length)  # last frame whose centre is <= hi
    if last < first:
        return hi  # search range narrower than a frame: nothing to choose between
    candidates = level_db[first : last + 1]
    quiet = candidates <= max(candidates.min() + TIE_DB, SILENCE_FLOOR_DB, quiet_enough_db)
    run_end = int(np.flatnonzero(quiet)[-1])
    if run_end == len(candidates) - 1:
        return hi
    loud_before = np.flatnonzero(~quiet[:run_end])
    run_start = int(loud_before[-1]) + 1 if len(loud_before) else 0
    middle_frame = first + (run_start + run_end) / 2
    cut = int(round(middle_frame * frame_length)) + half
    return min(max(cut, lo), hi)


def pause_level(level_db: np.ndarray, frame_length: int, start: int, end: int) -> float:
    """The level (dB) at or below which a point in [start, end) is a pause in its speech."""
    frames = level_db[start // frame_length : max(end // frame_length, start // frame_length + 1)]
    return max(float(np.percentile(frames, SPEECH_PERCENTILE)) - PAUSE_DB, SILENCE_FLOOR_DB)


def smoothed_level_db(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Level in dB of every 20 ms frame, averaged over `SMOOTHING_S` around it."""
    frame_length = _frame_length(sample_rate, FRAME_S)
    return _smoothed_db(_frame_mean_square(audio, frame_length), max(1, int(round(SMOOTHING_S / FRAME_S))))


def is_silent(audio: np.ndarray, threshold_db: float = -50.0, sample_rate: int = SAMPLE_RATE) -> bool:
    """True when the slice holds no speech-level energy: its loudest 20 ms frame is below
    `threshold_db` dBFS.

    The engine skips decoding such windows: whisper, given silence, tends to invent text
    ("Thank you.", "Subtitles by ..."), and an empty transcript is the honest answer.
    The loudest frame, not the average, decides, so one short word in a quiet window still
    gets it decoded.
    """
    rms = frame_energy(audio, sample_rate, FRAME_S)
    if len(rms) == 0:
        return True
    loudest = float(rms.max())
    return loudest <= 0.0 or 20.0 * math.log10(loudest) < threshold_db
