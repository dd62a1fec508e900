"""The names a user gives a done job's speakers (A -> "Ada"), checked and stored with the job.

    info = name_speakers(jobs, info, {"A": "Ada", "B": None})   # B gets its letter back

The result keeps the labels diarization gave; the names are a map beside it in the job's row
(`JobRecord.speaker_names`), applied wherever the job is shown or downloaded
(`JobInfo.result()`), so renaming never touches a word or a time, and a name can be changed
again or taken off. Keys are those labels ("A", "B", or a known speaker's name), never an
earlier name. Two labels given one name read as one speaker (diarization split a voice).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.errors import InvalidRequest
from engine.results import TranscriptionResult

if TYPE_CHECKING:
    from jobs.manager import JobInfo, JobManager

# A name is a label in front of subtitle lines: 40 characters still leave a 42-character line
# (the default width) room for a word.
MAX_SPEAKER_NAME_CHARS = 40
FIELD = "speaker_names"  # the option's name in messages (the API's param)


def merged_speaker_names(
    result: TranscriptionResult, names: Mapping[str, str], changes: Mapping[str, str | None]
) -> dict[str, str]:
    """`names` with `changes` applied: a label gets the new name, None (or its own label) takes
    the name off. InvalidRequest naming the field for a label the transcript does not have, or
    a name that is empty, longer than MAX_SPEAKER_NAME_CHARS, or holds a line break or other
    control character (it would break the txt, srt and RTTM lines it starts)."""
    labels = result.speakers
    if not labels:
        raise InvalidRequest(f"{FIELD}: this transcript has no speakers; transcribe it with diarize on")
    merged = {label: name for label, name in names.items() if label in labels}
    for label, name in changes.items():
        if label not in labels:
            raise InvalidRequest(
                f"{FIELD}: there is no speaker {label!r} in this transcript; its speakers are "
                f"{', '.join(labels)} (rename a speaker by the label diarization gave it)"
            )
        if name is None or (isinstance(name, str) and name.strip() == label):
            merged.pop(label, None)
            continue
        merged[label] = _checked_name(label, name)
    return merged


def _checked_name(label: str, name: object) -> str:
    if not isinstance(name, str):
        raise InvalidRequest(f"{FIELD}: the name for {label} must be text (or null to take it off)")
    name = name.strip()
    if not name:
        raise InvalidRequest(f"{FIELD}: the name for {label} is empty; give a name, or null to take it off")
    if len(name) > MAX_SPEAKER_NAME_CHARS:
        raise InvalidRequest(
            f"{FIELD}: the name for {label} is {len(name)} characters long; at most "
            f"{MAX_SPEAKER_NAME_CHARS} fit in front of a subtitle line"
        )
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name):
        raise InvalidRequest(f"{FIELD}: the name for {label} holds a line break or another control character")
    return name


def name_speakers(jobs: JobManager, info: JobInfo, changes: Mapping[str, str | None]) -> JobInfo | None:
    """Store `changes` to a done job's speaker names (see merged_speaker_names); the job as it is
    afterwards, or None when it is no longer done (deleted meanwhile)."""
    result = info.record.transcription()
    if info.status != "done" or result is None:
        return None
    names = merged_speaker_names(result, info.record.speaker_names, changes)
    if not jobs.store.name_speakers(info.id, names):
        return None
    return jobs.get(info.id)
