"""Batched decoding of a recording's windows.

Windows are decoded `batch_size` at a time: one stack of log-mels goes through the encoder
and the decoder runs on the whole batch, so each token step is one matmul for all windows
instead of one per window. Stock `whisper.transcribe` decodes one window after another and
cannot use the GPU this way. The decoder is `engine.fast_decode.decode`: whisper.decode's
tokens for greedy batches with less work per step, whisper.decode itself for the rest.

On CUDA the batch is also cut to what fits in the memory free right now (and under
`gpu_memory_threshold_mb`; see `engine.memory`), and an out-of-memory error halves it and
retries the same windows, so a job fails only when a single window cannot fit.

What stock transcribe does per window is kept per window: the temperature fallback ladder
(only the windows that fail the compression-ratio or log-prob guard are decoded again, still
batched, reusing their encoder output), the no-speech skip, segment timestamps and word
timing. What it cannot keep is conditioning each window on the previous window's text,
since batched windows are decoded at the same time; the initial prompt is given to all.
"""
from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import whisper
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer

from .audio import SAMPLE_RATE
from .chunking import Window, is_silent
from .fast_decode import decode as fast_decode
from .memory import fit_batch_size, read_gpu_memory, window_cost_mb
from .results import Segment, Word

log = logging.getLogger(__name__)

# Every forward pass on a shared model goes through this lock. openai-whisper's decoder
# fills its kv-cache through forward hooks installed on the model itself, and word timing
# switches SDPA off for the whole MultiHeadAttention class, so two threads running a model
# at once would mix each other's caches. Jobs still overlap everything else (audio
# decoding, mel computation, stitching); on one GPU the forward passes queue anyway.
MODEL_LOCK = threading.Lock()

TIME_PER_TOKEN = 0.02  # seconds per timestamp token step (whisper's input stride 2 * 10 ms hop)


class WindowTooLarge(RuntimeError):
    """Even a single window does not fit in GPU memory."""


@dataclass(frozen=True)
class DecodeOptions:
    task: str = "transcribe"  # transcribe | translate (to English)
    language: Optional[str] = None  # language code; None = detect once, on the first window with speech
    initial_prompt: Optional[str] = None  # context text given to every window
    temperatures: Tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fallback ladder, first = greedy
    max_new_tokens: int = 224  # cap on tokens sampled per window
    compression_ratio_threshold: Optional[float] = 2.4  # above: too repetitive, decode hotter
    logprob_threshold: Optional[float] = -1.0  # below: too unsure, decode hotter
    no_speech_threshold: Optional[float] = 0.6  # above (and unsure): the window is silence
    batch_size: int = 8  # windows per forward pass; on CUDA at most what free memory allows, halved on OOM
    word_timestamps: bool = False  # per-word times through cross-attention alignment (slower)
    silence_threshold_db: float = -50.0  # windows quieter than this are skipped without decoding


@dataclass
class WindowsDecoded:
    segments: List[List[Segment]]  # per window, times relative to the window's start
    language: str
    windows_decoded: int  # windows that went through the model (silent ones are skipped)
    tokens_decoded: int  # tokens sampled, fallback re-decodes included


Decoder = Callable[[Whisper, torch.Tensor, DecodingOptions], List[DecodingResult]]


class BatchTranscriber:
    """Decodes the windows of one recording on one model.

    `decoder` has `whisper.decode`'s signature; it is a parameter so tests can put an
    allocation failure in front of it and watch the batch shrink. `memory_threshold_mb`
    (the config's `gpu_memory_threshold_mb`) caps what the batches may bring the GPU to.
    """

    def __init__(self, model: Whisper, fp16: bool, decoder: Decoder = fast_decode,
                 lock: threading.Lock = MODEL_LOCK, memory_threshold_mb: Optional[float] = None):
        self.model = model
        self.fp16 = fp16
        self.dtype = torch.float16 if fp16 else torch.float32
        self._decode = decoder
        self._lock = lock
        self.memory_threshold_mb = memory_threshold_mb

    def transcribe(self, audio: np.ndarray, windows: Sequence[Window], options: DecodeOptions,
                   on_progress: Callable[[int, int], None] = lambda done, total: None,
                   checkpoint: Callable[[], None] = lambda: None) -> WindowsDecoded:
        """Decode every window of `audio`; `checkpoint()` runs between batches and may raise
        to stop the job (cancellation)."""
        total = len(windows)
        segments: List[List[Segment]] = [[] for _ in windows]
        speech = [w for w in windows if not is_silent(audio[w.start:w.end], options.silence_threshold_db)]
        done = total - len(speech)
        on_progress(done, total)
        language = options.language if self.model.is_multilingual else "en"
        tokenizer: Optional[Tokenizer] = None
        tokens_decoded = 0
        batch_size = options.batch_size  # lowered for good only by an out-of-memory error
        position = 0
        while position < len(speech):
            checkpoint()
            batch = speech[position:position + batch_size]
            mels = self._mels(audio, batch)
            with self._lock:
                if language is None:
                    language = self._detect_language(mels[:1])
                    log.info("Detected language: %s", language)
                if tokenizer is None:
                    tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                                              language=language, task=options.task)
                # Measured under the lock: another job's batch has finished and freed its memory.
                fitting = self._fit(batch_size, options)
                results, sampled, fitted = self._decode_with_fallback(mels, options, language, fitting)
                if fitted < fitting:
                    batch_size = fitted
                tokens_decoded += sampled
                for window, mel, result in zip(batch, mels, results):
                    if not self._is_no_speech(result, options):
                        segments[window.index] = self._segments(result, window, tokenizer, mel, options)
            position += len(batch)
            done += len(batch)
            on_progress(done, total)
        return WindowsDecoded(segments, language or "en", len(speech), tokens_decoded)

    # -- mel front end -------------------------------------------------------------------
    def _mels(self, audio: np.ndarray, batch: Sequence[Window]) -> torch.Tensor:
        """(B, n_mels, 3000) log-mels, computed on the model's device window by window
        (whisper normalises each spectrogram by its own maximum, so windows must not be
        computed as one tensor)."""
        device = next(self.model.parameters()).device
        mels = []
        for window in batch:
            samples = whisper.pad_or_trim(torch.from_numpy(audio[window.start:window.end]))
            mels.append(whisper.log_mel_spectrogram(samples, n_mels=self.model.dims.n_mels, device=device))
        return torch.stack(mels).to(self.dtype)

    def _fit(self, batch_size: int, options: DecodeOptions) -> int:
        device = next(self.model.parameters()).device
        return fit_batch_size(batch_size, self.model.dims, device, 2 if self.fp16 else 4, options.max_new_tokens,
                              self.memory_threshold_mb, self._prompt_tokens(options))

    def _prompt_tokens(self, options: DecodeOptions) -> int:
        if not options.initial_prompt:
            return 0
        return min(len(whisper.tokenizer.get_tokenizer(self.model.is_multilingual).encode(" " + options.initial_prompt)),
                   self.model.dims.n_text_ctx // 2)

    def _detect_language(self, mel: torch.Tensor) -> str:
        _, probs = self.model.detect_language(mel)
        return max(probs[0], key=probs[0].get)

    # -- decoding ------------------------------------------------------------------------
    def _decode_with_fallback(self, mels: torch.Tensor, options: DecodeOptions, language: str,
                              batch_size: int) -> Tuple[List[DecodingResult], int, int]:
        """Greedy first; windows that fail a guard are decoded again at the next temperature.
        Returns the results, the tokens sampled and the batch size that fitted."""
        results: List[Optional[DecodingResult]] = [None] * len(mels)
        pending = list(range(len(mels)))
        inputs = mels
        sampled = 0
        for temperature in options.temperatures:
            decoding = DecodingOptions(
                task=options.task, language=language, temperature=temperature,
                sample_len=options.max_new_tokens, prompt=options.initial_prompt, fp16=self.fp16,
            )
            decoded, batch_size = self._decode_fitting(inputs[pending], decoding, batch_size)
            for index, result in zip(pending, decoded):
                results[index] = result
                sampled += len(result.tokens)
            pending = [i for i in pending if self._needs_fallback(results[i], options)]
            if not pending:
                break
            if inputs is mels:  # reuse the encoder output for the hotter re-decodes
                inputs = torch.stack([r.audio_features for r in results])
        return results, sampled, batch_size

    def _decode_fitting(self, inputs: torch.Tensor, decoding: DecodingOptions,
                        batch_size: int) -> Tuple[List[DecodingResult], int]:
        """Decode in slices of `batch_size`, halving it whenever CUDA runs out of memory."""
        results: List[DecodingResult] = []
        start = 0
        while start < len(inputs):
            part = inputs[start:start + batch_size]
            try:
                results.extend(self._decode(self.model, part, decoding))
                start += len(part)
                continue
            except torch.OutOfMemoryError:
                pass
            # Out of the except block, the traceback no longer holds the failed attempt's
            # tensors, so emptying the cache really hands their memory back.
            _free_cached_memory()
            if batch_size == 1:
                raise WindowTooLarge(self._too_large_message(decoding)) from None
            batch_size = max(1, batch_size // 2)
            log.warning("CUDA out of memory: retrying these windows with batch_size=%d", batch_size)
        return results, batch_size

    def _too_large_message(self, decoding: DecodingOptions) -> str:
        message = ("GPU out of memory while decoding a single 30 s window, so no batch size can work: "
                   "free GPU memory (other processes, other models) or use a smaller model")
        device = next(self.model.parameters()).device
        if device.type == "cuda":
            need = window_cost_mb(self.model.dims, 2 if self.fp16 else 4, decoding.sample_len or 224)
            message += f" (a window needs about {need:.0f} MB; {read_gpu_memory(device).free_mb:.0f} MB are free)"
        return message

    @staticmethod
    def _needs_fallback(result: DecodingResult, options: DecodeOptions) -> bool:
        """The same guards as stock `whisper.transcribe`, per window."""
        too_repetitive = (options.compression_ratio_threshold is not None
                          and result.compression_ratio > options.compression_ratio_threshold)
        too_unsure = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
        silent = (options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold
                  and too_unsure)
        return (too_repetitive or too_unsure) and not silent

    @staticmethod
    def _is_no_speech(result: DecodingResult, options: DecodeOptions) -> bool:
        if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
            return False
        confident = options.logprob_threshold is not None and result.avg_logprob > options.logprob_threshold
        return not confident

    # -- tokens to segments --------------------------------------------------------------
    def _segments(self, result: DecodingResult, window: Window, tokenizer: Tokenizer,
                  mel: torch.Tensor, options: DecodeOptions) -> List[Segment]:
        """Split a window's tokens at timestamp pairs, as stock transcribe does.

        A window whose text runs past its last timestamp keeps that tail as a segment up to
        the window's end: stock transcribe would re-read it from the next seek, here the
        next window (which overlaps this one unless the seam is in a pause) and the
        stitcher take care of it.
        """
        duration = window.duration_s
        pieces = split_at_timestamps(result.tokens, tokenizer.timestamp_begin, tokenizer.eot, duration)
        segments = [
            Segment(
                id=i, start=start, end=end, text=tokenizer.decode(text_tokens), tokens=text_tokens,
                temperature=result.temperature, avg_logprob=result.avg_logprob,
                compression_ratio=result.compression_ratio, no_speech_prob=result.no_speech_prob,
            )
            for i, (start, end, text_tokens) in enumerate(pieces)
            if text_tokens
        ]
        if options.word_timestamps and segments:
            self._add_words(segments, mel, window, tokenizer)
        return segments

    def _add_words(self, segments: List[Segment], mel: torch.Tensor, window: Window, tokenizer: Tokenizer) -> None:
        from whisper.timing import add_word_timestamps

        dicts = [{"seek": 0, "start": s.start, "end": s.end, "tokens": s.tokens} for s in segments]
        frames = min(mel.shape[-1], round(window.duration_s * SAMPLE_RATE / whisper.audio.HOP_LENGTH))
        add_word_timestamps(segments=dicts, model=self.model, tokenizer=tokenizer, mel=mel,
                            num_frames=frames, last_speech_timestamp=0.0)
        for segment, d in zip(segments, dicts):
            segment.start, segment.end = d["start"], d["end"]
            segment.words = [Word(w["word"], w["start"], w["end"], float(w["probability"])) for w in d["words"]]


def split_at_timestamps(tokens: Sequence[int], timestamp_begin: int, eot: int,
                        window_duration: float) -> List[Tuple[float, float, List[int]]]:
    """Window-relative (start, end, text tokens) pieces of one decoded window."""
    def time_of(token: int) -> float:
        return min((token - timestamp_begin) * TIME_PER_TOKEN, window_duration)

    pieces: List[Tuple[float, float, List[int]]] = []
    start: Optional[float] = None  # opening timestamp of the piece being read
    last_time = 0.0  # text without an opening timestamp starts where the previous piece ended
    text: List[int] = []
    for token in tokens:
        if token >= timestamp_begin:
            time = time_of(token)
            if text:
                opened = last_time if start is None else start
                pieces.append((opened, max(opened, time), text))
                start, text = None, []
            else:
                start = time
            last_time = time
        elif token < eot:
            text.append(token)
    if text:  # the window ran out mid-segment: it lasts to the window's end
        pieces.append((last_time if start is None else start, window_duration, text))
    return pieces


def _free_cached_memory() -> None:
    gc.collect()  # whisper's kv-cache hooks leave reference cycles behind a failed decode
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
