"""The HTTP API on the real app (app.serve: Gradio's server, one port), with the official
`openai` client and plain HTTP: every format, translations, models, the job API, errors in
OpenAI's shape with honest codes, limits, the API key, /healthz and /metrics."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from whisper.tokenizer import LANGUAGES

from conftest import JFK, DecodeGate, app_server, shared_audio

KEY = "test-key-123"
FIVE_MIN = JFK.parent.parent / "long" / "lj050_0159_5min.mp3"
GATE = DecodeGate(timeout_s=30)  # decoding waits on it: tests hold jobs running or queued as they need


@pytest.fixture(scope="module")
def server(micro_checkpoint, tmp_path_factory):
    with app_server(
        micro_checkpoint,
        tmp_path_factory.mktemp("http") / "data",
        before_step=GATE,
        workers=1,
        queue_size=3,
        api_key=KEY,
        max_upload_mb=3,
        max_audio_duration_s=60,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(
        base_url=server.url.rstrip("/"), headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as http:
        yield http


@pytest.fixture(scope="module")
def jfk():
    return shared_audio(JFK)


@pytest.fixture(autouse=True)
def gate_open():
    GATE.set()
    yield
    GATE.set()


def assert_openai_error(response: httpx.Response, status: int, code: str, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def wait_job(http: httpx.Client, job_id: str, statuses=("done", "failed", "cancelled"), timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not {statuses} after {timeout} s: {job}")


# --- OpenAI-compatible routes, through the official client ----------------------------------------


def test_every_response_format_with_the_openai_client(client, jfk):
    def create(fmt, **extra):
        with open(jfk, "rb") as file:
            return client.audio.transcriptions.create(
                model="whisper-1", file=file, response_format=fmt, **extra
            )

    assert isinstance(create("json").text, str)
    text = create("text")
    assert isinstance(text, str) and text.endswith("\n")
    srt = create("srt")
    assert srt.startswith("1\n00:00:") and " --> " in srt
    vtt = create("vtt")
    assert vtt.startswith("WEBVTT")
    verbose = create("verbose_json", language="en")
    assert verbose.language == "english" and verbose.duration == pytest.approx(11.0, abs=0.1)
    assert verbose.segments and verbose.words is None
    for i, segment in enumerate(verbose.segments):
        assert segment.id == i and 0 <= segment.start <= segment.end <= verbose.duration + 0.01
        assert segment.tokens and segment.temperature == 0.0
    assert verbose.text == "".join(s.text for s in verbose.segments).strip()


def test_word_timestamps(client, jfk):
    with open(jfk, "rb") as file:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=file,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert verbose.words and verbose.segments
    assert all(
        0 <= w.start <= w.end <= verbose.duration + 0.01 and w.word == w.word.strip() for w in verbose.words
    )
    with open(jfk, "rb") as file:
        only_words = client.audio.transcriptions.create(
            model="whisper-1", file=file, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert only_words.words and only_words.segments is None


# the client marks whisper-1 translations deprecated
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_translations(client, jfk):
    with open(jfk, "rb") as file:
        verbose = client.audio.translations.create(
            model="whisper-1", file=file, response_format="verbose_json"
        )
    assert verbose.segments is not None and verbose.duration == pytest.approx(11.0, abs=0.1)
    with open(jfk, "rb") as file:
        assert client.audio.translations.create(
            model="whisper-1", file=file, response_format="srt"
        ).startswith("1\n")


def test_models(client, server, http, jfk):
    # names, never the server's paths: the checkpoint .../micro.pt is "micro"; whisper-1 is its alias
    assert [m.id for m in client.models.list()] == ["micro", "whisper-1", "gpt-4o-transcribe-diarize"]
    assert client.models.retrieve("micro").id == "micro"
    whisper_1 = http.get("/v1/models/whisper-1").json()
    assert whisper_1["alias_of"] == "micro" and whisper_1["default"] is True
    assert_openai_error(http.get("/v1/models/gpt-9"), 404, "model_not_found", "model")
    # OpenAI's newer names: the default too
    for model in ("micro", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"):
        with open(jfk, "rb") as file:
            assert client.audio.transcriptions.create(model=model, file=file).text is not None
    path = str(server.engine.settings.model)
    with open(jfk, "rb") as file:
        job = http.post("/v1/jobs", files={"file": file}).json()
    done = wait_job(http, job["id"])
    answers = [
        http.get("/v1/models").text,
        http.get("/healthz").text,
        str(done),
        http.get(f"/v1/jobs/{job['id']}/result", params={"format": "json"}).text,
    ]
    assert done["model"] == "micro" and not [a for a in answers if path in a or "/tmp" in a]
    with open(jfk, "rb") as file:
        response = http.post("/v1/audio/transcriptions", files={"file": file}, data={"model": "gpt-9"})
    assert_openai_error(response, 400, "model_not_found", "model")


def test_the_configured_path_is_not_a_model_id_and_never_shown(server, http, jfk):
    """model=<the configured checkpoint's path> is refused exactly as any other path is, and no
    answer, the refusals and /metrics included, carries the path."""
    path = str(server.engine.settings.model)
    assert path.startswith("/")
    data = jfk.read_bytes()
    answers = []
    for model in (path, "/somewhere/else/micro.pt"):
        for route in ("/v1/audio/transcriptions", "/v1/jobs", "/v1/audio/translations"):
            response = http.post(route, files={"file": ("jfk.flac", data)}, data={"model": model})
            assert_openai_error(response, 400, "model_not_found", "model")
            answers.append(response.json()["error"]["message"].replace(model, "<model>"))
        answers.append(http.get(f"/v1/models/{model}").json()["error"]["message"].replace(model, "<model>"))
    assert answers[:4] == answers[4:]  # the configured path reads like any other path
    assert not [a for a in answers if "<model>" in a]  # and neither is echoed
    metrics = http.get("/metrics").text
    assert path not in metrics and str(Path(path).parent) not in metrics
    assert 'whisper_model_state{model="micro",state="ready"} 1.0' in metrics


# --- errors and limits -------------------------------------------------------------------------------


def test_api_key_is_required_on_v1(server, jfk):
    with httpx.Client(base_url=server.url.rstrip("/")) as anonymous:
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/audio/transcriptions"),
            ("GET", "/v1/jobs"),
            ("DELETE", "/v1/jobs/0123456789ab"),
            ("GET", "/v1/anything"),
        ]:
            response = anonymous.request(method, path)
            assert_openai_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert_openai_error(wrong, 401, "invalid_api_key")
        assert anonymous.get("/healthz").status_code == 200  # protect_metrics is off
        assert anonymous.get("/metrics").status_code == 200
    bad = openai.OpenAI(base_url=server.url + "v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError), open(jfk, "rb") as file:
        bad.audio.transcriptions.create(model="whisper-1", file=file)


def test_not_audio_and_bad_parameters_are_400(client, http, jfk):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(
            model="whisper-1", file=("notes.mp3", b"plain text, not sound" * 50)
        )
    assert caught.value.code == "invalid_file_format" and "notes.mp3" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.audio.transcriptions.create(model="whisper-1", file=("empty.wav", b""))
    with open(jfk, "rb") as file:
        data = file.read()
    for fields, param in [
        ({"response_format": "docx"}, "response_format"),
        ({"temperature": "7"}, "temperature"),
        ({"language": "klingon"}, "language"),
    ]:
        response = http.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", data)}, data=fields)
        assert_openai_error(response, 400, "invalid_value", param)
    assert_openai_error(
        http.post("/v1/audio/transcriptions", data={"model": "whisper-1"}), 400, "invalid_request"
    )
    assert_openai_error(http.post("/v1/audio/transcriptions", json={"file": "x"}), 400, "invalid_request")


def test_too_long_audio_is_refused_before_decoding(http):
    five_min = shared_audio(FIVE_MIN)  # 300 s, above max_audio_duration_s=60, under max_upload_mb=3
    started = time.monotonic()
    with open(five_min, "rb") as file:
        response = http.post("/v1/audio/transcriptions", files={"file": file})
    assert_openai_error(response, 400, "audio_too_long", "file")
    assert time.monotonic() - started < 10


def test_uploads_over_the_limit_are_413(http):
    too_big = b"\0" * (4 * 1024 * 1024)  # max_upload_mb=3
    response = http.post("/v1/audio/transcriptions", files={"file": ("big.wav", too_big)})
    assert_openai_error(response, 413, "file_too_large", "file")

    boundary = "limit-test-boundary"

    def streamed():  # chunked, no Content-Length: the limit must hold while reading
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for _ in range(64):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = http.post(
            "/v1/jobs",
            content=streamed(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert_openai_error(response, 413, "file_too_large")
    except httpx.TransportError:
        pass  # the server may close the connection at the limit before the client finished sending
    assert "big.wav" not in [job["name"] for job in http.get("/v1/jobs").json()["data"]]


def test_queue_full_is_429_with_retry_after_and_health_stays_up(client, http, server, jfk):
    with open(jfk, "rb") as file:
        data = file.read()
    GATE.clear()  # one job runs and holds the worker; three fill the queue
    ids = [http.post("/v1/jobs", files={"file": ("jfk.flac", data)}).json()["id"] for _ in range(4)]
    waiter = {}
    sync = threading.Thread(
        target=lambda: waiter.update(
            r=http.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", data)})
        )
    )
    sync.start()  # a fifth request while the queue is full
    sync.join(30)
    assert_openai_error(waiter["r"], 429, "rate_limit_exceeded")
    assert 1 <= int(waiter["r"].headers["retry-after"]) <= 60
    with pytest.raises(openai.RateLimitError):
        client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", data))
    health = http.get("/healthz", timeout=5).json()  # the event loop is free while jobs wait
    assert health["status"] == "ok" and health["queue_length"] == 3 and health["busy_workers"] == 1
    assert http.get(f"/v1/jobs/{ids[-1]}").json()["queue_position"] == 3
    GATE.set()
    for job_id in ids:
        assert wait_job(http, job_id)["status"] == "done"


# --- durable jobs -------------------------------------------------------------------------------------


def test_job_lifecycle(http, jfk):
    with open(jfk, "rb") as file:
        response = http.post(
            "/v1/jobs",
            files={"file": ("JFK speech.flac", file)},
            data={"language": "en", "timestamp_granularities[]": "word"},
        )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["object"] == "transcription.job" and job["status"] in ("queued", "running", "done")
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    done = wait_job(http, job["id"])
    assert done["status"] == "done" and done["progress"] == 1.0 and done["error"] is None
    # a finished job keeps the numbers it ended with
    assert (
        done["seconds_done"] == done["seconds_total"] == pytest.approx(done["result"]["duration"], abs=0.01)
    )
    assert done["seconds_total"] > 10
    assert done["result"]["language"] == "english" and done["result"]["words"]
    for fmt, start in [("srt", "1\n"), ("vtt", "WEBVTT"), ("txt", ""), ("json", "{"), ("tsv", "start\t")]:
        result = http.get(f"/v1/jobs/{job['id']}/result", params={"format": fmt})
        assert result.status_code == 200 and result.text.startswith(start)
        assert f'filename="JFK_speech.{fmt}"' in result.headers["content-disposition"]
    assert_openai_error(
        http.get(f"/v1/jobs/{job['id']}/result", params={"format": "exe"}), 400, "invalid_value"
    )
    assert job["id"] in [j["id"] for j in http.get("/v1/jobs").json()["data"]]
    deleted = http.delete(f"/v1/jobs/{job['id']}")  # a finished job is deleted, result and all
    assert deleted.status_code == 200 and deleted.json() == {
        "id": job["id"],
        "object": "transcription.job.deleted",
        "deleted": True,
    }
    assert_openai_error(http.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    assert_openai_error(http.get(f"/v1/jobs/{job['id']}/result"), 404, "job_not_found")
    assert job["id"] not in [j["id"] for j in http.get("/v1/jobs").json()["data"]]
    assert_openai_error(http.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    for missing in ["0123456789ab", "ABCDEF012345", "x" * 200]:
        assert_openai_error(http.get(f"/v1/jobs/{missing}"), 404, "job_not_found")
    traversal = http.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd/result")  # matches no route: 404, never a file
    assert traversal.status_code == 404 and "root:" not in traversal.text
    assert_openai_error(http.get("/v1/no-such-route"), 404, "unknown_url")


def test_the_job_list_pages_with_after_and_has_more(http, jfk):
    with open(jfk, "rb") as file:
        data = file.read()
    ids = [http.post("/v1/jobs", files={"file": (f"part{i}.flac", data)}).json()["id"] for i in range(3)]
    for job_id in ids:
        wait_job(http, job_id)
    newest_first, after = [], None
    while True:
        page = http.get("/v1/jobs", params={"limit": 2, **({"after": after} if after else {})}).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        newest_first += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        assert page["last_id"] == page["data"][-1]["id"]
        after = page["last_id"]
    # each once, in order
    assert newest_first[:3] == ids[::-1] and len(set(newest_first)) == len(newest_first)
    everything = http.get("/v1/jobs", params={"limit": 100}).json()
    assert [job["id"] for job in everything["data"]] == newest_first and not everything["has_more"]
    assert_openai_error(http.get("/v1/jobs", params={"limit": 0}), 400, "invalid_value", param="limit")
    assert_openai_error(http.get("/v1/jobs", params={"limit": 101}), 400, "invalid_value", param="limit")
    assert_openai_error(
        http.get("/v1/jobs", params={"after": "0123456789ab"}), 404, "job_not_found", param="after"
    )


def test_a_streamed_request_names_its_job_before_it_is_decoded(http, jfk):
    GATE.clear()  # nothing is decoded until the headers have been read
    with (
        open(jfk, "rb") as file,
        http.stream(
            "POST", "/v1/audio/transcriptions", files={"file": file}, data={"stream": "true"}
        ) as response,
    ):
        job_id = response.headers["x-job-id"]
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
        GATE.set()
        assert any('"transcript.text.done"' in line for line in response.iter_lines())
    assert wait_job(http, job_id)["status"] == "done"


def test_cancel_a_queued_job(http, jfk):
    with open(jfk, "rb") as file:
        data = file.read()
    GATE.clear()
    running = http.post("/v1/jobs", files={"file": ("a.flac", data)}).json()
    queued = http.post("/v1/jobs", files={"file": ("b.flac", data)}).json()
    assert wait_job(http, queued["id"], statuses=("queued",))["queue_position"] == 1
    cancelled = http.delete(f"/v1/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_openai_error(http.get(f"/v1/jobs/{queued['id']}/result"), 409, "job_cancelled")
    assert_openai_error(http.get(f"/v1/jobs/{running['id']}/result"), 409, "job_not_finished")
    GATE.set()
    assert wait_job(http, running["id"])["status"] == "done"


def test_sync_requests_are_durable_jobs_too(http, jfk):
    with open(jfk, "rb") as file:
        response = http.post("/v1/audio/transcriptions", files={"file": file})
    job = http.get(f"/v1/jobs/{response.headers['x-job-id']}").json()
    assert job["status"] == "done" and job["result"]["text"] == response.json()["text"]
    # none was asked for: the one detected, not null
    assert LANGUAGES[job["language"]] == job["result"]["language"]


def test_healthz_and_metrics(server):
    with httpx.Client(base_url=server.url.rstrip("/")) as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200 and health.json()["model"]["state"] == "ready"
        metrics = anonymous.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in [
        'whisper_jobs_total{outcome="done"}',
        "whisper_queue_length",
        "whisper_workers_busy",
        "whisper_job_duration_seconds_bucket",
        "whisper_queue_wait_seconds_bucket",
        "whisper_audio_seconds_total",
        "whisper_realtime_factor_bucket",
        "whisper_model_state",
        "process_resident_memory_bytes",
    ]:
        assert name in metrics.text
