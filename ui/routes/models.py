"""GET /v1/models and /v1/models/{id}: the models the config allows, by id (never a path)."""

from __future__ import annotations

from fastapi import APIRouter

from engine import OPENAI_ALIASES, Engine
from ui.openai_compat import OPENAI_DEFAULT_MODEL, ApiError
from ui.routes.dependencies import EngineDep
from ui.routes.route_class import OpenAIRoute

router = APIRouter(route_class=OpenAIRoute)


@router.get("/models")
async def models(engine: EngineDep) -> dict:
    """The configured models by id, the default first, then whisper-1 (OpenAI's name) as its alias."""
    ids = [*engine.model_names.ids, OPENAI_DEFAULT_MODEL]
    return {"object": "list", "data": [_entry(model_id, engine) for model_id in ids]}


@router.get("/models/{model_id:path}")
async def model(model_id: str, engine: EngineDep) -> dict:
    names = engine.model_names
    if model_id not in names.by_id and model_id not in OPENAI_ALIASES:
        raise ApiError(404, names.not_offered(model_id), code="model_not_found", param="model")
    return _entry(model_id, engine)


def _entry(model_id: str, engine: Engine) -> dict:
    alias = model_id in OPENAI_ALIASES
    default_id = engine.model_names.default_id
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "openai-whisper",
        "default": alias or model_id == default_id,
        "alias_of": default_id if alias else None,
    }
