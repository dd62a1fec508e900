"""OpenAI's error shape and the one table that maps the engine's and the job store's errors to it.

    {"error": {"message", "type", "param", "code"}} with an honest status code

`ApiError` is raised anywhere in a route; `api_error(exc)` turns an engine or job manager
exception into one, by class (ERROR_KINDS: a subclass not listed takes its nearest listed
base's). /metrics labels refusals by `ApiError.reason`, a handful of fixed words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from engine import (
    AudioError,
    AudioFileNotFound,
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    EngineError,
    FfmpegMissing,
    InvalidRequest,
    JobCancelled,
    ModelLoadError,
    ModelNotOffered,
    NotAudio,
    QueueFull,
    TruncatedAudio,
    WindowTooLarge,
    WorkerShutDown,
    error_class,
)
from jobs import DiskFull, JobInterrupted, OutOfDiskSpace, StorageError


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
