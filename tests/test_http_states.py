"""The routes while the model loads or after it failed (503), and the API key on /metrics and
/healthz: a bare FastAPI app with ui.routes' routes, in process (no server, no port)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conftest import JFK, fast_settings, shared_audio
from engine import Engine, load_settings
from ui.routes import add_routes


@contextlib.contextmanager
def serving(engine: Engine):
    """(app, client) for the engine's HTTP routes; the job manager and the engine are closed after."""
    app = FastAPI()
    add_routes(app, engine, engine.settings)
    try:
        yield app, TestClient(app)
    finally:
        app.state.jobs.close()
        engine.close()


def jfk_bytes() -> bytes:
    return shared_audio(JFK).read_bytes()


def wait_state(engine: Engine, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.status().model.state != state:
        assert time.monotonic() < deadline, f"model never {state}: {engine.status().model}"
        time.sleep(0.02)


def test_failed_model_is_503_and_health_says_why(tmp_path):
    settings = fast_settings(tmp_path / "no-such-model.pt", data_dir=str(tmp_path / "data"))
    engine = Engine(settings, background=True)
    with serving(engine) as (app, client):
        wait_state(engine, "failed")
        data = jfk_bytes()
        for route in ("/v1/audio/transcriptions", "/v1/jobs"):
            response = client.post(route, files={"file": ("jfk.flac", data)})
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "model_failed"
            assert "does not exist" in response.json()["error"]["message"]
        health = client.get("/healthz")  # readiness: a load balancer stops sending traffic here
        assert health.status_code == 503 and health.json()["model"]["state"] == "failed"
        assert health.json()["status"] == "unavailable" and "failed to load" in health.json()["reasons"][0]
        assert "does not exist" in health.json()["model"]["error"]
        assert client.get("/livez").status_code == 200  # liveness: the process is up, do not restart-loop it


def test_health_is_503_when_the_job_store_cannot_be_read(micro_checkpoint, tmp_path):
    settings = fast_settings(micro_checkpoint, data_dir=str(tmp_path / "data"))
    engine = Engine(settings, background=True)
    with serving(engine) as (app, client):
        wait_state(engine, "ready")
        assert client.get("/healthz").status_code == 200
        app.state.jobs.store.close()  # the database gone from under the server
        health = client.get("/healthz")
        assert health.status_code == 503 and "job store" in health.json()["reasons"][0]
        assert client.get("/livez").json() == {"status": "alive"}


class SlowLoadingEngine(Engine):
    """Loads only once `loaded` is set, so the test sees the "loading" state for as long as it needs."""

    loaded = threading.Event()

    def _load_model(self, name, *device):
        self.loaded.wait(30)
        return super()._load_model(name, *device)


def test_loading_model_is_503_for_requests_while_jobs_wait(micro_checkpoint, tmp_path):
    SlowLoadingEngine.loaded.clear()
    settings = fast_settings(micro_checkpoint, data_dir=str(tmp_path / "data"))
    engine = SlowLoadingEngine(settings, background=True)
    with serving(engine) as (app, client):
        try:
            wait_state(engine, "loading")
            data = jfk_bytes()
            response = client.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", data)})
            assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
            assert int(response.headers["retry-after"]) > 0
            job = client.post("/v1/jobs", files={"file": ("jfk.flac", data)})  # a durable job may wait
            assert job.status_code == 202
            SlowLoadingEngine.loaded.set()
            deadline = time.monotonic() + 60
            while client.get(f"/v1/jobs/{job.json()['id']}").json()["status"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert client.get("/healthz").json()["model"]["state"] == "ready"
        finally:
            SlowLoadingEngine.loaded.set()


@pytest.mark.parametrize("protect", [True, False])
def test_metrics_and_health_protected_by_config(micro_checkpoint, tmp_path, protect):
    settings = fast_settings(
        micro_checkpoint, api_key="k", protect_metrics=protect, data_dir=str(tmp_path / "data")
    )
    engine = Engine(settings, load=False)
    with serving(engine) as (app, client):
        for path in ("/metrics", "/healthz"):
            assert client.get(path).status_code == (401 if protect else 200)
            assert client.get(path, headers={"Authorization": "Bearer k"}).status_code == 200
        assert client.get("/v1/models").status_code == 401  # /v1 always needs the key when one is set


def test_api_key_from_the_environment(micro_checkpoint, tmp_path):
    settings = load_settings(
        None,
        {
            "model": str(micro_checkpoint),
            "device": "cpu",
            "precision": "fp32",
            "data_dir": str(tmp_path / "data"),
        },
        environ={"WHISPER_APP_API_KEY": "from-env"},
    )
    engine = Engine(settings, load=False)
    with serving(engine) as (app, client):
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Basic from-env"}).status_code == 401


def test_the_api_lists_only_api_jobs(micro_checkpoint, tmp_path):
    settings = fast_settings(micro_checkpoint, data_dir=str(tmp_path / "data"))
    engine = Engine(settings)
    with serving(engine) as (app, client):
        jfk = shared_audio(JFK)
        page_job = app.state.jobs.submit(jfk, owner="browser:someone")  # sent from the page
        with open(jfk, "rb") as file:
            api_job = client.post("/v1/jobs", files={"file": ("jfk.flac", file)}).json()
        listed = [job["id"] for job in client.get("/v1/jobs").json()["data"]]
        assert api_job["id"] in listed and page_job.id not in listed
        page_job.result(timeout=60)
