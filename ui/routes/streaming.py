"""`stream=true` on /v1/audio/transcriptions: server-sent events in OpenAI's shape.

    data: {"type": "transcript.text.delta", "delta": " Ask not", "logprobs": [...]?}
    ...
    data: {"type": "transcript.text.done", "text": "Ask not what ...", "logprobs": [...]?}

(the `openai` package's TranscriptionTextDeltaEvent and TranscriptionTextDoneEvent). A delta
is sent for each segment as the engine completes it, in recording order: a recording's
sections are decoded side by side, so a later section's text waits until the sections before
it are complete (engine/job_runner.py: completed_in_order). The decode loop gives a streaming job's earliest
unfinished section a head start and the first free row (engine.decoding.decode_loop), so its text
starts within a few seconds. Joined, the deltas are the done event's text.

With `response_format=diarized_json` the deltas come the same way, and then, once the job is
done, one `{"type": "transcript.text.segment", id, start, end, text, speaker}` event per segment
before the done event (TranscriptTextSegmentEvent): speakers are found by clustering the whole
recording's voices, so a segment's speaker, and where segments split, is known only at its end.

The job is an ordinary durable job (its id in the X-Job-Id header): a client that goes away
mid-stream stops only the stream, never the job, and can fetch the result later. An error
after the stream has started comes as one event `{"error": {...}}` in OpenAI's error shape,
which the official client raises as an APIError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from engine import JobHandle, Segment, TranscriptionResult
from ui.openai_compat import api_error, diarized_segment, result_logprobs, segment_logprobs

POLL_S = 0.1  # how often the stream looks for newly completed segments; a step of the decode loop is longer


def event(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


class _Deltas:
    """Turns the segments completed so far into the text not yet sent."""

    def __init__(self, logprobs: bool):
        self.logprobs = logprobs
        self.sent_segments = 0
        self.sent_text = ""

    def new(self, segments: list[Segment]) -> list[dict[str, Any]]:
        events = []
        for segment in segments[self.sent_segments :]:
            # the text starts without a space
            delta = segment.text if self.sent_text else segment.text.lstrip()
            if delta:
                body: dict[str, Any] = {"type": "transcript.text.delta", "delta": delta}
                if self.logprobs:
                    body["logprobs"] = segment_logprobs(segment)
                events.append(body)
                self.sent_text += delta
        self.sent_segments = max(self.sent_segments, len(segments))
        return events

    def rest(self, result: TranscriptionResult) -> list[dict[str, Any]]:
        """The text not yet sent, by text: a diarized result's segments are split differently
        from those the deltas came from (its words, and so its text, are the same)."""
        if self.sent_text and result.text.startswith(self.sent_text):
            delta = result.text[len(self.sent_text) :]
        elif not self.sent_text:
            delta = result.text
        else:
            return []
        self.sent_text += delta
        return [{"type": "transcript.text.delta", "delta": delta}] if delta else []

    def done(self, result: TranscriptionResult) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "transcript.text.done", "text": result.text}
        if self.logprobs:
            body["logprobs"] = result_logprobs(result)
        return body


async def _events(handle: JobHandle, logprobs: bool, segments: bool = False) -> AsyncIterator[bytes]:
    deltas = _Deltas(logprobs)
    while not handle.done():
        for body in deltas.new(handle.segments_so_far()):
            yield event(body)
        await asyncio.sleep(POLL_S)
    try:
        result = handle.result()
    except Exception as exc:
        yield event(api_error(exc, accepted=True).body())
        return
    if segments:  # diarized_json: the rest of the text, then each labelled segment
        bodies = [*deltas.rest(result), *(diarized_segment(s) for s in result.segments)]
    else:
        bodies = deltas.new(result.segments)  # segments completed with the job
    for body in [*bodies, deltas.done(result)]:
        yield event(body)


def streaming_response(handle: JobHandle, logprobs: bool, segments: bool = False) -> StreamingResponse:
    """The job's text as server-sent events; `segments`: diarized_json's segment events too.
    See the module docstring."""
    handle.stream_text()  # the decode loop favours the section whose text goes out next
    return StreamingResponse(
        _events(handle, logprobs, segments),
        media_type="text/event-stream",
        headers={"X-Job-Id": handle.id, "Cache-Control": "no-cache"},
    )
