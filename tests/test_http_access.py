"""Whose jobs are whose on the HTTP API, on the real app over 127.0.0.1: with two named keys
each key sees only its own jobs (sync requests included) and another key's job is 404; with
no key every caller is "anonymous"; serving beyond loopback says what is open to whom."""

from __future__ import annotations

import logging
import time

import httpx
import openai
import pytest

from conftest import JFK, app_server, shared_audio
from engine import load_settings
from ui.access import exposure_warnings

KEYS = {"alice": "alice-key-1", "bob": "bob-key-2"}


def wait_done(http: httpx.Client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def client_for(server, key=None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url.rstrip("/"), headers=headers, timeout=60)


@pytest.fixture(scope="module")
def two_keys(micro_checkpoint, tmp_path_factory):
    with app_server(micro_checkpoint, tmp_path_factory.mktemp("keys") / "data", api_keys=KEYS) as server:
        yield server


def test_each_key_sees_only_its_own_jobs(two_keys):
    data = shared_audio(JFK).read_bytes()
    with client_for(two_keys, KEYS["alice"]) as alice, client_for(two_keys, KEYS["bob"]) as bob:
        job = alice.post("/v1/jobs", files={"file": ("alice.flac", data)}).json()
        sync = alice.post("/v1/audio/transcriptions", files={"file": ("alice-sync.flac", data)})
        assert sync.status_code == 200, sync.text
        sync_id = sync.headers["x-job-id"]
        assert wait_done(alice, job["id"])["status"] == "done"
        bobs = bob.post("/v1/jobs", files={"file": ("bob.flac", data)}).json()

        listed = [j["id"] for j in alice.get("/v1/jobs").json()["data"]]
        assert job["id"] in listed and sync_id in listed and bobs["id"] not in listed
        assert [j["id"] for j in bob.get("/v1/jobs").json()["data"]] == [bobs["id"]]
        for other in (job["id"], sync_id):  # someone else's job is "not found", as an unknown id is
            for method, path in [
                ("GET", f"/v1/jobs/{other}"),
                ("GET", f"/v1/jobs/{other}/result"),
                ("DELETE", f"/v1/jobs/{other}"),
            ]:
                response = bob.request(method, path)
                assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
        assert alice.get(f"/v1/jobs/{sync_id}").json()["result"]["text"] == sync.json()["text"]
        assert alice.get(f"/v1/jobs/{job['id']}/result", params={"format": "srt"}).status_code == 200
        assert wait_done(bob, bobs["id"])["status"] == "done"
        assert alice.get(f"/v1/jobs/{bobs['id']}").status_code == 404

    # the official client with either key works; no key or another string does not
    for key in KEYS.values():
        client = openai.OpenAI(base_url=two_keys.url + "v1", api_key=key, max_retries=0)
        assert client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", data)).text is not None
    with client_for(two_keys, "carol-key") as carol, client_for(two_keys) as nobody:
        assert carol.get("/v1/jobs").status_code == 401 and nobody.get("/v1/jobs").status_code == 401
        refused = [
            line
            for line in nobody.get("/metrics").text.splitlines()
            if line.startswith('whisper_requests_refused_total{reason="unauthorized"}')
        ]
        assert float(refused[0].split()[-1]) >= 2  # counted by reason
    # the key is never stored, only its name
    store = two_keys.app.state.jobs.store
    owners = {r.owner for r in store.recent(any_owner=True, limit=100)}
    assert owners == {"api:alice", "api:bob"}
    assert KEYS["alice"].encode() not in store.path.read_bytes()


def test_without_a_key_every_api_caller_is_anonymous_and_the_warning_says_so(
    micro_checkpoint, tmp_path, caplog
):
    with (
        caplog.at_level(logging.WARNING, logger="app"),
        app_server(micro_checkpoint, tmp_path / "data", host="0.0.0.0") as server,
    ):
        warnings = " ".join(r.getMessage() for r in caplog.records if r.name == "app")
        assert "No API key is set" in warnings and "list, read and cancel every job" in warnings
        assert "No login (auth) is set" in warnings and "/transcribe" in warnings
        port = server.url.rstrip("/").rsplit(":", 1)[1]
        data = shared_audio(JFK).read_bytes()
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as one,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as other,
        ):
            job = one.post("/v1/jobs", files={"file": ("a.flac", data)}).json()
            assert wait_done(other, job["id"])["status"] == "done"  # anyone who reaches the port
            assert job["id"] in [j["id"] for j in other.get("/v1/jobs").json()["data"]]
        assert server.app.state.jobs.store.get(job["id"]).owner == "api:anonymous"


def test_warnings_say_what_is_open_to_whom():
    def warnings(**values):
        return " ".join(
            exposure_warnings(
                load_settings(None, {"device": "cpu", "precision": "fp32", **values}, environ={})
            )
        )

    assert warnings() == ""  # loopback only: nothing is open to anyone else
    assert warnings(host="::1", api_key="k") == ""
    key_no_auth = warnings(host="0.0.0.0", api_keys={"ops": "k"})
    assert "No API key" not in key_no_auth
    assert "page and its /transcribe endpoint" in key_no_auth and "whatever the API key" in key_no_auth
    assert "/metrics and /healthz answer anyone" in key_no_auth
    assert warnings(host="0.0.0.0", api_key="k", auth="a:b", protect_metrics=True) == ""
    shared = warnings(share=True, auth="a:b")
    assert "public share link" in shared and "No API key is set" in shared and "No login" not in shared


def test_key_settings_are_checked():
    from engine import SettingsError

    base = {"device": "cpu", "precision": "fp32"}
    settings = load_settings(None, {**base, "api_key": "k0", "api_keys": {"alice": "k1"}}, environ={})
    assert settings.named_api_keys == {"default": "k0", "alice": "k1"}
    env = load_settings(None, base, environ={"WHISPER_APP_API_KEYS": "{alice: k1, bob: k2}"})
    assert env.named_api_keys == {"alice": "k1", "bob": "k2"}
    for bad, words in [
        ({"api_keys": {"a": "same", "b": "same"}}, "share one key"),
        ({"api_keys": {"a": ""}}, "non-empty"),
        ({"api_key": "k", "api_keys": {"default": "x"}}, '"default" is taken'),
    ]:
        with pytest.raises(SettingsError, match=words):
            load_settings(None, {**base, **bad}, environ={})
