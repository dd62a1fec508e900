"""Voice activity detection: which stretches of a recording hold speech (Silero VAD).

Given music, applause, noise or a long silence, Whisper invents text ("Thank you.", a
phrase repeated to the end of the window), and every such stretch costs a decoder pass.
faster-whisper, WhisperX and Whisper-WebUI therefore decode only what a voice activity
detector calls speech; so does this engine when `vad` is on. The stretches of speech (each
padded by `speech_pad_s`, gaps shorter than `min_silence_s` kept) are joined into one
shorter recording, which is cut into sections at the joins and decoded as usual; a
`SpeechMap` takes every time back to the original recording, so timestamps, words and
subtitles refer to the audio the user has.

Silero's model file ships inside the `silero-vad` package and runs on torch (TorchScript,
CPU). Its network is recurrent over 32 ms frames; run frame by frame, 11 minutes take ~7 s
on two CPU cores, a step costing about the same for one row as for a hundred. The recording
is therefore cut into up to 128 pieces (5 to 30 s) run side by side as one batch, each
piece first hearing the 2 s before it so its state is warm. The probabilities differ from
one long run only in a piece's first frames, and the speech stretches found by at most
0.2 s at their edges (measured on speech after a minute of music), inside the 0.4 s of
padding around each.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from engine.audio import SAMPLE_RATE
from engine.device.cpu_threads import in_passing_thread

FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
MIN_PIECE_FRAMES = 156  # ~5 s: shorter pieces would spend more on warming up than on the piece
MAX_PIECE_FRAMES = 938  # ~30 s: with ROWS_PER_PASS, ~260 MB of frames per pass at most
WARM_FRAMES = 64  # ~2 s heard before a piece, so the network's state is warm at its start
ROWS_PER_PASS = 128  # pieces run side by side: a step costs 1.8 ms at 32 rows, 3.7 ms at 128 (2 CPU cores)


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # Silero speech probability above which a frame is speech
    min_silence_s: float = 2.0  # gaps shorter than this stay in (faster-whisper's default)
    speech_pad_s: float = 0.4  # audio kept on each side of a speech stretch, so no word is clipped


@dataclass(frozen=True)
class SpeechMap:
    """Speech stretches of a recording, `[(start, end), ...]` in samples, in order and
    disjoint, and the arithmetic between the recording and their concatenation."""

    chunks: tuple[tuple[int, int], ...]
    sample_rate: int = SAMPLE_RATE

    @cached_property
    def _ends(self) -> list[int]:
        """Where each stretch ends in the concatenation (samples): every mapping reads it."""
        return np.cumsum([end - start for start, end in self.chunks]).astype(int).tolist()

    @property
    def speech_samples(self) -> int:
        return self._ends[-1] if self.chunks else 0

    @property
    def joins(self) -> list[int]:
        """Samples of the concatenation where one stretch ends and the next begins."""
        return self._ends[:-1]

    def keep(self, audio: np.ndarray) -> np.ndarray:
        """The speech stretches of `audio`, joined."""
        if not self.chunks:
            return audio[:0]
        return np.concatenate([audio[start:end] for start, end in self.chunks])

    def to_recording(self, seconds: float, is_end: bool = False) -> float:
        """A time of the concatenation as a time of the recording. A time on a join belongs
        to the stretch before it when it ends something (`is_end`), else to the one after."""
        if not self.chunks:
            return seconds
        sample = seconds * self.sample_rate
        index = self._chunk_at(sample, is_end)
        return (self.chunks[index][0] + sample - self._kept_before(index)) / self.sample_rate

    def span_to_recording(self, start: float, end: float) -> tuple[float, float]:
        """A segment's or a word's times (of the concatenation) as times of the recording.

        Whisper's timestamps are approximate: a segment that ends a stretch often ends a few
        tenths of a second into the next one, and a segment that starts one may start in the
        padding before the join. Mapped point by point, such a segment would span the minute
        of music that was cut out. So a span across a join is first narrowed to the stretch
        that holds most of it, the only one it can really belong to."""
        if not self.chunks:
            return start, end
        rate = self.sample_rate
        first, last = self._chunk_at(start * rate, False), self._chunk_at(end * rate, True)
        if first != last:

            def overlap(index: int) -> float:
                return min(end * rate, self._ends[index]) - max(start * rate, self._kept_before(index))

            best = max(range(first, last + 1), key=overlap)
            start, end = max(start, self._kept_before(best) / rate), min(end, self._ends[best] / rate)
        return self.to_recording(start), self.to_recording(end, is_end=True)

    def _chunk_at(self, sample: float, is_end: bool) -> int:
        index = (bisect.bisect_left if is_end else bisect.bisect_right)(self._ends, sample)
        return min(index, len(self.chunks) - 1)

    def _kept_before(self, index: int) -> int:
        return self._ends[index - 1] if index > 0 else 0


_model = None
_model_lock = threading.Lock()  # the network keeps state between calls: one user at a time


def speech_map(
    audio: np.ndarray, options: VadOptions = VadOptions(), probs: np.ndarray | None = None
) -> SpeechMap:
    """Where `audio` (float32, 16 kHz, mono) holds speech; `probs`, `speech_probabilities(audio)`
    when the caller has them already (diarization reads them again with finer options)."""
    if probs is None:
        probs = speech_probabilities(audio)  # first: imports silero_vad with the thread count kept
    else:
        _silero()  # the import, with the thread count kept, before silero_vad's functions are used
    from silero_vad import get_speech_timestamps_from_probs

    stamps = get_speech_timestamps_from_probs(
        probs.tolist(),
        sampling_rate=SAMPLE_RATE,
        threshold=options.threshold,
        min_speech_duration_ms=0,
        min_silence_duration_ms=int(options.min_silence_s * 1000),
        speech_pad_ms=int(options.speech_pad_s * 1000),
        audio_length_samples=len(audio),
    )
    return SpeechMap(tuple((int(s["start"]), int(s["end"])) for s in stamps if s["end"] > s["start"]))


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability of every 32 ms frame of `audio`."""
    model = _silero()
    frames_total = -(-len(audio) // FRAME)
    if frames_total == 0:
        return np.zeros(0, dtype=np.float32)
    # Pieces are cut from the samples themselves (no padded copy of the whole recording, which
    # is 230 MB an hour); the batch rows are zeros where the last frame runs past the end.
    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    piece_frames = min(max(-(-frames_total // ROWS_PER_PASS), MIN_PIECE_FRAMES), MAX_PIECE_FRAMES)
    starts = list(range(0, frames_total, piece_frames))
    probs = np.empty(frames_total, dtype=np.float32)
    with _model_lock, torch.inference_mode():
        for first in range(0, len(starts), ROWS_PER_PASS):
            group = starts[first : first + ROWS_PER_PASS]
            batch = torch.zeros(len(group), WARM_FRAMES + piece_frames, FRAME)
            for row, start in enumerate(group):
                lo = max(0, start - WARM_FRAMES)
                piece = samples[lo * FRAME : (start + piece_frames) * FRAME]
                at = (WARM_FRAMES - (start - lo)) * FRAME  # the recording's first piece has no warm-up: zeros
                batch[row].view(-1)[at : at + len(piece)] = piece
            model.reset_states()
            out = torch.stack(
                [model(batch[:, step], SAMPLE_RATE)[:, 0] for step in range(batch.shape[1])], dim=1
            )
            for row, start in enumerate(group):
                count = min(piece_frames, frames_total - start)
                probs[start : start + count] = out[row, WARM_FRAMES : WARM_FRAMES + count].numpy()
    return probs


def _silero():
    global _model
    with _model_lock:
        if _model is None:
            # in a thread that ends: a job thread runs on one core (engine.device.cpu_threads), so the
            # count read there to restore after the import would be 1, not the process's
            _model = in_passing_thread(_load_silero)
        return _model


def _load_silero():
    threads = torch.get_num_threads()
    try:
        import silero_vad  # its import sets torch to one thread for the whole process ...

        return silero_vad.load_silero_vad()
    finally:
        torch.set_num_threads(threads)  # ... which would halve the decoder's speed on a CPU
