"""OpenAI's audio API, as shapes: the request's form fields, the responses, the errors.

Kept apart from the routes (ui/routes/) so the mapping can be read and tested on its
own. The field names and response shapes follow OpenAI's `POST /v1/audio/transcriptions`
(the official `openai` Python package parses what these functions build):

- json          {"text", "usage"}
- verbose_json  {"task", "language" (full name, "english"), "duration", "text",
                 "segments": [{id, seek, start, end, text, tokens, temperature, avg_logprob,
                 compression_ratio, no_speech_prob}], "words": [{word, start, end}], "usage"}
- text          the transcript as one paragraph, as OpenAI sends it
- srt, vtt      subtitles, written by openai-whisper's own writers (output.formats)
- errors        {"error": {"message", "type", "param", "code"}} with an honest status code
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine import (
    LANGUAGES,
    AudioError,
    AudioFileNotFound,
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    EngineError,
    FfmpegMissing,
    InvalidRequest,
    JobCancelled,
    JobOptions,
    ModelLoadError,
    ModelNotOffered,
    NotAudio,
    QueueFull,
    Segment,
    TranscriptionResult,
    TruncatedAudio,
    WindowTooLarge,
    WorkerShutDown,
    error_class,
)
from jobs import DiskFull, JobInfo, JobInterrupted, JobRecord, OutOfDiskSpace, StorageError
from output import SubtitleOptions, render

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
OPENAI_DEFAULT_MODEL = "whisper-1"  # what OpenAI clients send; served by the configured default model
MEDIA_TYPES = {"text": "text/plain", "srt": "text/plain", "vtt": "text/vtt"}  # OpenAI's own choices


# --- errors ---------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in OpenAI's shape; raise it anywhere in a route."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status  # HTTP status code
        self.message = message  # a sentence for the person reading the client's error
        self.type = type  # OpenAI's error "type": invalid_request_error | requests | server_error
        self.code = code  # short machine-readable reason, e.g. "file_too_large"
        self.param = param  # the request field at fault, if one is
        self.headers = headers or {}  # e.g. Retry-After
        self.refusal = True  # a request refused; False for a job that was accepted and then failed

    @property
    def reason(self) -> str:
        """Why it was refused, in a few fixed words: the label of /metrics' refusal counter."""
        if self.code in REFUSAL_REASONS:
            return REFUSAL_REASONS[self.code]
        return STATUS_REASONS.get(self.status, "invalid" if 400 <= self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class ErrorKind:
    status: int  # HTTP status code
    code: str  # OpenAI-style error code
    type: str = "invalid_request_error"  # OpenAI's error type


# The errors a front end answers, by class; a subclass not listed takes its nearest listed base's.
ERROR_KINDS: dict[type, ErrorKind] = {
    FfmpegMissing: ErrorKind(500, "ffmpeg_missing", "server_error"),
    NotAudio: ErrorKind(400, "invalid_file_format"),
    EmptyAudio: ErrorKind(400, "empty_file"),
    TruncatedAudio: ErrorKind(400, "truncated_file"),
    AudioTooLong: ErrorKind(400, "audio_too_long"),
    AudioTooShort: ErrorKind(400, "audio_too_short"),
    AudioFileNotFound: ErrorKind(400, "file_not_found"),
    AudioError: ErrorKind(400, "invalid_file"),
    ModelNotOffered: ErrorKind(400, "model_not_found"),
    InvalidRequest: ErrorKind(400, "invalid_value"),
    FileNotFoundError: ErrorKind(400, "file_not_found"),
    QueueFull: ErrorKind(429, "rate_limit_exceeded", "requests"),
    ModelLoadError: ErrorKind(503, "model_not_available", "server_error"),
    WorkerShutDown: ErrorKind(503, "shutting_down", "server_error"),
    WindowTooLarge: ErrorKind(503, "out_of_memory", "server_error"),
    JobCancelled: ErrorKind(409, "cancelled"),
    OutOfDiskSpace: ErrorKind(507, "insufficient_storage", "server_error"),
    DiskFull: ErrorKind(507, "insufficient_storage", "server_error"),
    StorageError: ErrorKind(503, "storage_unavailable", "server_error"),
    JobInterrupted: ErrorKind(500, "job_interrupted", "server_error"),
}
UNEXPECTED = ErrorKind(500, "internal_error", "server_error")

# Refusal reasons for /metrics: a handful of fixed label values, never a client's text.
REFUSAL_REASONS: dict[str, str] = {
    "invalid_api_key": "unauthorized",
    "file_too_large": "too_large",
    "rate_limit_exceeded": "queue_full",
    "invalid_file_format": "not_audio",
    "empty_file": "not_audio",
    "truncated_file": "not_audio",
    "invalid_file": "not_audio",
    "audio_too_long": "too_long",
    "audio_too_short": "too_short",
    "model_not_found": "unknown_model",
    "model_loading": "model_unavailable",
    "model_failed": "model_unavailable",
    "model_not_available": "model_unavailable",
    "shutting_down": "shutting_down",
    "unsupported_language": "unsupported",
    "unsupported_value": "unsupported",
    "insufficient_storage": "out_of_space",
    "request_timeout": "timeout",
    "client_disconnected": "client_left",
}
STATUS_REASONS: dict[int, str] = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "queue_full",
    503: "unavailable",
    507: "out_of_space",
}


def kind_of(error: BaseException) -> ErrorKind:
    return kind_of_class(type(error))


def kind_of_class(cls: type) -> ErrorKind:
    return next((ERROR_KINDS[base] for base in cls.__mro__ if base in ERROR_KINDS), UNEXPECTED)


def stored_error_class(name: str) -> type | None:
    """The class a stored job's `error_type` names: an engine error, or one of the table's."""
    return error_class(name) or next((cls for cls in ERROR_KINDS if cls.__name__ == name), None)


def api_error(
    error: BaseException, headers: dict[str, str] | None = None, accepted: bool = False
) -> ApiError:
    """The ApiError for an exception from the engine or the job manager; `accepted` when the
    job had been accepted (then it is a failed job in /metrics, not a refused request)."""
    kind = kind_of(error)
    message = str(error) or type(error).__name__
    param = error.param if isinstance(error, EngineError) else ("file" if kind.status == 400 else None)
    param = {"initial_prompt": "prompt"}.get(param, param)  # OpenAI's name for the option
    if kind is UNEXPECTED:
        message = f"Transcription failed: {type(error).__name__}: {message}"
    mapped = ApiError(kind.status, message, type=kind.type, code=kind.code, param=param, headers=headers)
    mapped.refusal = not accepted
    return mapped


# --- the request's form -------------------------------------------------------------------------


class TranscriptionForm(BaseModel):
    """The multipart fields of /v1/audio/transcriptions, /translations and /v1/jobs, besides `file`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # a model id from /v1/models; whisper-1, gpt-4o(-mini)-transcribe or empty = the default
    model: str | None = None
    language: str | None = None  # ISO-639-1 code (or a name) of the speech; empty = detect
    prompt: str | None = None  # context text for every window: names, spelling, style
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    # 0 or absent = the server's fallback ladder (greedy, hotter only where a guard fails), as
    # OpenAI documents; above 0 = sample at exactly this temperature
    temperature: float | None = Field(None, ge=0, le=1)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=list)
    task: Literal["transcribe", "translate"] | None = None  # /v1/jobs only; the audio routes imply it
    # true = server-sent events as segments complete (transcriptions only; ui/routes/streaming.py)
    stream: bool = False
    # "logprobs": per-token log-probabilities (json only)
    include: list[Literal["logprobs"]] = Field(default_factory=list)
    # not OpenAI's: false = decode the non-speech too (voice activity detection off); absent = the config's
    # `vad`
    vad: bool | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_absent(cls, value, info):
        # HTML forms and curl -F send "" for a field left empty.
        if value == "" and info.field_name not in ("timestamp_granularities", "stream", "include"):
            return None
        return value

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities

    @property
    def logprobs(self) -> bool:
        return "logprobs" in self.include

    def job_options(self, task: str) -> JobOptions:
        """The job this form asks for; `task` is the route's (or, for /v1/jobs, the form's)."""
        return JobOptions(
            model=self.model,
            language=self.language,
            task=task,
            initial_prompt=self.prompt,
            temperature=self.temperature or None,
            word_timestamps=self.words,
            logprobs=self.logprobs,
            vad=self.vad,
        )


def parse_form(fields: dict[str, list[str]], job: bool = False, streams: bool = True) -> TranscriptionForm:
    """Validate the text fields; ApiError 400 naming the field when one is wrong.

    `job`: for /v1/jobs, where response_format does not apply (the result is fetched later
    in any format), so word timestamps do not depend on it. `streams`: whether the route
    can answer stream=true (OpenAI streams transcriptions only)."""
    values: dict[str, Any] = {k: v[-1] for k, v in fields.items() if v}
    for name in ("timestamp_granularities", "include"):  # list fields, "name[]" as OpenAI's client sends them
        values.pop(f"{name}[]", None)
        values[name] = [v for v in fields.get(f"{name}[]", []) + fields.get(name, []) if v]
    try:
        form = TranscriptionForm(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise ApiError(
            400, f"{param}: {first['msg']} (got {first.get('input')!r})", code="invalid_value", param=param
        ) from None
    if form.stream and job:
        raise ApiError(
            400,
            "stream: /v1/jobs answers at once with a job to poll (GET /v1/jobs/{id}); send "
            "stream=false, or stream from /v1/audio/transcriptions",
            code="unsupported_value",
            param="stream",
        )
    if form.stream and not streams:
        raise ApiError(
            400,
            "stream: only /v1/audio/transcriptions streams (OpenAI's translations do not); send stream=false",
            code="unsupported_value",
            param="stream",
        )
    if form.stream and form.response_format not in ("json", "text"):
        raise ApiError(
            400,
            "stream: a stream carries text events; use response_format json or text with stream=true",
            code="unsupported_value",
            param="response_format",
        )
    if form.logprobs and job:
        raise ApiError(
            400,
            "include: logprobs are returned only by /v1/audio/transcriptions (with "
            "response_format=json), not by /v1/jobs",
            code="unsupported_value",
            param="include",
        )
    if form.logprobs and form.response_format != "json":
        raise ApiError(
            400,
            "include: logprobs are only returned with response_format=json (as OpenAI does)",
            code="unsupported_value",
            param="include",
        )
    if form.words and form.response_format != "verbose_json" and not job:
        raise ApiError(
            400,
            "timestamp_granularities: word timestamps need response_format=verbose_json",
            code="invalid_value",
            param="timestamp_granularities",
        )
    return form


# --- responses ------------------------------------------------------------------------------------


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
            }
            for s in result.segments
        ]
    if words:
        body["words"] = [
            {"word": w.word.strip(), "start": float(w.start), "end": float(w.end)}
            for s in result.segments
            for w in (s.words or [])
        ]
    body["usage"] = usage(result)
    return body


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


def content_disposition(filename: str) -> str:
    """attachment; filename=... that is safe for any name (RFC 6266 filename* for non-ASCII)."""
    from urllib.parse import quote

    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def split_fields(items: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """Form items -> {name: [values]} for the text fields only."""
    fields: dict[str, list[str]] = {}
    for key, value in items:
        if isinstance(value, str):
            fields.setdefault(key, []).append(value)
    return fields
