"""Whether the model a request asks for can serve it now.

A model that is offered but still loading, or that failed to load, is 503 in OpenAI's shape
(model_loading with Retry-After, model_failed with the reason); the reason never shows a
path of the server, only the models' ids (`without_paths`, which /healthz uses too).
"""

from __future__ import annotations

import anyio

from engine import Engine, InvalidRequest, JobOptions
from ui.openai_compat import ApiError, TranscriptionForm, api_error

LOADING_RETRY_AFTER_S = 10  # a model loads in seconds to a minute


def prepared_options(form: TranscriptionForm, task: str, engine: Engine, wait_for_model: bool) -> JobOptions:
    """The job the form asks for, prepared by the engine (400 for a model not offered or an
    option it cannot do); 503 when the model is not ready.

    A durable job may wait in the queue while the model loads (`wait_for_model`); a request
    that holds its connection open gets 503 and Retry-After instead."""
    try:
        options = engine.prepare(form.job_options(task))
    except InvalidRequest as exc:
        raise api_error(exc) from None
    state = engine.status().model
    asks_default = options.model == engine.model_names.public(state.model)  # the state is the default's
    if asks_default and state.state == "failed":
        raise ApiError(
            503,
            f"The model {options.model!r} failed to load: {without_paths(state.error, engine)}",
            type="server_error",
            code="model_failed",
        )
    if asks_default and state.state == "loading" and not wait_for_model:
        raise ApiError(
            503,
            "The model is still loading; try again shortly.",
            type="server_error",
            code="model_loading",
            headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
        )
    return options


async def prepared_options_in_thread(
    form: TranscriptionForm, task: str, engine: Engine, wait_for_model: bool
) -> JobOptions:
    """`prepared_options` on a worker thread, as the rest of an upload's work runs: building the
    options decodes the known speakers' clips with ffmpeg, which would otherwise hold the event
    loop, and with it every other request, for as long as it takes."""
    return await anyio.to_thread.run_sync(prepared_options, form, task, engine, wait_for_model)


def without_paths(message: str, engine: Engine) -> str:
    """A model error's text with configured paths replaced by the models' ids."""
    for spec in engine.settings.allowed_models:
        message = message.replace(spec, engine.model_names.public(spec))
    return message
