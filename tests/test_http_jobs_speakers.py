"""Naming a diarized job's speakers through the jobs API, on real weights (tiny.en and the GE2E
speaker encoder): PATCH /v1/jobs/{id} {"speaker_names": {"A": "Ada"}} renames A in the job's
body, its result and every download, never a word; null gives the letter back; bad labels and
names are 400s in OpenAI's shape naming the field; another key's job is not found.

The recording is built in the test from two LibriSpeech readers (tests/two_speakers.py).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from conftest import JFK, app_server, shared_audio
from two_speakers import NAME, needs_speaker_encoder, speaker_of, two_speakers

KEYS = {"alice": "key-alice", "bob": "key-bob"}


@pytest.fixture(scope="module")
def server(tiny_en_model_dir, tmp_path_factory):
    needs_speaker_encoder()
    with app_server(
        tiny_en_model_dir,
        tmp_path_factory.mktemp("jobs-speakers") / "data",
        vad=True,
        max_new_tokens=224,
        workers=1,
        api_keys=KEYS,
    ) as server:
        yield server


def client(server, who: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url.rstrip("/") + "/v1",
        headers={"Authorization": f"Bearer {KEYS[who]}"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def alice(server):
    with client(server, "alice") as http:
        yield http


def finished(http: httpx.Client, job_id: str) -> dict:
    for _ in range(1200):
        body = http.get(f"/jobs/{job_id}").json()
        if body["status"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(scope="module")
def conversation(alice, tmp_path_factory):
    """(the diarized job as GET answered it once done, the readers' spans)."""
    path, spans = two_speakers(tmp_path_factory.mktemp("two-speakers"))
    with open(path, "rb") as f:
        job = alice.post(
            "/jobs",
            files={"file": (NAME, f)},
            data={"diarize": "true", "num_speakers": "2", "timestamp_granularities[]": ["word", "segment"]},
        )
    assert job.status_code == 202, job.text
    body = finished(alice, job.json()["id"])
    assert body["status"] == "done", body
    return body, spans


def words_of(body: dict) -> list:
    return [(w["word"], w["start"], w["end"]) for w in body["result"]["words"]]


def test_renaming_a_speaker_names_them_in_the_job_and_every_download_but_changes_no_word(alice, conversation):
    before, spans = conversation
    job_id = before["id"]
    assert before["speaker_names"] == {}
    assert {s["speaker"] for s in before["result"]["segments"]} == {"A", "B"}

    renamed = alice.patch(f"/jobs/{job_id}", json={"speaker_names": {"A": "Ada"}})
    assert renamed.status_code == 200, renamed.text
    body = renamed.json()
    assert body["speaker_names"] == {"A": "Ada"} and body["num_speakers"] == 2
    for segment in body["result"]["segments"]:  # reader 1089 spoke first: A, now Ada
        expected = {"1089": "Ada", "2412": "B"}[speaker_of(segment["start"], segment["end"], spans)]
        assert segment["speaker"] == expected, segment
    assert words_of(body) == words_of(before) and body["result"]["text"] == before["result"]["text"]
    assert alice.get(f"/jobs/{job_id}").json() == body  # kept with the job
    (listed,) = [j for j in alice.get("/jobs").json()["data"] if j["id"] == job_id]
    assert listed["speaker_names"] == {"A": "Ada"}

    def download(fmt: str) -> str:
        response = alice.get(f"/jobs/{job_id}/result", params={"format": fmt})
        assert response.status_code == 200, response.text
        return response.text

    cues = [block.split("\n")[2] for block in download("srt").strip().split("\n\n")]
    assert cues[0].startswith("[Ada] ") and not any(c.startswith("[A] ") for c in cues)
    assert "<v Ada>" in download("vtt") and "<v A>" not in download("vtt")
    txt = download("txt")
    assert txt.startswith("Ada: ") and "\nB: " in txt
    assert {line.split()[7] for line in download("rttm").splitlines()} == {"Ada", "B"}
    stored = json.loads(download("json"))
    assert {w["speaker"] for s in stored["segments"] for w in s["words"]} == {"Ada", "B"}

    # null (or the label itself) gives the letter back; names merge into those the job has
    both = alice.patch(f"/jobs/{job_id}", json={"speaker_names": {"B": "Bea"}}).json()
    assert both["speaker_names"] == {"A": "Ada", "B": "Bea"}
    back = alice.patch(f"/jobs/{job_id}", json={"speaker_names": {"A": None, "B": "B"}}).json()
    assert back["speaker_names"] == {} and back["result"] == before["result"]


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"speaker_names": {"C": "Cy"}}, "speaker_names", "no speaker 'C'"),
        ({"speaker_names": {"A": "   "}}, "speaker_names", "empty"),
        ({"speaker_names": {"A": "x" * 41}}, "speaker_names", "at most 40"),
        ({"speaker_names": {"A": "Ada\nB: forged"}}, "speaker_names", "line break"),
        ({"speaker_names": {"A": 7}}, "speaker_names", "must be text"),
        ({"speaker_names": {}}, "speaker_names", "object of labels"),
        ({"speaker_names": ["A", "Ada"]}, "speaker_names", "object of labels"),
        ({"status": "queued"}, "status", "only speaker_names"),
    ],
)
def test_bad_renames_are_refused_in_openai_shape_naming_the_field(alice, conversation, body, param, words):
    job_id = conversation[0]["id"]
    response = alice.patch(f"/jobs/{job_id}", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and words in error["message"]
    assert alice.get(f"/jobs/{job_id}").json()["speaker_names"] == {}  # nothing changed


def test_a_body_that_is_not_json_is_refused(alice, conversation):
    response = alice.patch(
        f"/jobs/{conversation[0]['id']}", content=b"A=Ada", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]


def test_only_the_owner_renames_and_a_job_without_speakers_has_none_to_rename(server, alice, conversation):
    job_id = conversation[0]["id"]
    with client(server, "bob") as bob:
        response = bob.patch(f"/jobs/{job_id}", json={"speaker_names": {"A": "Mallory"}})
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    assert alice.patch("/jobs/000000000000", json={"speaker_names": {"A": "Ada"}}).status_code == 404
    assert alice.get(f"/jobs/{job_id}").json()["speaker_names"] == {}

    with open(shared_audio(JFK), "rb") as f:
        plain = alice.post("/jobs", files={"file": f}).json()
    assert finished(alice, plain["id"])["status"] == "done"
    assert "speaker_names" not in alice.get(f"/jobs/{plain['id']}").json()
    response = alice.patch(f"/jobs/{plain['id']}", json={"speaker_names": {"A": "Ada"}})
    assert response.status_code == 400 and "no speakers" in response.json()["error"]["message"]
