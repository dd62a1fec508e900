"""The page's layout: the Blocks and its components, where each sits and what it says; no events.

    with page_layout(settings, model_ids, default_model, on_gpu) as page:
        page.transcribe_button.click(...)          # ui/page/wiring.py connects the handlers

The Blocks stays open while the caller holds `page`, so events can be connected and more
sections (the recent jobs) added below the transcript. Every component keeps its `elem_id`:
assets/app.css styles the page by them and the browser tests drive it by them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine import Settings, language_choices
from ui.page.files import KEEP_CACHE_S
from ui.page.form import (
    AUTO_LANGUAGE,
    CUE_S_RANGE,
    LINE_WIDTH_RANGE,
    LINES_RANGE,
    SPEAKER_CHOICES,
    SPEAKERS_OFF,
    TEMPERATURE_RANGE,
)
from ui.page.sidebar import model_choices, release_label, sidebar_title

CSS_PATH = Path(__file__).resolve().parents[2] / "assets" / "app.css"  # passed to launch(css_paths=...)
TITLE = "Speech to text"
# Room for "Detect automatically" (and a model id such as large-v3-turbo) beside the drop-down's
# arrow: a row that cannot give a drop-down this much puts it on a line of its own (a phone).
CHOICE_MIN_PX = 220
# Uploads hold people's recordings: Gradio looks every hour and deletes its copies older than this.
DELETE_CACHE = (3600, int(KEEP_CACHE_S))


@dataclass
class PageLayout:
    """The components the page's events read and write (see the module docstring)."""

    demo: gr.Blocks
    # the sidebar
    gpu_panel: gr.HTML
    release_button: gr.Button
    release_report: gr.Markdown
    model_state: gr.HTML  # the line above the form: the picked model's state
    # the form
    audio: gr.Audio
    language: gr.Dropdown
    task: gr.Radio
    timestamps: gr.Checkbox
    model: gr.Dropdown
    speakers: gr.Dropdown  # Off / Automatic / 2..8: diarization and its count
    word_timestamps: gr.Checkbox
    vad: gr.Checkbox
    prompt: gr.Textbox
    temperature: gr.Number
    max_line_width: gr.Number
    max_lines: gr.Number
    max_cue_s: gr.Number
    per_segment: gr.Checkbox
    transcribe_button: gr.Button
    cancel_button: gr.Button
    notice: gr.HTML  # a refusal stays here, beside the button that asked, until the next Transcribe
    # the result
    transcript: gr.Textbox
    segments: gr.HTML
    speaker_panel: gr.Group  # shown for a diarized result: rename a speaker
    speaker_job: gr.Textbox  # hidden: the id of the job whose result is shown (never its result)
    speaker_choice: gr.Dropdown
    speaker_name: gr.Textbox
    rename_button: gr.Button
    speaker_notice: gr.HTML  # a refused rename says why here
    details: gr.Markdown
    files: gr.File

    @property
    def speaker_outputs(self) -> list:
        """The speaker panel's components, in the order SpeakerEvents.panel updates them."""
        return [
            self.speaker_panel,
            self.speaker_job,
            self.speaker_choice,
            self.speaker_name,
            self.speaker_notice,
        ]

    @property
    def subtitle_inputs(self) -> list:
        """The fields that shape the srt and vtt downloads, in subtitle_options' order."""
        return [self.max_line_width, self.max_lines, self.max_cue_s, self.per_segment]


@contextmanager
def page_layout(
    settings: Settings, model_ids: Sequence[str], default_model: str, on_gpu: bool
) -> Iterator[PageLayout]:
    """The page for `settings`, offering the models by their public ids (`model_ids`, the
    drop-down's choices, `default_model` picked); the sidebar speaks of GPU memory `on_gpu`,
    else of the models' memory."""
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        sidebar = _sidebar(on_gpu)
        gr.Markdown(
            f"# {TITLE}\nUpload a recording or record one with your microphone, then press "
            "**Transcribe**. Long recordings are cut into sections at their pauses and decoded side "
            "by side.",
            elem_id="page-intro",
        )
        model_state = gr.HTML(elem_id="model-state-container")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                form = _form(settings, model_ids, default_model)
            with gr.Column(scale=1):
                result = _result()
        yield PageLayout(demo=demo, model_state=model_state, **sidebar, **form, **result)


def _sidebar(on_gpu: bool) -> dict:
    with gr.Sidebar(label=sidebar_title(on_gpu), open=True, elem_id="sidebar"):
        gr.Markdown(f"### {sidebar_title(on_gpu)}")
        gpu_panel = gr.HTML(elem_id="gpu-panel-container")
        release_button = gr.Button(release_label(on_gpu), variant="secondary", elem_id="release-button")
        release_report = gr.Markdown(elem_id="release-report")
    return dict(gpu_panel=gpu_panel, release_button=release_button, release_report=release_report)


def _form(settings: Settings, model_ids: Sequence[str], default_model: str) -> dict:
    audio = gr.Audio(
        sources=["upload", "microphone"], type="filepath", label="Recording", elem_id="audio-input"
    )
    with gr.Row():
        language = gr.Dropdown(
            [("Detect automatically", AUTO_LANGUAGE), *language_choices().items()],
            value=settings.language or AUTO_LANGUAGE,
            label="Language",
            elem_id="language",
            min_width=CHOICE_MIN_PX,
        )
        task = gr.Radio(
            ["transcribe", "translate"],
            value=settings.task,
            label="Task",
            info="translate = into English",
            elem_id="task",
        )
    with gr.Row():
        timestamps = gr.Checkbox(value=True, label="Timestamps", elem_id="timestamps")
        # ids, never the configured paths: the page's configuration reaches every browser
        model = gr.Dropdown(
            model_choices(model_ids),
            value=default_model,
            label="Model",
            interactive=len(settings.allowed_models) > 1,
            elem_id="model",
            min_width=CHOICE_MIN_PX,
        )
    speakers = gr.Dropdown(
        SPEAKER_CHOICES,
        value=SPEAKERS_OFF,
        label="Speakers",
        info="Who spoke when: each turn labelled A, B, … (rename them under the transcript). "
        "Automatic finds how many; a number is used exactly. Adds word timings.",
        elem_id="speakers",
        min_width=CHOICE_MIN_PX,
    )
    with gr.Accordion("Advanced options", open=False, elem_id="advanced-options"):
        advanced = _advanced_options(settings)
    with gr.Row():
        transcribe_button = gr.Button("Transcribe", variant="primary", scale=3, elem_id="transcribe-button")
        cancel_button = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel-button")
    notice = gr.HTML(elem_id="transcribe-notice")
    return dict(
        audio=audio,
        language=language,
        task=task,
        timestamps=timestamps,
        model=model,
        speakers=speakers,
        **advanced,
        transcribe_button=transcribe_button,
        cancel_button=cancel_button,
        notice=notice,
    )


def _advanced_options(settings: Settings) -> dict:
    with gr.Row():
        word_timestamps = gr.Checkbox(
            value=False,
            label="Word timestamps",
            elem_id="word-timestamps",
            info="Times for every word: shown in the segments view and kept in the json download; "
            "srt/vtt cues then start and end with their words. Without it the subtitle times "
            "are estimated from the segments' times. A little slower.",
        )
        vad = gr.Checkbox(
            value=settings.vad,
            label="Skip non-speech (voice activity detection)",
            elem_id="vad",
            info="Decode only what sounds like speech: music, noise and long silences are skipped.",
        )
    with gr.Row():
        prompt = gr.Textbox(
            label="Initial prompt",
            lines=2,
            max_lines=6,
            scale=3,
            elem_id="prompt",
            placeholder="e.g. Kubernetes meeting, with Dr. Nguyen and Siobhán.",
            info="Text the model reads before the recording: names, spelling and style "
            "to follow. Empty: the config's initial_prompt.",
        )
        temperature = gr.Number(
            value=0,
            label="Temperature",
            step=0.1,
            scale=1,
            elem_id="temperature",
            info=f"{TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g}. 0 or empty: greedy, "
            "hotter only where a window fails a check (the config's fallback ladder); "
            "above 0: sampled at exactly this temperature.",
        )
    gr.Markdown("**Subtitles** (the srt and vtt downloads)")
    with gr.Row():
        max_line_width = gr.Number(
            value=settings.subtitle_max_line_width,
            precision=0,
            label="Max characters per line",
            elem_id="subtitle-width",
            info=f"{LINE_WIDTH_RANGE[0]} to {LINE_WIDTH_RANGE[1]}",
        )
        max_lines = gr.Number(
            value=settings.subtitle_max_lines,
            precision=0,
            label="Max lines per cue",
            elem_id="subtitle-lines",
            info=f"{LINES_RANGE[0]} to {LINES_RANGE[1]}",
        )
        max_cue_s = gr.Number(
            value=settings.subtitle_max_cue_s,
            label="Max seconds per cue",
            elem_id="subtitle-seconds",
            info=f"{CUE_S_RANGE[0]:g} to {CUE_S_RANGE[1]:g}",
        )
    per_segment = gr.Checkbox(
        value=settings.subtitle_per_segment,
        label="One cue per segment (plain)",
        elem_id="subtitle-per-segment",
        info="Whisper's own files: each segment one cue on one line, "
        "whatever its length; the limits above are then ignored.",
    )
    return dict(
        word_timestamps=word_timestamps,
        vad=vad,
        prompt=prompt,
        temperature=temperature,
        max_line_width=max_line_width,
        max_lines=max_lines,
        max_cue_s=max_cue_s,
        per_segment=per_segment,
    )


def _result() -> dict:
    transcript = gr.Textbox(
        label="Transcript", lines=14, max_lines=40, buttons=["copy"], interactive=False, elem_id="transcript"
    )
    segments = gr.HTML(elem_id="segments")
    speakers = _speaker_panel()
    details = gr.Markdown(label="Details", elem_id="details")
    files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
    return dict(transcript=transcript, segments=segments, **speakers, details=details, files=files)


def _speaker_panel() -> dict:
    with gr.Group(visible=False, elem_id="speaker-panel") as speaker_panel:
        speaker_job = gr.Textbox(visible=False, elem_id="speaker-job")
        with gr.Row(equal_height=True):
            speaker_choice = gr.Dropdown(
                [], label="Speaker", elem_id="speaker-choice", scale=1, min_width=140, interactive=True
            )
            speaker_name = gr.Textbox(
                label="Name",
                placeholder="e.g. Ada; empty: back to the letter",
                max_length=80,  # longer is refused with a message (jobs.MAX_SPEAKER_NAME_CHARS)
                elem_id="speaker-name",
                scale=2,
            )
            rename_button = gr.Button("Rename", elem_id="rename-button", scale=1, min_width=100)
    speaker_notice = gr.HTML(elem_id="speaker-notice")  # outside the group: empty, it takes no room
    return dict(
        speaker_panel=speaker_panel,
        speaker_job=speaker_job,
        speaker_choice=speaker_choice,
        speaker_name=speaker_name,
        rename_button=rename_button,
        speaker_notice=speaker_notice,
    )
