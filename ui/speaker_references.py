"""Known speakers as OpenAI's form sends them: `known_speaker_names[]` beside
`known_speaker_references[]`, each reference a data URL of a 2-10 s audio clip
("data:audio/wav;base64,...").

Each clip is decoded here, at the boundary, by the same ffmpeg path as a recording, to the
16 kHz samples a durable job carries in its options (engine.SpeakerReference); whether it is
long enough and holds speech is the engine's check when the options are built.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile

from engine import AudioError, AudioTooLong, SpeakerReference, SpeakerReferenceError, load_audio

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]+)*;base64,(?P<data>.*)$", re.DOTALL)
MAX_CLIP_DECODE_S = 11.0  # decoding stops past this: a clip over 10 s is refused either way


def speaker_references(names: list[str], references: list[str]) -> tuple[SpeakerReference, ...]:
    """The pairs as SpeakerReferences; SpeakerReferenceError (a 400 naming the field) otherwise."""
    if len(names) != len(references):
        raise SpeakerReferenceError(
            f"known_speaker_references: {len(references)} references for {len(names)} "
            "known_speaker_names; send one clip per name, in the same order"
        )
    return tuple(
        SpeakerReference.from_audio(name, _decode(name, url)) for name, url in zip(names, references)
    )


def _decode(name: str, url: str):
    match = DATA_URL.match(url.strip())
    if match is None:
        raise SpeakerReferenceError(
            f"known_speaker_references: the reference for {name!r} is not a data URL "
            "(data:audio/wav;base64,...)"
        )
    if match["mime"] and not match["mime"].startswith(("audio/", "video/", "application/octet-stream")):
        raise SpeakerReferenceError(
            f"known_speaker_references: the reference for {name!r} is {match['mime']}, not audio"
        )
    try:
        raw = base64.b64decode(match["data"], validate=False)
    except (binascii.Error, ValueError):
        raise SpeakerReferenceError(
            f"known_speaker_references: the reference for {name!r} is not valid base64"
        ) from None
    handle, path = tempfile.mkstemp(prefix="speaker-reference-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(raw)
        return load_audio(path, max_duration_s=MAX_CLIP_DECODE_S)
    except AudioTooLong:
        raise SpeakerReferenceError(
            f"known_speaker_references: the clip for {name!r} is longer than 10 s; it must be 2 to 10 s "
            "of speech"
        ) from None
    except AudioError as exc:  # its message names our temporary file: the kind of error is enough
        raise SpeakerReferenceError(
            f"known_speaker_references: the reference for {name!r} is not audio ffmpeg can read "
            f"({type(exc).__name__})"
        ) from None
    finally:
        os.unlink(path)
