"""OpenAI's response shapes, built from a `TranscriptionResult` (the official `openai` Python
package parses what these functions build), and a durable job's as /v1/jobs answers it:

- json          {"text", "usage"} (and "logprobs" with include[]=logprobs)
- verbose_json  {"task", "language" (full name, "english"), "duration", "text",
                 "segments": [{id, seek, start, end, text, tokens, temperature, avg_logprob,
                 compression_ratio, no_speech_prob}], "words": [{word, start, end}], "usage"}
- text          the transcript as one paragraph, as OpenAI sends it
- srt, vtt      subtitles, written by openai-whisper's own writers (output.formats)
- diarized_json {"task", "duration", "text", "segments": [{type: "transcript.text.segment", id,
                 start, end, text, speaker}], "usage"}: speakers A, B, ... or known names
- rttm          not OpenAI's: the speaker turns (a diarized job's)

The streamed events (stream=true) are ui/routes/streaming.py's, from the same segment shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from engine import LANGUAGES, JobOptions, Segment, TranscriptionResult
from jobs import JobInfo, JobRecord
from output import SubtitleOptions, has_speakers, render
from ui.openai_compat.errors import UNEXPECTED, error_body, kind_of_class, stored_error_class
from ui.openai_compat.form import TranscriptionForm

MEDIA_TYPES = {"text": "text/plain", "srt": "text/plain", "vtt": "text/vtt", "rttm": "text/plain"}


def language_name(code: str) -> str:
    """'en' -> 'english', as OpenAI's verbose_json reports it."""
    return LANGUAGES.get(code, code or "")


def usage(result: TranscriptionResult) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(result.duration)}


def verbose_json(result: TranscriptionResult, segments: bool = True, words: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": result.task,
        "language": language_name(result.language),
        "duration": float(result.duration),
        "text": result.text,
    }
    if segments:
        body["segments"] = [
            {
                "id": s.id,
                "seek": s.seek,  # frame where the segment's window starts, as whisper and OpenAI give it
                "start": float(s.start),
                "end": float(s.end),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": float(s.temperature),
                "avg_logprob": float(s.avg_logprob),
                "compression_ratio": float(s.compression_ratio),
                "no_speech_prob": float(s.no_speech_prob),
                **({"speaker": s.speaker} if s.speaker else {}),  # diarized only
            }
            for s in result.segments
        ]
    if words:
        body["words"] = [
            {
                "word": w.word.strip(),
                "start": float(w.start),
                "end": float(w.end),
                **({"speaker": w.speaker} if w.speaker else {}),
            }
            for s in result.segments
            for w in (s.words or [])
        ]
    body["usage"] = usage(result)
    return body


def diarized_segment(segment: Segment) -> dict[str, Any]:
    """A segment as OpenAI's diarized_json and its transcript.text.segment event give it."""
    return {
        "type": "transcript.text.segment",
        "id": f"seg_{segment.id}",  # OpenAI's ids are strings
        "start": float(segment.start),
        "end": float(segment.end),
        "text": segment.text.strip(),
        "speaker": segment.speaker or "A",  # a recording without speech found has no turns: one speaker
    }


def diarized_json(result: TranscriptionResult) -> dict[str, Any]:
    return {
        "task": result.task,
        "duration": float(result.duration),
        "text": result.text,
        "segments": [diarized_segment(s) for s in result.segments],
        "usage": usage(result),
    }


LOGPROB_FLOOR = -1e4  # stands in for -inf (a token the logit rules had ruled out), which JSON cannot carry


def segment_logprobs(segment: Segment) -> list[dict[str, Any]]:
    """OpenAI's per-token log-probabilities of a segment's text tokens: {token, logprob, bytes},
    the tokens exactly as decoded (the first one keeps its leading space, as its bytes do)."""
    return [
        {
            "token": p.token,
            "logprob": float(p.logprob) if math.isfinite(p.logprob) else LOGPROB_FLOOR,
            "bytes": list(p.bytes),
        }
        for p in (segment.logprobs or [])
    ]


def result_logprobs(result: TranscriptionResult) -> list[dict[str, Any]]:
    return [p for s in result.segments for p in segment_logprobs(s)]


def transcription_response(
    result: TranscriptionResult,
    form: TranscriptionForm,
    headers: dict[str, str] | None = None,
    subtitles: SubtitleOptions | None = None,
) -> Response:
    fmt = form.response_format
    if fmt == "json":
        body: dict[str, Any] = {"text": result.text}
        if form.logprobs:
            body["logprobs"] = result_logprobs(result)
        body["usage"] = usage(result)
        return JSONResponse(body, headers=headers)
    if fmt == "verbose_json":
        segments = not form.timestamp_granularities or "segment" in form.timestamp_granularities
        return JSONResponse(verbose_json(result, segments, form.words), headers=headers)
    if fmt == "diarized_json":
        return JSONResponse(diarized_json(result), headers=headers)
    if fmt == "text" and form.diarize and has_speakers(result):  # our diarize field: a paragraph a turn
        return PlainTextResponse(render(result, "txt"), media_type=MEDIA_TYPES[fmt], headers=headers)
    # srt/vtt layout from the settings
    text = result.text + "\n" if fmt == "text" else render(result, fmt, subtitles=subtitles)
    return PlainTextResponse(text, media_type=MEDIA_TYPES[fmt], headers=headers)


def job_body(
    info: JobInfo, with_result: bool = True, public_model: Callable[[str | None], str] = lambda m: m or ""
) -> dict[str, Any]:
    """A job as GET /v1/jobs/{id} answers it; `public_model` names the model by its id
    (engine.model_names), for rows stored with a path by older versions."""
    record: JobRecord = info.record
    options: JobOptions = record.options
    body: dict[str, Any] = {
        "id": record.id,
        "object": "transcription.job",
        "status": info.status,
        "name": record.name,
        "created_at": record.created_at,
        "started_at": info.started_at,
        "finished_at": record.finished_at if info.finished else None,
        "model": public_model(options.model),
        "task": options.task or "transcribe",
        # asked for, or once done the one spoken (detected when none was asked for)
        "language": (record.result or {}).get("language") or options.language,
        "queue_position": info.queue_position,
        "progress": round(info.progress, 4),
        "seconds_done": round(info.seconds_done, 2),
        "seconds_total": round(info.seconds_total, 2),
        "attempts": record.attempts,
        # a diarized job's options as asked, and the names given its speakers ({"A": "Ada"})
        **(
            {**_speaker_options(options), "speaker_names": dict(record.speaker_names)}
            if options.diarize
            else {}
        ),
        "error": None,
        "result": None,
    }
    if info.status in ("failed", "cancelled"):
        cls = stored_error_class(record.error_type or "")
        kind = kind_of_class(cls) if cls is not None else UNEXPECTED
        body["error"] = error_body(record.error or info.status, kind.type, kind.code)["error"]
    if with_result and info.status == "done":
        result = info.result()
        if result is not None:
            body["result"] = verbose_json(result, True, options.word_timestamps)
    return body


def _speaker_options(options: JobOptions) -> dict[str, Any]:
    """A diarized job's speaker options as it was asked (the clips themselves are not echoed)."""
    return {
        "diarize": True,
        "num_speakers": options.num_speakers,
        "min_speakers": options.min_speakers,
        "max_speakers": options.max_speakers,
        "known_speaker_names": [reference.name for reference in options.known_speakers],
    }


def content_disposition(filename: str) -> str:
    """attachment; filename=... that is safe for any name (RFC 6266 filename* for non-ASCII)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
