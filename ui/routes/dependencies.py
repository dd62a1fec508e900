"""What a route needs, handed in through FastAPI's `Depends`: the app's state that
`add_routes` set (the engine, its settings, the job manager, the metrics, the API keys) and
the caller its API key names.

    async def get_job(job_id: str, jobs: JobsDep, owner: OwnerDep) -> Dict: ...

Every function here is `async`: FastAPI runs a plain `def` dependency in a worker thread,
and these only read an attribute.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine import Engine, Settings
from jobs import JobManager
from output import SubtitleOptions
from ui.access import api_owner
from ui.metrics import Metrics
from ui.openai_compat import ApiError


async def app_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(app_engine)]


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


async def app_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


JobsDep = Annotated[JobManager, Depends(app_jobs)]


async def app_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


MetricsDep = Annotated[Metrics, Depends(app_metrics)]


async def api_caller(request: Request) -> str:
    """The caller's key name ("anonymous" when no key is configured); 401 for a missing or
    wrong key. Every /v1 route depends on it, /metrics and /healthz with protect_metrics."""
    name = request.app.state.api_keys.caller(request.headers.get("authorization", ""))
    if name is None:
        raise ApiError(
            401,
            'Missing or wrong API key: send it as "Authorization: Bearer <key>".',
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


async def caller_owner(caller: Annotated[str, Depends(api_caller)]) -> str:
    """The owner stored with the caller's jobs (its key's name). FastAPI solves `api_caller`
    once per request, for the router's key check and for this alike."""
    return api_owner(caller)


OwnerDep = Annotated[str, Depends(caller_owner)]


async def subtitle_layout(settings: SettingsDep) -> SubtitleOptions:
    """The srt/vtt layout of every answer: the config's subtitle_* keys."""
    return SubtitleOptions.from_settings(settings)


SubtitlesDep = Annotated[SubtitleOptions, Depends(subtitle_layout)]
