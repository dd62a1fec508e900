"""JobRunner: one job's way from file to result, on the worker's thread.

    audio (ffmpeg) -> speech (Silero VAD) -> sections -> language -> SectionStreams
    -> the device's DecodeLoop (word timing on each window) -> TranscriptionResult
    -> speakers (a `diarize` job: engine.diarization, after the Whisper lease is returned)

The job is placed on one device (engine.replicas) and stays there; its models are leased
from that device's cache for as long as each step needs them, so Release memory can take
the Whisper model while the speaker encoder runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES
from whisper.tokenizer import get_tokenizer

from engine.audio.files import SAMPLE_RATE, load_audio
from engine.audio.sections import plan_sections
from engine.audio.vad import SpeechMap, VadOptions, speech_map, speech_probabilities
from engine.decoding.options import TranscribeOptions
from engine.decoding.stream import SectionStream, log_mel_spectrogram
from engine.diarization import diarize
from engine.job_options import JobOptions
from engine.replicas import DeviceReplica, DeviceRouter
from engine.request import TranscriptionRequest, refuse_unsupported
from engine.results import TranscriptionResult
from engine.settings import Settings
from engine.worker import JobHandle

log = logging.getLogger(__name__)


def completed_in_order(streams: Sequence[SectionStream]) -> list:
    """The segments of `streams` (sections in recording order) that no later decode can precede:
    every segment of each finished section, then those so far of the first unfinished one.
    The job's handle calls it at each progress report, between the decode loop's steps."""
    segments: list = []
    for stream in streams:
        segments.extend(list(stream.segments))
        if not stream.finished:
            break
    return segments


class JobRunner:
    """What the worker's threads call for each job (`runner(request, handle)`).

    `on_lease(model)` is told each time a job holds its Whisper model (the facade's model state)."""

    def __init__(self, settings: Settings, devices: DeviceRouter, on_lease: Callable[[str], None]):
        self.settings = settings
        self.devices = devices
        self.on_lease = on_lease

    def __call__(self, request: TranscriptionRequest, handle: JobHandle) -> TranscriptionResult:
        started = time.perf_counter()
        audio = self._samples(request)
        duration = len(audio) / SAMPLE_RATE
        handle.set_progress(0.0, duration)
        handle.checkpoint()
        options = request.decoding
        probs, speech = self._speech(audio) if options.vad else (None, None)
        heard = speech.keep(audio) if speech is not None else audio  # only the speech is decoded
        handle.checkpoint()
        with self.devices.place() as replica:
            result, sections, encode = self._transcribe(replica, request, handle, heard, speech, duration)
            transcribed = len(result.segments)
            if request.options.diarize:  # the Whisper lease is returned: Release memory may take it now
                handle.checkpoint()
                # diarization reads the whole recording, on its own finer speech regions
                result = self._diarize(replica, audio, result, request.options, probs, encode)
        result = replace(result, processing_s=time.perf_counter() - started)
        log.info(
            "Job %s: %.1f s of audio (%.1f s of it speech decoded) in %.1f s (%d sections, %d windows, "
            "%d segments)",
            handle.id,
            duration,
            len(heard) / SAMPLE_RATE,
            result.processing_s,
            sections,
            result.windows,
            transcribed,
        )
        return result

    def _samples(self, request: TranscriptionRequest) -> np.ndarray:
        if isinstance(request.audio, np.ndarray):
            return np.asarray(request.audio, dtype=np.float32)
        return load_audio(request.audio, max_duration_s=self.settings.max_audio_duration_s, info=request.info)

    def _transcribe(
        self,
        replica: DeviceReplica,
        request: TranscriptionRequest,
        handle: JobHandle,
        audio: np.ndarray,
        speech: SpeechMap | None,
        duration: float,
    ) -> tuple[TranscriptionResult, int, Callable[[str], list[int]]]:
        """The transcript of `audio` (the speech kept, times in the recording's through `speech`),
        the sections it was cut into, and the tokenizer's encoder (for word timing's tokens)."""
        s, options = self.settings, request.decoding

        def on_progress(done: float, total: float) -> None:  # in seconds of the recording, VAD or not
            handle.set_progress(done / total * duration if total else duration, duration)

        with replica.models.lease(request.model) as model:
            self.on_lease(request.model)
            sections = plan_sections(
                audio, s.batch_size, min_section_s=s.min_section_s, joins=speech.joins if speech else None
            )
            language = self._language(model, replica, request.options.model, audio, sections, options)
            tokenizer = get_tokenizer(
                model.is_multilingual, num_languages=model.num_languages, language=language, task=options.task
            )
            streams = [
                SectionStream(
                    audio[section.start : section.end],
                    section.start_s,
                    options,
                    tokenizer,
                    model.dims.n_mels,
                    speech,
                )
                for section in sections
            ]
            # for clients that stream the text (a diarized job's segments are final only at its end)
            handle.show_segments(lambda: completed_in_order(streams))
            replica.loop.run(
                model,
                streams,
                options,
                language,
                cancelled=handle.cancel_requested,
                on_progress=on_progress,
                streaming=handle.streams_text,
            )
        segments = [
            replace(segment, id=i)
            for i, segment in enumerate(segment for stream in streams for segment in stream.segments)
        ]
        result = TranscriptionResult(
            segments=segments,
            language=language,
            duration=duration,
            task=options.task,
            model=request.options.model,
            windows=sum(st.windows_decoded for st in streams),
            tokens_decoded=sum(st.tokens_decoded for st in streams),
            fallbacks=sum(st.fallbacks for st in streams),
        )
        return result, len(sections), tokenizer.encode

    def _diarize(
        self,
        replica: DeviceReplica,
        audio: np.ndarray,
        result: TranscriptionResult,
        options: JobOptions,
        probs: np.ndarray | None,
        encode: Callable[[str], list[int]],
    ) -> TranscriptionResult:
        """`result` with its speakers (engine.diarization), by the speaker encoder leased on the
        job's device: loaded once, kept in the cache, released like the Whisper models."""
        started = time.perf_counter()
        with replica.models.lease(self.settings.speaker_model) as encoder:
            labelled = diarize(
                audio,
                result,
                options.diarization(),
                encoder,
                speech_probs=probs,
                threshold_mb=self.settings.gpu_memory_threshold_mb,
                encode=encode,
            )
        log.info(
            "Diarization: %d speakers, %d segments (from %d) in %.2f s",
            len({seg.speaker for seg in labelled.segments}),
            len(labelled.segments),
            len(result.segments),
            time.perf_counter() - started,
        )
        return labelled

    def _speech(self, audio: np.ndarray) -> tuple[np.ndarray, SpeechMap]:
        """Silero's speech probabilities (diarization reuses them) and the speech they find."""
        s = self.settings
        started = time.perf_counter()
        vad = VadOptions(s.vad_threshold, s.vad_min_silence_s, s.vad_speech_pad_s)
        probs = speech_probabilities(audio)
        speech = speech_map(audio, vad, probs)
        log.info(
            "Voice activity: %.1f s of speech in %.1f s, %d stretches (%.1f s)",
            speech.speech_samples / SAMPLE_RATE,
            len(audio) / SAMPLE_RATE,
            len(speech.chunks),
            time.perf_counter() - started,
        )
        return probs, speech

    def _language(
        self,
        model,
        replica: DeviceReplica,
        model_id: str,
        audio: np.ndarray,
        sections,
        options: TranscribeOptions,
    ) -> str:
        """The request's language; English for an English-only model; else detected once,
        as whisper.transcribe does, from the first 30 s of the recording."""
        if not model.is_multilingual:  # first loaded by this job: the check `prepare` could not do
            refuse_unsupported(model_id, options.language, options.task)
        if options.language is not None:
            return options.language
        if not model.is_multilingual or not sections:
            return "en"
        first = sections[0]
        mel = log_mel_spectrogram(audio[first.start : first.end], model.dims.n_mels, padding=N_SAMPLES)
        mel = (
            whisper.pad_or_trim(mel, N_FRAMES)
            .to(replica.plan.device)
            .to(torch.float16 if replica.plan.fp16 else torch.float32)
        )
        with replica.lock, torch.inference_mode():
            _, probs = model.detect_language(mel)
        language = max(probs, key=probs.get)
        log.info("Detected language: %s", language)
        return language
