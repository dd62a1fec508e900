"""The HTTP API, on Gradio's own FastAPI app (one server, one port): routes by resource.

    audio.py      POST /v1/audio/transcriptions, /v1/audio/translations   OpenAI-compatible
    models.py     GET  /v1/models, /v1/models/{id}          the models the config allows, by id
    jobs.py       POST, GET /v1/jobs; GET, DELETE /v1/jobs/{id}; GET /v1/jobs/{id}/result
    v1.py         those three under /v1 and the API key; any other /v1 path: 404, or 405 with Allow
    health.py     GET  /healthz, /livez, /metrics           readiness, liveness, Prometheus text

and what they share: dependencies.py (the app's state and the caller's key, through Depends),
route_class.py (errors in OpenAI's shape, counted in /metrics), admission.py (the limits a
request passes before its job is queued; Retry-After), readiness.py (the asked model loading
or failed: 503), uploads.py (the multipart form, its audio into data_dir/uploads) and
streaming.py (stream=true as server-sent events). The shapes of OpenAI's requests, answers
and errors are in ui/openai_compat/.

Every request goes through the `JobManager`, the synchronous ones too: the upload and the
job are on disk before the job is queued, so an accepted request is never lost, and every
front end shares one set of limits, one history and one metric set.
"""

from __future__ import annotations

from typing import Optional

from fastapi import Depends, FastAPI

from engine import Engine, Settings
from jobs import JobManager
from ui.access import KeyRing
from ui.metrics import Metrics
from ui.routes import health, v1
from ui.routes.dependencies import api_caller


def add_routes(
    app: FastAPI,
    engine: Engine,
    settings: Settings,
    jobs: JobManager | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Register /v1, /healthz, /livez and /metrics on `app` (Gradio's FastAPI app), with the
    state their dependencies read in `app.state`.

    `jobs` is the app's JobManager (started); without one, a JobManager on
    settings.data_dir is created and started here.
    """
    if jobs is None:
        jobs = JobManager(engine).start()
    app.state.engine = engine
    app.state.settings = settings
    app.state.jobs = jobs
    app.state.metrics = metrics or Metrics(engine, jobs)
    app.state.api_keys = KeyRing(settings.named_api_keys)
    app.include_router(v1.router)
    app.include_router(health.router, dependencies=[Depends(api_caller)] if settings.protect_metrics else [])
