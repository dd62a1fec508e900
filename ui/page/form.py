"""The page's form: what each field accepts, and its values as the job's options.

The layout shows the ranges (ui/page/layout.py); the Transcribe function turns the fields
into one `JobOptions` and one `SubtitleOptions` (ui/page/transcribe.py). A value out of
range is a `gr.Error` naming the field, which the page shows under the Transcribe button.
"""

from __future__ import annotations

import math

import gradio as gr

from engine import JobOptions
from output import SubtitleOptions

AUTO_LANGUAGE = "auto"
# What the page accepts for the subtitle layout (the config may go further; the page keeps to sane values).
LINE_WIDTH_RANGE = (10, 200)  # characters per line: below 10 hardly a word fits
LINES_RANGE = (1, 10)  # lines per cue
CUE_S_RANGE = (0.5, 60.0)  # seconds a cue stays on screen
# As the HTTP form's `temperature`: empty or 0 = the config's fallback ladder, above 0 = exactly this.
TEMPERATURE_RANGE = (0.0, 1.0)
# The Speakers drop-down: off, estimated, or exactly this many. One control holds every valid
# answer (a number beside an off switch would be meaningless half the time); past 8 people a
# count is rarely known, and Automatic looks for up to 20 (the HTTP API takes any count to 20).
SPEAKERS_OFF, SPEAKERS_AUTO = "off", "auto"
PAGE_MAX_SPEAKERS = 8
SPEAKER_CHOICES = [
    ("Off", SPEAKERS_OFF),
    ("Automatic", SPEAKERS_AUTO),
    *((str(n), str(n)) for n in range(2, PAGE_MAX_SPEAKERS + 1)),
]


def _number(
    value, label: str, low: float, high: float, default, whole: bool, title: str = "Subtitle options"
):
    """A page field's number checked against [low, high]; empty gives the default."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or (whole and number != int(number)) or not low <= number <= high:
        kind = "a whole number" if whole else "a number"
        raise gr.Error(
            f"{label}: must be {kind} from {low:g} to {high:g}, got {value!r}.",
            title=title,
            print_exception=False,
        )
    return int(number) if whole else number


def subtitle_options(
    defaults: SubtitleOptions, max_line_width=None, max_lines=None, max_cue_s=None, per_segment=None
) -> SubtitleOptions:
    """The page's subtitle fields as SubtitleOptions (empty fields keep `defaults`); a value
    out of range is a gr.Error naming the field."""
    return SubtitleOptions(
        max_line_width=_number(
            max_line_width, "Max characters per line", *LINE_WIDTH_RANGE, defaults.max_line_width, whole=True
        ),
        max_lines=_number(max_lines, "Max lines per cue", *LINES_RANGE, defaults.max_lines, whole=True),
        max_cue_s=_number(max_cue_s, "Max seconds per cue", *CUE_S_RANGE, defaults.max_cue_s, whole=False),
        per_segment=defaults.per_segment if per_segment is None else bool(per_segment),
    )


def page_options(
    language: str | None = None,
    task: str | None = None,
    model: str | None = None,
    word_timestamps: bool = False,
    vad: bool | None = None,
    prompt: str | None = None,
    temperature=None,
    configured_vad: bool = False,
    speakers: str | None = None,
) -> JobOptions:
    """The page's fields as the job's options, mapped as the HTTP form's (ui/openai_compat.py):
    "auto" or no language = detect it; an empty prompt keeps the config's initial_prompt; an
    empty or 0 temperature keeps the fallback ladder; the VAD box is passed only where it
    differs from the config (`configured_vad`); Speakers "off" (or none) = no diarization,
    "auto" = diarize with the count estimated, a number = exactly that many. A temperature out
    of range or an unknown Speakers choice is a gr.Error naming the field."""
    temperature = _number(
        temperature, "Temperature", *TEMPERATURE_RANGE, None, whole=False, title="Advanced options"
    )
    return JobOptions(
        **_speaker_options(speakers),
        model=model or None,
        language=None if language in (None, "", AUTO_LANGUAGE) else language,
        task=task or None,
        initial_prompt=str(prompt).strip() if prompt else None,
        temperature=temperature or None,
        word_timestamps=bool(word_timestamps),
        vad=None if vad is None or bool(vad) == configured_vad else bool(vad),
    )


def _speaker_options(speakers: str | None) -> dict:
    choice = str(speakers or SPEAKERS_OFF).strip().lower()
    if choice == SPEAKERS_OFF:
        return {}
    if choice == SPEAKERS_AUTO:
        return dict(diarize=True)
    if choice.isdigit() and 2 <= int(choice) <= PAGE_MAX_SPEAKERS:
        return dict(diarize=True, num_speakers=int(choice))
    raise gr.Error(
        f"Speakers: choose Off, Automatic or a number from 2 to {PAGE_MAX_SPEAKERS}, got {speakers!r}.",
        title="Speakers",
        print_exception=False,
    )


def speakers_choice(options: JobOptions) -> str:
    """The Speakers drop-down's value for a job's options (Recent jobs reopening one): its count
    where it asked for one the drop-down offers, else Automatic; Off without diarization."""
    if not options.diarize:
        return SPEAKERS_OFF
    count = options.num_speakers
    return str(count) if count is not None and 2 <= count <= PAGE_MAX_SPEAKERS else SPEAKERS_AUTO
