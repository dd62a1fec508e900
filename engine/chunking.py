"""Plan the 30 s windows of a long recording, and stitch their segments back together.

Whisper reads 30 s of audio at a time. A longer recording is cut into windows of at most
`chunk_length_s`, each cut placed in the quietest stretch near the end of the window. Where
that stretch is a real pause, neighbouring windows meet there and no audio is decoded twice;
where there is none (music, unbroken speech), they overlap by `overlap_s` around the cut so
that a word at the seam is heard whole by one of them. Every window is decoded
on its own (many at once, in batches) and reports segments with times relative to its own
start; `stitch_segments` turns them into one absolute, increasing list in which the speech
around each seam appears exactly once.

Pure functions over numpy arrays: no torch, no model, so they are cheap to test and to reuse.
Windows are index ranges into the caller's array, never copies of it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from engine.results import Segment

SAMPLE_RATE = 16000  # Hz; whisper's own (whisper.audio.SAMPLE_RATE), repeated to stay torch-free
CHUNK_LENGTH_S = 30.0  # seconds whisper reads at once (whisper.audio.CHUNK_LENGTH)
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
# A cut whose (smoothed) level is this far below the window's speech level (its 90th
# percentile) lies in a pause: no word crosses it, so the windows need not overlap there.
# Sentence pauses in read and conversational speech measure 40 dB and more below the speech
# around them; background noise rarely sits within 25 dB of it.
PAUSE_DB = 25.0
SPEECH_PERCENTILE = 90


@dataclass(frozen=True)
class Window:
    index: int  # position in the plan, 0-based
    start: int  # first sample of the audio this window decodes
    end: int  # one past the last sample; end - start <= chunk_length_s * sample_rate
    keep_from: float  # seconds (absolute): a segment is kept if its midpoint >= keep_from ...
    keep_until: float  # ... and < keep_until; equals the next window's keep_from (the cut)
    sample_rate: int = SAMPLE_RATE  # samples per second that start and end count in

    @property
    def start_s(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_s(self) -> float:
        return self.end / self.sample_rate

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / self.sample_rate

    def samples(self, audio: np.ndarray) -> np.ndarray:
        """This window's audio: a view into `audio`, not a copy."""
        return audio[self.start : self.end]


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


def _quietest_cut(level_db: np.ndarray, frame_length: int, lo: int, hi: int, quiet_enough_db: float = -np.inf) -> int:
    """The sample in [lo, hi] where cutting disturbs the least speech.

    Candidate cuts are frame centres. Among the frames that are (near-)quietest, or at most
    `quiet_enough_db` (any pause is as good a place as the deepest one), take the
    latest run of consecutive ones and cut in its middle: that is as far as possible from the
    speech on both sides of the pause, so both windows' edges see the pause and not a clipped
    word. A run that reaches `hi` continues past the search range (or the audio is equally
    loud everywhere), so the latest allowed point is as good as any and gives the longest
    window.
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


def _pause_level(level_db: np.ndarray, frame_length: int, start: int, end: int) -> float:
    """The level (dB) at or below which a point in [start, end) is a pause in its speech."""
    frames = level_db[start // frame_length : max(end // frame_length, start // frame_length + 1)]
    return max(float(np.percentile(frames, SPEECH_PERCENTILE)) - PAUSE_DB, SILENCE_FLOOR_DB)


def plan_windows(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    chunk_length_s: float = CHUNK_LENGTH_S,
    overlap_s: float = 2.0,
    search_s: float = 5.0,
) -> List[Window]:
    """Cut a recording into windows of at most `chunk_length_s`, cutting in silence.

    Window i starts at s_i (s_0 = 0). When the rest of the audio fits in one chunk it is the
    last window. Otherwise the cut c_i is the middle of the latest pause in
    [s_i + L - search_s, s_i + L] (L = chunk; a pause is `PAUSE_DB` below the window's speech
    level; see `_quietest_cut`). If there is one, window i ends there and window i+1 starts
    there: nobody speaks across the seam, so nothing is decoded twice. If not, the cut is the
    quietest point of [s_i + L - O/2 - search_s, s_i + L - O/2] (O = overlap); window i ends
    at c_i + O/2 (so it is at most L long) and window i+1 starts at c_i - O/2, so the two
    share exactly O around the cut. Either way each window keeps the segments whose midpoint
    lies between its two cuts.

    `overlap_s` is context either side of a seam without a pause: more of it lets whisper
    finish the word at a window's edge, at the cost of decoding that audio twice. `search_s`
    is how far back from the longest possible window a cut may move to find silence: more
    finds more pauses, at the cost of shorter windows (more of them to decode). The search
    never reaches back past the middle of the stretch since the previous cut, so every window
    still advances by at least half a chunk.

    The whole recording's energy is computed once, vectorised; planning an hour takes a few
    tens of milliseconds.
    """
    for name, value in (("chunk_length_s", chunk_length_s), ("overlap_s", overlap_s), ("search_s", search_s)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    chunk = int(round(chunk_length_s * sample_rate))
    overlap = int(round(overlap_s * sample_rate))
    search = int(round(search_s * sample_rate))
    if chunk <= 0 or overlap >= chunk:
        raise ValueError(f"need 0 <= overlap_s < chunk_length_s, got overlap_s={overlap_s}, chunk_length_s={chunk_length_s}")

    audio = _as_float_audio(audio)
    total = len(audio)
    if total == 0:
        return []
    duration = total / sample_rate
    if total <= chunk:
        return [Window(0, 0, total, 0.0, duration, sample_rate)]

    # The overlap splits around the cut; with an odd sample count the extra one goes after it.
    before_cut = overlap // 2
    after_cut = overlap - before_cut

    frame_length = _frame_length(sample_rate, FRAME_S)
    smoothing_frames = max(1, int(round(SMOOTHING_S / FRAME_S)))
    level_db = _smoothed_db(_frame_mean_square(audio, frame_length), smoothing_frames)

    def quietest(latest: int, quiet_enough_db: float = -np.inf) -> int:
        # latest - previous_cut >= chunk - overlap > 0, so the floor below keeps every keep
        # range at least half of that.
        earliest = max(latest - search, previous_cut + (latest - previous_cut + 1) // 2)
        return _quietest_cut(level_db, frame_length, earliest, latest, quiet_enough_db)

    windows: List[Window] = []
    start, keep_from = 0, 0.0
    previous_cut = 0
    while total - start > chunk:
        pause_db = _pause_level(level_db, frame_length, start, start + chunk)
        cut = quietest(start + chunk, pause_db)  # the latest pause, for the longest window
        if overlap == 0 or level_db[min(cut // frame_length, len(level_db) - 1)] <= pause_db:
            end, next_start = cut, cut
        else:
            cut = quietest(start + chunk - after_cut)
            end, next_start = cut + after_cut, cut - before_cut
        keep_until = cut / sample_rate
        windows.append(Window(len(windows), start, end, keep_from, keep_until, sample_rate))
        start, keep_from, previous_cut = next_start, keep_until, cut
    windows.append(Window(len(windows), start, total, keep_from, duration, sample_rate))
    return windows


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


def stitch_segments(
    windows: Sequence[Window],
    segments_per_window: Sequence[Sequence[Segment]],
    duration: float,
) -> List[Segment]:
    """One absolute, increasing list of segments from the windows' window-relative ones.

    Each segment is shifted by its window's start and its end clipped to the window's audio
    and to `duration`. It is kept only if its midpoint lies in its window's keep range: a
    segment straddling a cut is reported by both windows, with slightly different times,
    and the keep ranges tile the recording, so exactly one copy survives. Segments with no
    text, or that begin after the window's audio ends (text invented over whisper's zero
    padding), are dropped. Times are then made monotonic and ids renumbered 0..n-1.
    The input segments are not modified; new ones are returned.

    Nothing is ever lost at a seam, but one case repeats words: a single segment of
    unbroken speech that runs past both edges of the overlap is heard cut short by both
    windows, and each copy's midpoint then falls on its own side of the cut. Cutting in
    silence makes that rare (whisper ends a segment at a pause); mending it needs word
    timestamps or a token-level merge of the two copies.
    """
    if len(windows) != len(segments_per_window):
        raise ValueError(f"{len(windows)} windows but {len(segments_per_window)} lists of segments")

    kept: List[Segment] = []
    for window, segments in zip(windows, segments_per_window):
        offset = window.start_s
        limit = min(window.end_s, duration)
        for segment in segments:
            if not segment.text.strip():
                continue
            start = max(segment.start + offset, 0.0)
            if start >= limit:
                continue
            end = min(max(segment.end + offset, start), limit)
            if window.keep_from <= (start + end) / 2 < window.keep_until:
                kept.append(_moved(segment, start, end, offset))

    stitched: List[Segment] = []
    previous_end = 0.0
    for new_id, segment in enumerate(kept):
        # Whisper's timestamps near a window's edge are rough, so the first segment after a
        # seam may begin slightly before the last one before it ended.
        start = max(segment.start, previous_end)
        end = max(segment.end, start)
        stitched.append(dataclasses.replace(segment, id=new_id, start=start, end=end, words=_clamped_words(segment.words, start, end)))
        previous_end = end
    return stitched


def _moved(segment: Segment, start: float, end: float, offset: float) -> Segment:
    """A copy of `segment` at absolute times, its word timestamps shifted by the same offset."""
    words = None
    if segment.words is not None:
        words = [dataclasses.replace(w, start=w.start + offset, end=w.end + offset) for w in segment.words]
    return dataclasses.replace(segment, start=start, end=end, tokens=list(segment.tokens), words=words)


def _clamped_words(words, start: float, end: float):
    """Word times kept inside their segment's (possibly adjusted) span, as subtitle writers expect."""
    if words is None:
        return None
    clamped = []
    for w in words:
        word_start = min(max(w.start, start), end)
        clamped.append(dataclasses.replace(w, start=word_start, end=min(max(w.end, word_start), end)))
    return clamped
