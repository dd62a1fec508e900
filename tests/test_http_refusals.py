"""What cannot be done is refused, clearly, on the real app over 127.0.0.1: another language or
translation on an English-only model (real tiny.en weights; API 400 and the page's message),
a wrong method (405 with Allow), a full queue (429 before the upload is read), and every
refusal counted in /metrics by reason; model ids that would collide stay apart."""

from __future__ import annotations

import time
import wave

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import JFK, DecodeGate, app_server, shared_audio
from engine import InvalidRequest, JobOptions
from engine.models.names import ModelNames

GATE = DecodeGate(timeout_s=60)


def refusals(http: httpx.Client) -> dict:
    samples = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name in ("whisper_requests_refused_total", "whisper_jobs_failed_total"):
                samples[(sample.name, sample.labels["reason"])] = sample.value
    return samples


@pytest.fixture(scope="module")
def english_only(tiny_en_model_dir, micro_checkpoint, tmp_path_factory):
    """The default model is real tiny.en (English-only, a CTranslate2 directory named "model");
    micro (multilingual) is offered beside it."""
    with app_server(
        tiny_en_model_dir,
        tmp_path_factory.mktemp("refusals") / "data",
        before_step=GATE,
        models=[str(micro_checkpoint)],
        workers=1,
        queue_size=1,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def http(english_only):
    with httpx.Client(base_url=english_only.url.rstrip("/"), timeout=120) as http:
        yield http


@pytest.fixture(autouse=True)
def gate_open():
    GATE.set()
    yield
    GATE.set()


def test_english_only_model_refuses_other_languages_and_translation(english_only, http):
    data = shared_audio(JFK).read_bytes()
    before = refusals(http)
    client = openai.OpenAI(base_url=english_only.url + "v1", api_key="none", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", data), language="de")
    assert caught.value.code == "invalid_value" and caught.value.body["param"] == "language"
    assert "English-only" in caught.value.message and "German" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="English-only model and cannot translate"):
        client.audio.translations.create(model="whisper-1", file=("jfk.flac", data))
    job = http.post("/v1/jobs", files={"file": ("jfk.flac", data)}, data={"task": "translate"})
    assert job.status_code == 400 and job.json()["error"]["param"] == "task"
    # English, or detection, is fine: and the transcript is real English
    text = client.audio.transcriptions.create(model="model", file=("jfk.flac", data), language="en").text
    assert "country" in text.lower()
    after = refusals(http)
    assert (
        after[("whisper_requests_refused_total", "invalid")]
        == before[("whisper_requests_refused_total", "invalid")] + 3
    )

    # the engine says the same to any front end
    with pytest.raises(InvalidRequest, match="English-only"):
        english_only.engine.prepare(JobOptions(language="fr"))


def test_the_page_shows_the_refusal(english_only):
    from gradio_client import Client, handle_file

    page = Client(english_only.url, verbose=False)
    with pytest.raises(Exception, match="English-only model and cannot translate"):
        page.predict(
            handle_file(str(shared_audio(JFK))),
            language="auto",
            task="translate",
            timestamps=True,
            api_name="/transcribe",
        )


def test_an_english_only_model_not_yet_loaded_is_refused_once_it_loads(
    micro_checkpoint, tiny_en_model_dir, tmp_path
):
    """The name "model" says nothing; the job learns from the loaded weights and fails with
    InvalidRequest (a 400 for a synchronous request), then the next request is refused at once."""
    with (
        app_server(
            micro_checkpoint, tmp_path / "data", load_first=False, models=[str(tiny_en_model_dir)]
        ) as server,
        httpx.Client(base_url=server.url.rstrip("/"), timeout=120) as http,
    ):
        data = shared_audio(JFK).read_bytes()
        for _ in range(2):
            response = http.post(
                "/v1/audio/transcriptions",
                files={"file": ("jfk.flac", data)},
                data={"model": "model", "language": "es"},
            )
            assert response.status_code == 400, response.text
            assert "language: model is an English-only model" in response.json()["error"]["message"]  # named
        failed = refusals(http)
        # the first ran; the second never did
        assert failed[("whisper_jobs_failed_total", "invalid_value")] == 1


def test_jobs_refusals_say_what_the_jobs_route_does(http):
    """/v1/jobs answers with a job to poll: its refusals of stream and logprobs say so, instead of
    talking about translations or asking for the response_format the caller already sent."""
    data = shared_audio(JFK).read_bytes()
    stream = http.post("/v1/jobs", files={"file": ("jfk.flac", data)}, data={"stream": "true"})
    assert stream.status_code == 400 and "translations" not in stream.json()["error"]["message"]
    assert "/v1/jobs answers at once with a job to poll" in stream.json()["error"]["message"]
    logprobs = http.post(
        "/v1/jobs",
        files={"file": ("jfk.flac", data)},
        data={"include[]": "logprobs", "response_format": "json"},
    )
    assert logprobs.status_code == 400 and logprobs.json()["error"]["param"] == "include"
    assert "not by /v1/jobs" in logprobs.json()["error"]["message"]


def test_wrong_method_is_405_with_allow(http):
    for method, path, allow in [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("GET", "/v1/audio/transcriptions", "POST"),
        ("POST", "/v1/jobs/0123456789ab", "DELETE, GET, PATCH"),
        ("DELETE", "/v1/models", "GET"),
    ]:
        response = http.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allow and response.json()["error"]["code"] == "method_not_allowed"
    for path in ("/healthz", "/metrics"):
        response = http.post(path)
        assert response.status_code == 405 and "GET" in response.headers["allow"]
    assert http.get("/v1/nothing-here").status_code == 404


def big_wav(path, seconds: int):
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\1\0" * 16000 * seconds)
    return path


def test_a_full_queue_refuses_before_the_upload_is_read(english_only, http, tmp_path):
    data = shared_audio(JFK).read_bytes()
    big = big_wav(tmp_path / "big.wav", 40 * 60).read_bytes()  # 40 minutes, 77 MB
    before = refusals(http)
    GATE.clear()  # one job runs and holds the worker, one waits: the queue (1) is full
    running = http.post("/v1/jobs", files={"file": ("a.flac", data)}).json()
    deadline = time.monotonic() + 30  # taken by the worker (until then it is the one waiting)
    while http.get(f"/v1/jobs/{running['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiting = http.post("/v1/jobs", files={"file": ("b.flac", data)})
    assert waiting.status_code == 202, waiting.text
    uploads = english_only.app.state.jobs.upload_dir
    started = time.monotonic()
    try:
        response = http.post("/v1/audio/transcriptions", files={"file": ("big.wav", big)})
        elapsed = time.monotonic() - started
        assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(response.headers["retry-after"]) >= 1
    except httpx.TransportError:  # the server may close before the client has sent it all
        elapsed = time.monotonic() - started
    print(f"\n429 for a 77 MB upload on a full queue after {elapsed:.2f} s")
    assert elapsed < 2.0 and list(uploads.iterdir()) == []  # nothing of it was stored
    assert (
        refusals(http)[("whisper_requests_refused_total", "queue_full")]
        >= before[("whisper_requests_refused_total", "queue_full")] + 1
    )
    GATE.set()
    for job_id in (running["id"], waiting.json()["id"]):
        deadline = time.monotonic() + 120
        while http.get(f"/v1/jobs/{job_id}").json()["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_models_with_the_same_name_stay_apart():
    names = ModelNames(
        [
            "/a/large-v3.pt",
            "large-v3",
            "/b/large-v3.pt",
            "/m/whisper-1.pt",
            "/hf/models--Systran--faster-whisper-tiny.en/snapshots/" + "0" * 40,
        ]
    )
    assert names.ids == ["large-v3", "large-v3-2", "large-v3-3", "whisper-1-2", "faster-whisper-tiny.en"]
    assert names.resolve("large-v3-3") == "/b/large-v3.pt" and names.resolve("whisper-1") == "/a/large-v3.pt"
    # a configured path is no id: refused as any other path is, so the answer confirms nothing
    assert names.resolve("/a/large-v3.pt") is None and names.resolve("/etc/passwd") is None
    assert names.resolve("large-v3") == "/a/large-v3.pt" and names.resolve("") == "/a/large-v3.pt"
    assert names.public("/gone/medium.en.pt") == "medium.en"  # a stored job's model the config dropped
