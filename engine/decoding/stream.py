"""One section of a recording, decoded window after window exactly as `whisper.transcribe` does.

A real Whisper model ends a 30 s window at its last *complete* segment and expects the
caller to carry on from that segment's end: `whisper.transcribe` moves its `seek` to the
last timestamp, so the unfinished sentence at a window's edge is heard again, whole, at the
start of the next window. Windows decoded independently lose it (measured: 6-10 % of the
words of long recordings with real weights). A `SectionStream` is that loop turned inside
out: `next_window()` says what to decode next (the log-mel at `seek`, the previous text as
the prompt), `advance(result)` takes the decoded window and moves `seek` by whisper's rules.
It knows nothing of batches; `engine.decoding.decode_loop` advances many streams in one batch.

The arithmetic is whisper's own: the section's log-mel is computed once with 30 s of
padding (so its normalisation is the section's, as whisper's is the recording's), windows
are slices of it, and the no-speech skip, the segment slicing, the seek rules, the prompt
reset and the word-timestamp seek are `whisper.transcribe`'s, in the same order. A
recording that is one section gives `whisper.transcribe`'s segments (tests/test_stream.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import whisper
from whisper.audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper.decoding import DecodingResult
from whisper.timing import WordTiming
from whisper.tokenizer import Tokenizer

from engine.audio.energy import is_silent
from engine.audio.vad import SpeechMap
from engine.decoding.options import TranscribeOptions, is_no_speech
from engine.decoding.word_timing import add_word_timestamps, text_tokens_of
from engine.results import Segment, TokenLogprob, Word

INPUT_STRIDE = 2  # mel frames per output token (N_FRAMES / n_audio_ctx)
TIME_PRECISION = INPUT_STRIDE * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp token: 0.02


@dataclass(frozen=True)
class StreamWindow:
    """What a stream asks to have decoded next."""

    mel: torch.Tensor  # (n_mels, N_FRAMES) float32 on the CPU, zero-padded past the section's end
    prompt: list[int]  # previous text (timestamps included), whisper's `prompt` for this window
    seek: int  # mel frame (10 ms) in the section where the window starts
    frames: int  # frames of real audio in it (<= N_FRAMES)


class SectionStream:
    """The seek state of one section: audio, seek, previous text, segments so far."""

    def __init__(
        self,
        audio: np.ndarray,
        offset_s: float,
        options: TranscribeOptions,
        tokenizer: Tokenizer,
        n_mels: int,
        speech: SpeechMap | None = None,
    ):
        self.audio = audio  # the section's samples (a view into the recording, or into its speech with VAD)
        self.offset_s = offset_s  # where the section starts in the recording (in the speech kept, with VAD)
        self.speech = speech  # with VAD: the stretches kept, to take times back to the recording's
        self.options = options
        self.tokenizer = tokenizer
        self.mel = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)
        self.content_frames = self.mel.shape[-1] - N_FRAMES
        self.seek = 0
        self.all_tokens: list[int] = []
        if options.initial_prompt:
            self.all_tokens = tokenizer.encode(" " + options.initial_prompt.strip())
        self.prompt_reset_since = 0
        self.last_speech_timestamp = 0.0
        self.segments: list[Segment] = []
        self.windows_decoded = 0
        self.tokens_decoded = 0  # of each window's accepted decode
        self.fallbacks = 0  # hotter re-decodes before a window's accepted one

    @property
    def duration_s(self) -> float:
        return self.content_frames / FRAMES_PER_SECOND

    @property
    def done_s(self) -> float:
        """Seconds of the section behind `seek`: decoded, or skipped as silence."""
        return min(self.seek, self.content_frames) / FRAMES_PER_SECOND

    @property
    def finished(self) -> bool:
        return self.seek >= self.content_frames

    def next_window(self) -> StreamWindow | None:
        """The window at `seek`, or None when the section is done. Windows whose audio is
        quieter than `silence_threshold_db` are skipped here, undecoded: given silence,
        Whisper invents text ("Thank you."), and the honest transcript of silence is empty."""
        while not self.finished:
            frames = min(N_FRAMES, self.content_frames - self.seek)
            samples = self.audio[self.seek * HOP_LENGTH : (self.seek + frames) * HOP_LENGTH]
            if is_silent(samples, self.options.silence_threshold_db):
                self.seek += frames
                continue
            mel = whisper.pad_or_trim(self.mel[:, self.seek : self.seek + frames], N_FRAMES)
            return StreamWindow(mel, self.all_tokens[self.prompt_reset_since :], self.seek, frames)
        return None

    def advance(
        self, window: StreamWindow, result: DecodingResult, alignment: list[WordTiming] | None = None
    ) -> None:
        """Take the decoded `window` and move `seek` as whisper.transcribe does. With word
        timestamps, `alignment` is the window's word timing (engine.decoding.word_timing.align_rows,
        computed for the whole batch); `needs_alignment` says which windows need one."""
        self.windows_decoded += 1
        self.tokens_decoded += len(result.tokens)
        if result.temperature in self.options.temperatures:
            self.fallbacks += self.options.temperatures.index(result.temperature)
        if is_no_speech(result, self.options):
            self.seek += window.frames  # fast-forward to the next window
            return
        tokenizer = self.tokenizer
        previous_seek = self.seek
        time_offset = window.seek / FRAMES_PER_SECOND
        tokens = torch.tensor(result.tokens)
        current: list[dict] = []

        # engine.decoding.fast_decode's, one per token
        token_logprobs = getattr(result, "token_logprobs", None) or []
        cursor = [0]  # segments are consecutive slices of `tokens`, from the first

        def new_segment(start: float, end: float, segment_tokens: torch.Tensor) -> dict:
            token_list = segment_tokens.tolist()
            text_tokens = text_tokens_of(token_list, tokenizer)
            values = token_logprobs[cursor[0] : cursor[0] + len(token_list)]
            cursor[0] += len(token_list)
            return {
                "seek": window.seek,
                "start": start,
                "end": end,
                "text": tokenizer.decode(text_tokens),
                "tokens": token_list,
                "text_tokens": text_tokens,
                "text_logprobs": [v for t, v in zip(token_list, values) if t < tokenizer.eot],
            }

        timestamp_tokens = tokens.ge(tokenizer.timestamp_begin)
        single_timestamp_ending = timestamp_tokens[-2:].tolist() == [False, True]
        consecutive = torch.where(timestamp_tokens[:-1] & timestamp_tokens[1:])[0] + 1
        if len(consecutive) > 0:  # complete segments, each between two timestamps
            slices = consecutive.tolist()
            if single_timestamp_ending:
                slices.append(len(tokens))
            last_slice = 0
            for current_slice in slices:
                sliced = tokens[last_slice:current_slice]
                start = sliced[0].item() - tokenizer.timestamp_begin
                end = sliced[-1].item() - tokenizer.timestamp_begin
                current.append(
                    new_segment(
                        time_offset + start * TIME_PRECISION, time_offset + end * TIME_PRECISION, sliced
                    )
                )
                last_slice = current_slice
            if single_timestamp_ending:  # no speech after the last timestamp
                self.seek += window.frames
            else:  # the unfinished segment is heard again from the last timestamp
                last_timestamp = tokens[last_slice - 1].item() - tokenizer.timestamp_begin
                self.seek += last_timestamp * INPUT_STRIDE
        else:
            duration = window.frames / FRAMES_PER_SECOND
            timestamps = tokens[timestamp_tokens.nonzero().flatten()]
            if len(timestamps) > 0 and timestamps[-1].item() != tokenizer.timestamp_begin:
                duration = (timestamps[-1].item() - tokenizer.timestamp_begin) * TIME_PRECISION
            current.append(new_segment(time_offset, time_offset + duration, tokens))
            self.seek += window.frames

        if self.options.word_timestamps and alignment is not None:
            add_word_timestamps(current, alignment, tokenizer, self.last_speech_timestamp)
            if not single_timestamp_ending:
                last_word_end = _last_end(current)
                if last_word_end is not None and last_word_end > time_offset:
                    self.seek = round(last_word_end * FRAMES_PER_SECOND)  # carry on right after the last word
            if self.options.hallucination_silence_threshold is not None:
                if self._skip_hallucinations(current, window, previous_seek, single_timestamp_ending):
                    return  # the window is decoded again, from after the silence
            last_word_end = _last_end(current)
            if last_word_end is not None:
                self.last_speech_timestamp = last_word_end

        for segment in current:  # an instantaneous segment or one without text is cleared
            if segment["start"] == segment["end"] or not segment["text"].strip():
                segment["text"], segment["tokens"], segment["text_tokens"], segment["words"] = "", [], [], []
            elif segment["start"] < self.duration_s:  # text "heard" in the padding past the end is not kept
                self.segments.append(self._segment(segment, result))
        self.all_tokens.extend(token for segment in current for token in segment["tokens"])
        if not self.options.condition_on_previous_text or result.temperature > 0.5:
            # a hot decode is a poor context for the next window: start afresh
            self.prompt_reset_since = len(self.all_tokens)

    def needs_alignment(self, result: DecodingResult) -> bool:
        """Whether `advance` will want word timings for this decoded window."""
        return self.options.word_timestamps and not is_no_speech(result, self.options)

    def _skip_hallucinations(
        self, current: list[dict], window: StreamWindow, previous_seek: int, single_timestamp_ending: bool
    ) -> bool:
        """whisper.transcribe's `hallucination_silence_threshold`: a segment whose words are
        improbable, too short or too long (`_is_anomaly`) and that silence surrounds is what
        Whisper writes when it hears nothing: drop it and everything after it in the window,
        and seek past it. Returns True when the whole window is to be decoded again from
        after the silence that opens it (its first segment is such a guess)."""
        threshold = self.options.hallucination_silence_threshold
        time_offset = window.seek / FRAMES_PER_SECOND
        window_end_time = (window.seek + N_FRAMES) / FRAMES_PER_SECOND
        segment_duration = window.frames / FRAMES_PER_SECOND
        if not single_timestamp_ending:
            last_word_end = _last_end(current)
            if last_word_end is not None and last_word_end > time_offset:
                remaining_duration = window_end_time - last_word_end
                if remaining_duration > threshold:
                    self.seek = round(last_word_end * FRAMES_PER_SECOND)
                else:
                    self.seek = previous_seek + window.frames
        first_segment = next((s for s in current if s["words"]), None)
        if first_segment is not None and _is_anomaly(first_segment):
            gap = first_segment["start"] - time_offset
            if gap > threshold:
                self.seek = previous_seek + round(gap * FRAMES_PER_SECOND)
                return True
        last_end = self.last_speech_timestamp
        for index, segment in enumerate(current):
            if not segment["words"]:
                continue
            if _is_anomaly(segment):
                next_segment = next((s for s in current[index + 1 :] if s["words"]), None)
                next_start = (
                    next_segment["words"][0]["start"] if next_segment else time_offset + segment_duration
                )
                silence_before = (
                    segment["start"] - last_end > threshold
                    or segment["start"] < threshold
                    or segment["start"] - time_offset < 2.0
                )
                silence_after = (
                    next_start - segment["end"] > threshold
                    or _is_anomaly(next_segment)
                    or window_end_time - segment["end"] < 2.0
                )
                if silence_before and silence_after:
                    self.seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                    if self.duration_s - segment["end"] < threshold:
                        self.seek = self.content_frames
                    current[index:] = []
                    break
            last_end = segment["end"]
        return False

    def _segment(self, d: dict, result: DecodingResult) -> Segment:
        offset = self.offset_s
        end = min(d["end"], self.duration_s)  # whisper's last timestamp may lie in the padding
        start, end = self._to_recording(d["start"] + offset, end + offset)
        window_start = round(offset * FRAMES_PER_SECOND) + d["seek"]
        words = None
        if "words" in d:
            words = [
                Word(
                    w["word"],
                    *self._to_recording(w["start"] + offset, w["end"] + offset),
                    float(w["probability"]),
                )
                for w in d["words"]
            ]
        if self.speech is not None:
            window_start = round(
                self.speech.to_recording(window_start / FRAMES_PER_SECOND) * FRAMES_PER_SECOND
            )
            if words:  # narrowed separately, a segment and its words may disagree at a join
                start, end = min(start, words[0].start), max(end, words[-1].end)
        if words:
            # Whisper lets a first word it finds "too long" start before its segment, and a last
            # word run past the recording's end; its own rule prefers the segment's times then.
            words = [
                replace(w, start=min(max(w.start, start), end), end=max(min(w.end, end), start))
                for w in words
            ]
        return Segment(
            id=0,
            seek=window_start,
            start=start,
            end=end,
            text=d["text"],
            tokens=d["text_tokens"],
            temperature=result.temperature,
            avg_logprob=result.avg_logprob,
            compression_ratio=result.compression_ratio,
            no_speech_prob=result.no_speech_prob,
            words=words,
            logprobs=self._logprobs(d) if self.options.logprobs else None,
        )

    def _logprobs(self, d: dict) -> list[TokenLogprob] | None:
        """The segment's text tokens with their log-probabilities, as OpenAI's API gives them."""
        values = d.get("text_logprobs") or []
        if len(values) != len(d["text_tokens"]):  # a decoder that does not report them
            return None
        pieces = [self.tokenizer.encoding.decode_single_token_bytes(t) for t in d["text_tokens"]]
        return [
            TokenLogprob(piece.decode("utf-8", errors="replace"), float(v), list(piece))
            for piece, v in zip(pieces, values)
        ]

    def _to_recording(self, start: float, end: float) -> tuple[float, float]:
        if self.speech is None:
            return start, end
        return self.speech.span_to_recording(start, end)


PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"  # whisper.transcribe's, for its anomaly score


def _last_end(segments: list[dict]) -> float | None:
    """whisper.transcribe's get_end: the last word's end, else the last segment's."""
    return next(
        (w["end"] for s in reversed(segments) for w in reversed(s["words"])),
        segments[-1]["end"] if segments else None,
    )


def _word_anomaly(word: dict) -> float:
    """whisper.transcribe's word_anomaly_score: improbable, very short or very long words."""
    probability, duration = word.get("probability", 0.0), word["end"] - word["start"]
    score = 1.0 if probability < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_anomaly(segment: dict | None) -> bool:
    """whisper.transcribe's is_segment_anomaly."""
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in PUNCTUATION][:8]
    score = sum(_word_anomaly(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def log_mel_spectrogram(
    audio: np.ndarray, n_mels: int, padding: int = 0, frames_per_piece: int = N_FRAMES
) -> torch.Tensor:
    """`whisper.log_mel_spectrogram(audio, n_mels, padding=padding)`, the same numbers, with
    the short-time Fourier transform taken a piece at a time.

    Whisper transforms the whole signal at once: for an hour that is a 1.5 GB complex
    spectrogram, and even a few minutes' section leaves a hundred megabytes of transient
    buffers per job that the allocator keeps. Frames only read 400 samples around their
    centre, so the signal is padded once as torch.stft would pad it (reflected at both
    ends) and cut into pieces of `frames_per_piece` frames; only the mel energies (80 or 128
    numbers a frame) are kept, and the log and the normalisation by the loudest value, the
    one step that needs the whole section, run on those at the end."""
    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if padding > 0:
        samples = torch.nn.functional.pad(samples, (0, padding))
    half = N_FFT // 2
    padded = torch.nn.functional.pad(samples[None, None], (half, half), mode="reflect")[0, 0]
    frames = len(samples) // HOP_LENGTH  # whisper drops the STFT's last frame
    window = torch.hann_window(N_FFT)
    filters = whisper.audio.mel_filters(samples.device, n_mels)
    mel = torch.empty(n_mels, frames)
    for first in range(0, frames, frames_per_piece):
        last = min(first + frames_per_piece, frames)
        piece = padded[first * HOP_LENGTH : (last - 1) * HOP_LENGTH + N_FFT]
        stft = torch.stft(piece, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
        mel[:, first:last] = filters @ (stft.abs() ** 2)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
