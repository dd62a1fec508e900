"""A job as the worker runs it: what was asked (JobOptions) with the config's values filled in.

`Engine.prepare` checks the options against the model they name; `decoding_options` fills
what the user left to the server; `TranscriptionRequest` carries both, with the file's probe,
from `Engine.submit` to the job's thread (engine/job_runner.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from engine.audio.files import AudioInfo
from engine.decoding.options import TranscribeOptions
from engine.errors import InvalidRequest
from engine.job_options import JobOptions
from engine.languages import LANGUAGES
from engine.settings import Settings

AudioInput = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class TranscriptionRequest:
    """One job as the worker runs it."""

    audio: AudioInput  # path to anything ffmpeg reads, or float32 16 kHz mono samples
    model: str  # the configured value (whisper name or path) the model cache loads
    options: JobOptions  # what the user asked for, the model named by its id (Engine.prepare)
    decoding: TranscribeOptions  # `options` with the config's values filled in
    name: str = ""  # file name to show and to name downloads after
    info: AudioInfo | None = None  # the file's probe at submit, so the job does not probe it again


def refuse_unsupported(model_id: str, language: str | None, task: str) -> None:
    """InvalidRequest for what an English-only model cannot do (whisper would silently ignore
    the language and the task and write English anyway)."""
    if task == "translate":
        raise InvalidRequest(
            f"task: {model_id} is an English-only model and cannot translate; its transcript is "
            "English already (use task=transcribe), or choose a multilingual model for speech in "
            "other languages"
        )
    if language not in (None, "en"):
        raise InvalidRequest(
            f"language: {model_id} is an English-only model and cannot transcribe "
            f"{LANGUAGES.get(language, language).title()}; choose a multilingual model, or "
            "language en (or detection)"
        )


def decoding_options(options: JobOptions, s: Settings) -> TranscribeOptions:
    """What the decoder does for `options`: the user's values, the config's where none was given."""
    return TranscribeOptions(
        task=options.task or s.task,
        language=options.language if options.language is not None else s.language,
        initial_prompt=options.initial_prompt or s.initial_prompt,
        condition_on_previous_text=s.condition_on_previous_text,
        temperatures=options.temperature or tuple(s.temperatures),
        max_new_tokens=options.max_new_tokens or s.max_new_tokens,
        compression_ratio_threshold=s.compression_ratio_threshold,
        logprob_threshold=s.logprob_threshold,
        no_speech_threshold=s.no_speech_threshold,
        word_timestamps=options.word_timestamps or options.diarize,  # speakers are assigned word by word
        logprobs=options.logprobs,
        hallucination_silence_threshold=s.hallucination_silence_threshold,
        silence_threshold_db=s.silence_threshold_db,
        vad=s.vad if options.vad is None else options.vad,
    )
