"""The options one job is transcribed with, and whisper.transcribe's guards that read them."""

from __future__ import annotations

from dataclasses import dataclass

from whisper.decoding import DecodingResult


@dataclass(frozen=True)
class TranscribeOptions:
    """What `whisper.transcribe` takes as keywords, for one job, the config's values filled in.

    Not whisper's `DecodingOptions`, which are one decode call's (one temperature, one prompt):
    the decode loop and the fallback derive those from these for every decode they run."""

    task: str = "transcribe"  # transcribe | translate (to English)
    language: str | None = None  # language code; None = detect once, on the first window with speech
    initial_prompt: str | None = None  # context text for the first window of every section
    # each window sees the previous window's text as its prompt (whisper's default)
    condition_on_previous_text: bool = True
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fallback ladder, first = greedy
    max_new_tokens: int = 224  # cap on tokens sampled per window
    compression_ratio_threshold: float | None = 2.4  # above: too repetitive, decode hotter
    logprob_threshold: float | None = -1.0  # below: too unsure, decode hotter
    no_speech_threshold: float | None = 0.6  # above (and unsure): the window is silence
    word_timestamps: bool = False  # per-word times through cross-attention alignment (slower)
    # keep each text token's log-probability on its segment (the API's include[]=logprobs)
    logprobs: bool = False
    # with word timestamps: skip improbable segments with this much silence around them (s)
    hallucination_silence_threshold: float | None = None
    silence_threshold_db: float = -50.0  # windows quieter than this are skipped without decoding
    vad: bool = False  # decode only the stretches the voice activity detector calls speech (engine.audio.vad)


def needs_fallback(result: DecodingResult, options: TranscribeOptions) -> bool:
    """Whether to decode the window again, hotter: `whisper.transcribe`'s guards."""
    too_repetitive = (
        options.compression_ratio_threshold is not None
        and result.compression_ratio > options.compression_ratio_threshold
    )
    too_unsure = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
    silent = (
        options.no_speech_threshold is not None
        and result.no_speech_prob > options.no_speech_threshold
        and too_unsure
    )
    return (too_repetitive or too_unsure) and not silent


def is_no_speech(result: DecodingResult, options: TranscribeOptions) -> bool:
    """Whether the window is silence and gives no text: `whisper.transcribe`'s skip."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    confident = options.logprob_threshold is not None and result.avg_logprob > options.logprob_threshold
    return not confident
