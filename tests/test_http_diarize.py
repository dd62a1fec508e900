"""Speaker diarization through the HTTP API, with the official `openai` client, on real weights
(tiny.en and GE2E): OpenAI's diarized_json and its stream, gpt-4o-transcribe-diarize, known
speakers by data URL, our diarize field on other formats, refusals in OpenAI's shape naming
the field, the jobs API's options and downloads, and the speaker model in the model cache.

The recording is built here from ../shared/audio: three readers one after another (LJSpeech,
LibriSpeech 2412, LibriSpeech 1995, LJSpeech again), 0.6 s apart; LJSpeech's known-speaker
clip (LJ050-0240) is not part of it. Skips, saying why, where the audio, tiny.en or the
speaker encoder's package is absent.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import shutil
import threading
import time
import wave

import httpx
import numpy as np
import openai
import pytest

from conftest import JFK, app_server, shared_audio
from engine import load_audio
from two_speakers import readers_in_turn

SR = 16000
AUDIO = JFK.parent.parent
PARTS = [
    ("lj", AUDIO / "ljspeech" / "wavs" / "LJ050-0200.wav"),
    ("2412", AUDIO / "librispeech" / "2412-153948-0000.flac"),
    ("1995", AUDIO / "librispeech" / "1995-1837-0001.wav"),
    ("lj", AUDIO / "ljspeech" / "wavs" / "LJ050-0201.wav"),
]
LJ_REFERENCE = AUDIO / "ljspeech" / "wavs" / "LJ050-0240.wav"
GAP_S = 0.6


def wav_bytes(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def data_url(samples: np.ndarray) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(samples)).decode()


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    """(path of the recording, [(start, end, speaker)] of each reader's part)."""
    path = tmp_path_factory.mktemp("diarize") / "three_readers.wav"
    spans = readers_in_turn(PARTS, path, GAP_S)
    return path, spans


@pytest.fixture(scope="module")
def server(tiny_en_model_dir, tmp_path_factory):
    if importlib.util.find_spec("resemblyzer") is None:
        pytest.skip("the GE2E speaker encoder is absent: pip install --no-deps -r requirements-speakers.txt")
    data_dir = tmp_path_factory.mktemp("http-diarize") / "data"
    with app_server(tiny_en_model_dir, data_dir, vad=True, max_new_tokens=224, workers=1) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "v1", api_key="none", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url.rstrip("/") + "/v1", timeout=300) as http:
        yield http


def speaker_of(segment, spans) -> str:
    """The reader whose part holds most of the segment."""
    return max(spans, key=lambda s: min(segment.end, s[1]) - max(segment.start, s[0]))[2]


def test_diarized_json_labels_speakers_a_b_c_in_order_of_first_speech(client, conversation):
    path, spans = conversation
    with open(path, "rb") as f:
        result = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=f,
            response_format="diarized_json",
            chunking_strategy="auto",
        )
    assert result.text and result.duration == pytest.approx(spans[-1][1] + GAP_S, abs=0.1)
    assert all(s.type == "transcript.text.segment" and s.speaker for s in result.segments)
    order = list(dict.fromkeys(s.speaker for s in result.segments))
    assert order == ["A", "B", "C"][: len(order)] and len(order) == 3
    # each reader's part is one speaker's, and the readers are told apart (LJSpeech twice: same letter)
    by_reader = {}
    for segment in result.segments:
        by_reader.setdefault(speaker_of(segment, spans), []).append(segment.speaker)
    majority = {reader: max(set(labels), key=labels.count) for reader, labels in by_reader.items()}
    assert len(set(majority.values())) == 3 and majority["lj"] == "A"
    assert " ".join(s.text for s in result.segments) == result.text


def test_the_words_are_those_of_the_same_job_without_diarization(client, conversation, http):
    path, _ = conversation

    def words(**extra):
        with open(path, "rb") as f:
            body = http.post(
                "/audio/transcriptions",
                files={"file": f},
                data={
                    "response_format": "verbose_json",
                    "timestamp_granularities[]": ["word", "segment"],
                    **extra,
                },
            ).json()
        return body

    plain, diarized = words(), words(diarize="true")
    assert [(w["word"], w["start"], w["end"]) for w in diarized["words"]] == [
        (w["word"], w["start"], w["end"]) for w in plain["words"]
    ]
    assert diarized["text"] == plain["text"] and "speaker" not in plain["segments"][0]
    assert all(w["speaker"] for w in diarized["words"]) and all(s["speaker"] for s in diarized["segments"])
    by_start = {(w["start"], w["end"]): w["speaker"] for w in diarized["words"]}
    for segment in diarized["segments"]:  # no segment mixes two speakers
        inside = {by_start[k] for k in by_start if segment["start"] <= k[0] and k[1] <= segment["end"]}
        assert inside <= {segment["speaker"]}


def test_known_speakers_are_named_and_the_others_keep_letters(client, conversation):
    path, spans = conversation
    reference = data_url(load_audio(shared_audio(LJ_REFERENCE)))
    with open(path, "rb") as f:
        result = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=f,
            response_format="diarized_json",
            known_speaker_names=["Linda"],
            known_speaker_references=[reference],
        )
    for segment in result.segments:
        if speaker_of(segment, spans) == "lj":
            assert segment.speaker == "Linda"
    assert {s.speaker for s in result.segments} - {"Linda"} == {"A", "B"}


def test_a_stream_sends_each_segment_then_the_done_event(client, conversation):
    path, _ = conversation
    with open(path, "rb") as f:
        stream = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json", stream=True
        )
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and "transcript.text.segment" in kinds
    segments = [e for e in events if e.type == "transcript.text.segment"]
    assert kinds.index("transcript.text.segment") > max(
        (i for i, k in enumerate(kinds) if k == "transcript.text.delta"), default=-1
    )
    assert all(s.speaker for s in segments) and " ".join(s.text for s in segments) == events[-1].text
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == events[-1].text


def test_downloads_and_the_jobs_api_keep_the_speakers(http, conversation, server):
    path, _ = conversation
    with open(path, "rb") as f:
        job = http.post("/jobs", files={"file": f}, data={"diarize": "true", "num_speakers": "3"}).json()
    assert job["diarize"] is True and job["num_speakers"] == 3
    for _ in range(600):
        body = http.get(f"/jobs/{job['id']}").json()
        if body["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert body["status"] == "done" and body["num_speakers"] == 3
    assert all(s["speaker"] in ("A", "B", "C") for s in body["result"]["segments"])
    srt = http.get(f"/jobs/{job['id']}/result", params={"format": "srt"}).text
    cues = [block.split("\n")[2] for block in srt.strip().split("\n\n")]
    assert all(cue.startswith(("[A] ", "[B] ", "[C] ")) for cue in cues)
    vtt = http.get(f"/jobs/{job['id']}/result", params={"format": "vtt"}).text
    assert "<v A>" in vtt and "</v>" in vtt
    txt = http.get(f"/jobs/{job['id']}/result", params={"format": "txt"}).text
    assert txt.startswith("A: ") and {line[:3] for line in txt.splitlines()} == {"A: ", "B: ", "C: "}
    rttm = http.get(f"/jobs/{job['id']}/result", params={"format": "rttm"}).text.splitlines()
    fields = [line.split() for line in rttm]
    assert fields and all(f[0] == "SPEAKER" and f[1] == "three_readers" and len(f) == 10 for f in fields)
    assert {f[7] for f in fields} == {"A", "B", "C"}
    stored = json.loads(http.get(f"/jobs/{job['id']}/result", params={"format": "json"}).text)
    assert all(
        s["speaker"] and all(w["speaker"] == s["speaker"] for w in s["words"]) for s in stored["segments"]
    )
    # the speaker model sits in the cache beside the Whisper model, and Release memory frees it
    engine = server.app.state.jobs.engine
    assert "speaker-encoder-ge2e" in {info.name for info in engine.status().loaded}
    assert "speaker-encoder-ge2e" in engine.release(wait=True, timeout=30).released


HOLDING_FFMPEG = """#!/bin/sh
# ffmpeg, except that decoding a known speaker's clip waits until the test lets it go on
case "$*" in *speaker-reference-*)
  touch "{hold}/started"
  while [ ! -e "{hold}/release" ]; do sleep 0.05; done;;
esac
exec {ffmpeg} "$@"
"""


def test_other_requests_are_answered_while_a_reference_clip_is_decoded(http, server, tmp_path, monkeypatch):
    # ffmpeg decoding a reference clip is held (a wrapper on PATH runs the real one once let go):
    # /v1/models must still answer meanwhile, so the decode does not hold the event loop
    hold, tools = tmp_path / "hold", tmp_path / "bin"
    hold.mkdir()
    tools.mkdir()
    wrapper = tools / "ffmpeg"
    wrapper.write_text(HOLDING_FFMPEG.format(hold=hold, ffmpeg=shutil.which("ffmpeg")))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    reference = data_url(load_audio(shared_audio(LJ_REFERENCE)))
    answered = {}

    def transcribe() -> None:
        response = http.post(
            "/audio/transcriptions",
            files={"file": ("silence.wav", wav_bytes(np.zeros(2 * SR)))},
            data={
                "diarize": "true",
                "known_speaker_names[]": "Linda",
                "known_speaker_references[]": reference,
            },
        )
        answered["transcription"] = response.status_code

    request = threading.Thread(target=transcribe)
    request.start()
    try:
        for _ in range(600):
            if (hold / "started").exists():
                break
            time.sleep(0.05)
        assert (hold / "started").exists(), "the reference clip never reached ffmpeg"
        try:
            answered["models"] = http.get("/models", timeout=10).status_code
        except httpx.TimeoutException:
            answered["models"] = "no answer in 10 s"
    finally:
        (hold / "release").touch()
        request.join(timeout=120)
    assert answered == {"models": 200, "transcription": 200}


def test_models_list_the_diarizing_alias(client):
    assert "gpt-4o-transcribe-diarize" in {m.id for m in client.models.list()}


def refusal(http, **data):
    response = http.post(
        "/audio/transcriptions", files={"file": ("a.wav", wav_bytes(np.zeros(SR)))}, data=data
    )
    return response.status_code, response.json()["error"]["param"]


def test_bad_speaker_fields_are_refused_with_400_naming_the_field(http):
    three_s = data_url(0.1 * np.sin(np.arange(3 * SR) * 0.05).astype(np.float32))
    one_s = data_url(0.1 * np.sin(np.arange(SR) * 0.05).astype(np.float32))
    twelve_s = data_url(0.1 * np.sin(np.arange(12 * SR) * 0.05).astype(np.float32))
    not_audio = "data:audio/wav;base64," + base64.b64encode(b"this is not audio at all").decode()
    assert refusal(http, response_format="diarized_json", diarize="false") == (400, "diarize")
    assert refusal(http, diarize="true", num_speakers="50") == (400, "num_speakers")
    assert refusal(http, diarize="true", min_speakers="4", max_speakers="2") == (400, "min_speakers")
    names_twice = {"known_speaker_names[]": ["Ada", "Bob"], "known_speaker_references[]": three_s}
    assert refusal(http, model="gpt-4o-transcribe-diarize", **names_twice) == (
        400,
        "known_speaker_references",
    )
    for clip in (one_s, twelve_s, not_audio, "https://example.com/ada.wav"):
        refused = refusal(
            http,
            response_format="diarized_json",
            **{"known_speaker_names[]": "Ada", "known_speaker_references[]": clip},
        )
        assert refused == (400, "known_speaker_references")
    assert (
        refusal(http, response_format="diarized_json", stream="true", **{"include[]": "logprobs"})[0] == 400
    )
