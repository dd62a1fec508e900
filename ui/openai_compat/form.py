"""The request's form: the multipart text fields of /v1/audio/transcriptions, /translations and
/v1/jobs as one validated `TranscriptionForm`, and from it the job's `JobOptions`.

Field names follow OpenAI's `POST /v1/audio/transcriptions`, list fields as its client sends
them (`include[]`, `known_speaker_names[]`); the fields that are ours (vad, diarize, the
speaker counts) say so. A wrong field is an ApiError 400 naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine import DIARIZE_ALIAS, JobOptions
from ui.openai_compat.errors import ApiError

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json", "rttm")
OPENAI_DEFAULT_MODEL = "whisper-1"  # what OpenAI clients send; served by the configured default model


class TranscriptionForm(BaseModel):
    """The multipart fields of /v1/audio/transcriptions, /translations and /v1/jobs, besides `file`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # a model id from /v1/models; whisper-1, gpt-4o(-mini)-transcribe or empty = the default
    model: str | None = None
    language: str | None = None  # ISO-639-1 code (or a name) of the speech; empty = detect
    prompt: str | None = None  # context text for every window: names, spelling, style
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json", "rttm"] = "json"
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
    # not OpenAI's: true = speakers on every segment and word, in any format; absent = on only for
    # diarized_json, the gpt-4o-transcribe-diarize model or speaker fields; false with those = 400
    diarize: bool | None = None
    num_speakers: int | None = None  # not OpenAI's: exactly this many speakers (1-20); absent = estimated
    min_speakers: int | None = None  # not OpenAI's: at least this many when estimated
    max_speakers: int | None = None  # not OpenAI's: at most this many when estimated
    # OpenAI's: "auto" or server_vad options; accepted, and the engine's own VAD sections decide
    chunking_strategy: str | None = None
    known_speaker_names: list[str] = Field(default_factory=list)  # names for known_speaker_references[]
    # data URLs of 2-10 s clips, one per name, in order (ui/speaker_references.py)
    known_speaker_references: list[str] = Field(default_factory=list)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_absent(cls, value, info):
        # HTML forms and curl -F send "" for a field left empty.
        if value == "" and info.field_name not in LIST_FIELDS + ("stream",):
            return None
        return value

    @property
    def diarizes(self) -> bool:
        """Whether the job labels speakers: asked for, or implied by the format, model or fields."""
        if self.diarize is not None:
            return self.diarize
        return (
            self.response_format in ("diarized_json", "rttm")
            or self.model == DIARIZE_ALIAS
            or bool(self.known_speaker_names or self.known_speaker_references)
            or any(n is not None for n in (self.num_speakers, self.min_speakers, self.max_speakers))
        )

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities

    @property
    def logprobs(self) -> bool:
        return "logprobs" in self.include

    def job_options(self, task: str) -> JobOptions:
        """The job this form asks for; `task` is the route's (or, for /v1/jobs, the form's).
        Known speakers' clips are decoded here (ffmpeg, tens of ms each): InvalidRequest if unusable.
        A route calls it on a worker thread (ui/routes/readiness.py), not on the event loop."""
        from ui.speaker_references import speaker_references

        diarize = self.diarizes
        return JobOptions(
            model=self.model,
            language=self.language,
            task=task,
            initial_prompt=self.prompt,
            temperature=self.temperature or None,
            word_timestamps=self.words,
            logprobs=self.logprobs,
            vad=self.vad,
            diarize=diarize,
            num_speakers=self.num_speakers,
            min_speakers=self.min_speakers,
            max_speakers=self.max_speakers,
            known_speakers=speaker_references(self.known_speaker_names, self.known_speaker_references)
            if diarize
            else (),
        )


LIST_FIELDS = ("timestamp_granularities", "include", "known_speaker_names", "known_speaker_references")


def parse_form(fields: dict[str, list[str]], job: bool = False, streams: bool = True) -> TranscriptionForm:
    """Validate the text fields; ApiError 400 naming the field when one is wrong.

    `job`: for /v1/jobs, where response_format does not apply (the result is fetched later
    in any format), so word timestamps do not depend on it. `streams`: whether the route
    can answer stream=true (OpenAI streams transcriptions only)."""
    values: dict[str, Any] = {k: v[-1] for k, v in fields.items() if v}
    for name in LIST_FIELDS:  # list fields, "name[]" as OpenAI's client sends them
        values.pop(f"{name}[]", None)
        values[name] = [v for v in fields.get(f"{name}[]", []) + fields.get(name, []) if v]
    if any(key.startswith("chunking_strategy[") for key in values):  # server_vad's options, as a dict
        values = {k: v for k, v in values.items() if not k.startswith("chunking_strategy[")}
        values["chunking_strategy"] = "server_vad"
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
    if form.stream and form.response_format not in ("json", "text", "diarized_json"):
        raise ApiError(
            400,
            "stream: a stream carries text events; use response_format json, text or diarized_json "
            "with stream=true",
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
    if form.diarize is False and (
        form.response_format in ("diarized_json", "rttm") or form.model == DIARIZE_ALIAS
    ):
        what = form.model if form.model == DIARIZE_ALIAS else f"response_format={form.response_format}"
        raise ApiError(
            400,
            f"diarize: {what} labels speakers; send diarize=true (or leave it out), or choose "
            "another model or format",
            code="invalid_value",
            param="diarize",
        )
    if form.diarize is False and (form.known_speaker_names or form.known_speaker_references):
        raise ApiError(
            400,
            "known_speaker_names: known speakers need diarization; leave diarize out or send diarize=true",
            code="invalid_value",
            param="known_speaker_names",
        )
    return form


def split_fields(items: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """Form items -> {name: [values]} for the text fields only."""
    fields: dict[str, list[str]] = {}
    for key, value in items:
        if isinstance(value, str):
            fields.setdefault(key, []).append(value)
    return fields
