"""stream=true on the real app over 127.0.0.1, through the official `openai` client: OpenAI's
transcript.text.delta events as segments complete, in order, then transcript.text.done with
the whole text; a client that leaves mid-stream does not lose the job; translations refuse."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from conftest import JFK, app_server, shared_audio

FIVE_MIN = JFK.parent.parent / "long" / "lj050_0159_5min.mp3"


class SlowSteps:
    """A `before_step` hook that holds each step of the running decode back a little, so a
    stream is surely mid-way when the test acts."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def __call__(self, decode) -> None:
        time.sleep(self.delay_s)


@pytest.fixture(scope="module")
def real(tiny_en_model_dir, tmp_path_factory):
    """Real tiny.en; batch_size 1, so a recording is one section decoded window after window."""
    data_dir = tmp_path_factory.mktemp("stream") / "data"
    with app_server(tiny_en_model_dir, data_dir, batch_size=1, max_new_tokens=224) as server:
        yield server


def test_deltas_arrive_in_order_as_segments_complete(real):
    client = openai.OpenAI(base_url=real.url + "v1", api_key="none", max_retries=0, timeout=300)
    audio = shared_audio(FIVE_MIN)
    started = time.monotonic()
    arrivals, deltas, done = [], [], None
    with open(audio, "rb") as file:
        stream = client.audio.transcriptions.create(model="whisper-1", file=file, stream=True)
        job_id = stream.response.headers["x-job-id"]
        for event in stream:
            arrivals.append((event.type, time.monotonic() - started))
            if event.type == "transcript.text.delta":
                assert done is None  # every delta before the done event
                deltas.append(event.delta)
            else:
                assert event.type == "transcript.text.done"
                done = event
    assert done is not None and len(deltas) >= 10
    assert "".join(deltas) == done.text  # in order, nothing lost or repeated
    first_delta = next(t for kind, t in arrivals if kind == "transcript.text.delta")
    finished = arrivals[-1][1]
    print(f"\n{len(deltas)} deltas; first after {first_delta:.1f} s, done after {finished:.1f} s")
    assert first_delta < finished * 0.5  # text came while the job was still running
    with httpx.Client(base_url=real.url.rstrip("/"), timeout=30) as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "done" and job["result"]["text"] == done.text  # the same text as the stored job
    assert [s["text"] for s in job["result"]["segments"]][0].strip() == deltas[0]


def test_text_starts_while_most_of_a_long_recording_is_still_to_decode(tiny_en_model_dir, tmp_path):
    """The 5-minute file in seven sections side by side (batch_size 8), real tiny.en. Text goes
    out in recording order, and every section's first window used to end at about the same
    time, so the first delta came once most of the recording was decoded. The first section
    now gets a head start: its text comes while most of the recording is still to decode."""
    with (
        app_server(tiny_en_model_dir, tmp_path / "data", batch_size=8, max_new_tokens=224) as server,
        httpx.Client(base_url=server.url.rstrip("/"), timeout=300) as http,
    ):
        client = openai.OpenAI(base_url=server.url + "v1", api_key="none", max_retries=0, timeout=300)
        with open(shared_audio(FIVE_MIN), "rb") as file:
            stream = client.audio.transcriptions.create(model="whisper-1", file=file, stream=True)
            job_id = stream.response.headers["x-job-id"]
            events = iter(stream)
            first = next(events)
            progress = http.get(f"/v1/jobs/{job_id}").json()["progress"]
            rest = list(events)
    assert first.type == "transcript.text.delta" and rest[-1].type == "transcript.text.done"
    assert first.delta + "".join(e.delta for e in rest[:-1]) == rest[-1].text
    print(f"\nfirst delta at {progress:.0%} of the recording decoded")
    assert progress < 0.35, f"the first text came once {progress:.0%} of the recording was decoded"


def test_stream_with_response_format_text_and_refusals(real):
    client = openai.OpenAI(base_url=real.url + "v1", api_key="none", max_retries=0, timeout=120)
    data = shared_audio(JFK).read_bytes()
    events = list(
        client.audio.transcriptions.create(
            model="whisper-1", file=("jfk.flac", data), stream=True, response_format="text"
        )
    )
    assert events[-1].type == "transcript.text.done" and "country" in events[-1].text
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.audio.transcriptions.create(
            model="whisper-1", file=("jfk.flac", data), stream=True, response_format="srt"
        )
    with httpx.Client(base_url=real.url.rstrip("/"), timeout=30) as http:
        response = http.post(
            "/v1/audio/translations", files={"file": ("jfk.flac", data)}, data={"stream": "true"}
        )
    assert response.status_code == 400 and response.json()["error"]["param"] == "stream"
    assert "translations do not" in response.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_does_not_lose_the_job(micro_checkpoint, tmp_path):
    slow = SlowSteps(0.015)
    with app_server(micro_checkpoint, tmp_path / "data", before_step=slow, batch_size=1) as server:
        url = server.url + "v1/audio/transcriptions"
        with open(shared_audio(FIVE_MIN), "rb") as file, httpx.Client(timeout=120) as http:
            with http.stream("POST", url, files={"file": file}, data={"stream": "true"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                job_id = response.headers["x-job-id"]
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert '"transcript.text.delta"' in first or '"transcript.text.done"' in first
            # the connection is closed here, long before the job's 10 windows are decoded
            deadline = time.monotonic() + 120
            while (job := http.get(f"{server.url}v1/jobs/{job_id}").json())["status"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert job["status"] == "done" and job["result"]["duration"] == pytest.approx(300.8, abs=1)
        assert server.engine.status().busy_workers == 0


def test_sections_decoded_side_by_side_stream_in_recording_order(micro_checkpoint, tmp_path):
    """Four sections of five minutes advance together; the deltas still come in the recording's
    order (a section's once those before it are complete) and join to the final text."""
    slow = SlowSteps(0.002)
    with app_server(micro_checkpoint, tmp_path / "data", before_step=slow, batch_size=4) as server:
        client = openai.OpenAI(base_url=server.url + "v1", api_key="none", max_retries=0, timeout=120)
        with open(shared_audio(FIVE_MIN), "rb") as file:
            events = list(client.audio.transcriptions.create(model="whisper-1", file=file, stream=True))
        deltas, done = [e.delta for e in events[:-1]], events[-1]
        assert done.type == "transcript.text.done" and len(deltas) >= 4
        assert "".join(deltas) == done.text
        with httpx.Client(base_url=server.url.rstrip("/"), timeout=30) as http:
            job = http.get(f"/v1/jobs/{http.get('/v1/jobs').json()['data'][0]['id']}").json()
        texts = [s["text"] for s in job["result"]["segments"] if s["text"]]
        assert "".join(texts).strip() == done.text  # the stored segments, in the same order
