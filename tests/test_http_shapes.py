"""ui.openai_compat on its own: form fields, response shapes as OpenAI's client types parse them, errors."""

from __future__ import annotations

import json

import pytest
from openai.types.audio import Transcription, TranscriptionVerbose

from engine import (
    AudioTooLong,
    InvalidRequest,
    JobOptions,
    NotAudio,
    QueueFull,
    Segment,
    TranscriptionResult,
    Word,
)
from jobs.manager import JobInfo
from jobs.store import JobRecord, result_to_dict
from ui.openai_compat import (
    ApiError,
    api_error,
    content_disposition,
    job_body,
    parse_form,
    transcription_response,
    verbose_json,
)


def _result() -> TranscriptionResult:
    words = [Word(" Ask", 0.0, 0.3, 0.9), Word(" not", 0.3, 0.6, 0.8)]
    return TranscriptionResult(
        segments=[
            Segment(0, 0.0, 0.6, " Ask not", [1, 2], 0.0, -0.2, 1.2, 0.01, words),
            Segment(
                1, 1.5, 2.0, " what", [3], 0.2, -0.4, 1.0, 0.02, [Word(" what", 1.5, 2.0, 0.7)], seek=120
            ),
        ],
        language="en",
        duration=2.25,
        task="transcribe",
    )


def test_form_defaults_and_aliases():
    form = parse_form(
        {
            "model": ["whisper-1"],
            "language": [""],
            "timestamp_granularities[]": ["word", "segment"],
            "response_format": ["verbose_json"],
        }
    )
    assert form.words and form.language is None
    options = form.job_options("transcribe")
    assert options == JobOptions(model="whisper-1", task="transcribe", word_timestamps=True)
    # temperature 0 = the server's fallback ladder (OpenAI's meaning); above 0 = exactly that
    assert parse_form({"temperature": ["0"]}).job_options("transcribe").temperature is None
    assert parse_form({"temperature": ["0.4"], "prompt": ["Names"]}).job_options("translate") == JobOptions(
        task="translate", temperature=(0.4,), initial_prompt="Names"
    )


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"response_format": ["mp3"]}, "response_format"),
        ({"temperature": ["1.5"]}, "temperature"),
        ({"temperature": ["warm"]}, "temperature"),
        ({"timestamp_granularities[]": ["sentence"]}, "timestamp_granularities"),
        ({"timestamp_granularities[]": ["word"], "response_format": ["json"]}, "timestamp_granularities"),
        ({"stream": ["true"], "response_format": ["srt"]}, "response_format"),  # a stream carries text events
        ({"include[]": ["logprobs"], "response_format": ["verbose_json"]}, "include"),  # OpenAI: json only
        ({"include[]": ["tokens"]}, "include"),
    ],
)
def test_bad_fields_are_400_naming_the_field(fields, param):
    with pytest.raises(ApiError) as caught:
        parse_form(fields)
    assert caught.value.status == 400 and caught.value.param == param
    assert set(caught.value.body()["error"]) == {"message", "type", "param", "code"}


def test_stream_and_logprobs_fields():
    form = parse_form({"stream": ["true"], "include[]": ["logprobs"]})
    assert form.stream and form.logprobs and form.response_format == "json"
    with pytest.raises(ApiError) as caught:  # translations and jobs do not stream
        parse_form({"stream": ["true"]}, streams=False)
    assert caught.value.param == "stream" and caught.value.status == 400


def test_responses_parse_as_openai_types():
    result = _result()
    body = json.loads(transcription_response(result, parse_form({})).body)
    assert Transcription(**body).text == "Ask not what"
    verbose = TranscriptionVerbose(**verbose_json(result, segments=True, words=True))
    assert verbose.language == "english" and verbose.duration == 2.25 and verbose.usage.seconds == 3
    assert [w.word for w in verbose.words] == ["Ask", "not", "what"]
    assert verbose.segments[1].seek == 120 and verbose.segments[1].temperature == 0.2
    only_words = json.loads(
        transcription_response(
            result, parse_form({"response_format": ["verbose_json"], "timestamp_granularities[]": ["word"]})
        ).body
    )
    assert "segments" not in only_words and len(only_words["words"]) == 3
    text = transcription_response(result, parse_form({"response_format": ["text"]}))
    assert text.body.decode() == "Ask not what\n" and text.media_type == "text/plain"
    srt = transcription_response(result, parse_form({"response_format": ["srt"]})).body.decode()
    # one cue: a 0.9 s pause does not cut it
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\nAsk not what")
    vtt = transcription_response(result, parse_form({"response_format": ["vtt"]}))
    assert vtt.body.decode().startswith("WEBVTT") and vtt.media_type == "text/vtt"


@pytest.mark.parametrize(
    "error, status, code, param",
    [
        (NotAudio("x"), 400, "invalid_file_format", "file"),
        (AudioTooLong("x"), 400, "audio_too_long", "file"),
        (InvalidRequest("language: 'xx' is not a language"), 400, "invalid_value", "language"),
        (InvalidRequest("initial_prompt: too long"), 400, "invalid_value", "prompt"),
        (QueueFull("full"), 429, "rate_limit_exceeded", None),
        (RuntimeError("boom"), 500, "internal_error", None),
    ],
)
def test_engine_errors_map_to_honest_codes(error, status, code, param):
    mapped = api_error(error)
    assert (mapped.status, mapped.code, mapped.param) == (status, code, param)


def test_job_body_shows_error_and_result():
    record = JobRecord(
        "a" * 12,
        1.0,
        "failed",
        name="x.wav",
        error="not audio",
        error_type="NotAudio",
        options=JobOptions(task="transcribe", model="m"),
    )
    body = job_body(JobInfo(record, "failed", 0, 0.0, 0, 0))
    assert body["error"]["code"] == "invalid_file_format" and body["result"] is None
    done = JobRecord(
        "b" * 12, 1.0, "done", options=JobOptions(word_timestamps=True), result=result_to_dict(_result())
    )
    body = job_body(JobInfo(done, "done", 0, 1.0, 0, 0))
    assert body["result"]["text"] == "Ask not what" and len(body["result"]["words"]) == 3


def test_content_disposition_is_safe_for_any_name():
    header = content_disposition('Besprechung "März".srt')
    assert header.startswith('attachment; filename="Besprechung _M_rz_.srt"')
    assert "filename*=UTF-8''Besprechung%20%22M%C3%A4rz%22.srt" in header
