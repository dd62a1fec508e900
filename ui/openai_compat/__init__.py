"""OpenAI's audio API, as shapes: the request's form fields, the responses, the errors.

Kept apart from the routes (ui/routes/) so the mapping can be read and tested on its own;
one concern a module:

    errors.py      ApiError in OpenAI's shape {"error": {"message", "type", "param", "code"}},
                   the table mapping the engine's and the job store's errors to it (ERROR_KINDS)
    form.py        TranscriptionForm: the multipart fields, validated (parse_form), as JobOptions
    responses.py   json, verbose_json, diarized_json, text, srt/vtt, rttm from a result, and a
                   durable job's body (job_body)

The streamed events (stream=true) are ui/routes/streaming.py's.
"""

from ui.openai_compat.errors import (
    ERROR_KINDS,
    UNEXPECTED,
    ApiError,
    ErrorKind,
    api_error,
    error_body,
    kind_of,
    kind_of_class,
    stored_error_class,
)
from ui.openai_compat.form import (
    OPENAI_DEFAULT_MODEL,
    RESPONSE_FORMATS,
    TranscriptionForm,
    parse_form,
    split_fields,
)
from ui.openai_compat.responses import (
    MEDIA_TYPES,
    content_disposition,
    diarized_json,
    diarized_segment,
    job_body,
    result_logprobs,
    segment_logprobs,
    transcription_response,
    verbose_json,
)

__all__ = [name for name in dir() if not name.startswith("_")]
