"""The GPU panel of the sidebar: plain HTML built from the engine's monitor and status.

Pure functions of a `GpuSnapshot` and an `EngineStatus`, so they are tested without a
server; the sidebar's events (ui/page/sidebar_events.py) call them, its timer every
`REFRESH_S` seconds. Every value that can come from outside (GPU names, model paths, error
messages) is escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable

from engine import EngineStatus, GpuSnapshot, ReleaseReport, model_id

REFRESH_S = 2.0  # sidebar refresh period; one nvidia-smi call per open page at worst


def sidebar_title(on_gpu: bool) -> str:
    return "GPU memory" if on_gpu else "Memory"


def release_label(on_gpu: bool) -> str:
    """The release button: on a CPU there is no GPU memory to release, only the models' RAM."""
    return "Release GPU memory" if on_gpu else "Release model memory"


def process_rss_mb() -> float | None:
    """This process's resident memory (RSS) in MiB; None where it cannot be read."""
    try:
        import psutil  # optional; /proc answers on Linux without it

        return psutil.Process().memory_info().rss / (1024 * 1024)
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def model_label(name: str) -> str:
    """A model as users should see it: its id, as the API names it ('large-v3', a checkpoint's
    stem, a model directory's name), never its path."""
    return model_id(name)


def _bar(fraction: float, warn: bool) -> str:
    percent = max(0.0, min(100.0, fraction * 100.0))
    kind = " warn" if warn else ""
    return (
        f'<div class="gpu-bar{kind}" role="progressbar" aria-valuenow="{percent:.0f}" '
        f'aria-valuemin="0" aria-valuemax="100"><div style="width:{percent:.1f}%"></div></div>'
    )


def gpu_panel_html(snapshot: GpuSnapshot, status: EngineStatus, waiting: int | None = None) -> str:
    """The whole GPU panel: one card per GPU (or the reason there is none), the threshold
    warning, this process's memory, the loaded models, and the work queue (`waiting` jobs,
    the job manager's count; the engine's own queue when None)."""
    parts = ['<div class="gpu-panel" id="gpu-panel">']
    parts.append(f'<div class="gpu-device">Whisper runs on <b>{_e(status.device)}</b></div>')

    if snapshot.gpus:
        for gpu in snapshot.gpus:
            fraction = gpu.used_mb / gpu.total_mb if gpu.total_mb else 0.0
            utilisation = "n/a" if gpu.utilization is None else f"{gpu.utilization:.0f} %"
            parts.append(
                f'<div class="gpu-card{" warn" if gpu.above_threshold else ""}" data-gpu="{gpu.index}">'
                f'<div class="gpu-name">GPU {gpu.index} &middot; {_e(gpu.name)}</div>'
                f'<div class="gpu-mem">{gpu.used_mb:,.0f} / {gpu.total_mb:,.0f} MB used '
                f"({fraction:.0%})</div>"
                f"{_bar(fraction, gpu.above_threshold)}"
                f'<div class="gpu-util">Utilisation {utilisation}</div>'
                "</div>"
            )
    else:
        parts.append(f'<div class="gpu-none">{_e(snapshot.reason)}</div>')
        rss_mb = process_rss_mb()
        if rss_mb is not None:
            parts.append(f'<div class="gpu-process">This process: {rss_mb:,.0f} MB of RAM (resident)</div>')

    if snapshot.warning:
        parts.append(f'<div class="gpu-warning" role="alert">&#9888; {_e(snapshot.warning)}</div>')

    if snapshot.gpus or snapshot.process_reserved_mb:
        parts.append(
            '<div class="gpu-process">This process: '
            f"{snapshot.process_allocated_mb:,.0f} MB allocated, "
            f"{snapshot.process_reserved_mb:,.0f} MB reserved</div>"
        )

    parts.append('<div class="gpu-section">Loaded models</div>')
    if status.loaded:
        items = []
        for info in status.loaded:
            notes = [f"{info.weights_mb:,.0f} MB"]
            if info.offloaded:
                notes.append("offloaded to host memory")
            if info.in_use:
                notes.append(f"in use by {info.in_use} job{'s' if info.in_use != 1 else ''}")
            items.append(f"<li>{_e(model_label(info.name))} <span>({_e(', '.join(notes))})</span></li>")
        parts.append('<ul class="gpu-models">' + "".join(items) + "</ul>")
    else:
        parts.append(f'<div class="gpu-models-none">none ({_e(status.model.state)})</div>')

    parts.append(
        f'<div class="gpu-queue">Workers busy: <b>{status.busy_workers} / {status.workers}</b> &middot; '
        f"Queue: <b>{status.queue_length if waiting is None else waiting} / {status.queue_size}</b></div>"
    )
    if len(status.devices) > 1:  # several devices decode (device_index list): where the jobs run
        rows = "".join(
            f"<li><b>{_e(d.device)}</b>: {d.running_jobs} running, {d.live_windows} windows live, "
            f"{d.finished_jobs} done</li>"
            for d in status.devices
        )
        parts.append(f'<ul class="gpu-devices">{rows}</ul>')
    parts.append("</div>")
    return "".join(parts)


def model_state_html(status: EngineStatus, selected: str | None = None) -> str:
    """The line above the form: is the model loading, ready, failed (why, what to do), released.

    `selected` is the model picked in the page's drop-down; the line is about that one. The
    engine reports the default model's state; another model is ready when it is resident,
    else it loads when a recording needs it."""
    state = status.model
    if selected and selected != state.model:
        name = _e(model_label(selected))
        if any(info.name == selected for info in status.loaded):
            body = f"Model <b>{name}</b> is ready on {_e(status.device)}."
            kind = "ready"
        else:
            body = (
                f"Model <b>{name}</b> is loaded when you transcribe (the first recording waits a "
                "moment for it)."
            )
            kind = "not-loaded"
        return f'<div class="model-state state-{kind}" id="model-state">{body}</div>'
    name = _e(model_label(state.model))
    if state.state == "ready":
        body = f"Model <b>{name}</b> is ready on {_e(status.device)}."
    elif state.state in ("loading", "not loaded"):
        body = f"Model <b>{name}</b> is loading&hellip; you can already submit; your recording waits for it."
    elif state.state == "released":
        body = f"Model <b>{name}</b> was released from memory; the next transcription loads it again."
    elif state.state == "failed":
        body = (
            f"Model <b>{name}</b> could not be loaded: {_e(state.error)}<br>"
            "Fix the configuration and restart the app (python app.py)."
        )
    else:
        body = f"Model <b>{name}</b>: {_e(state.state)}"
    return f'<div class="model-state state-{_e(state.state.replace(" ", "-"))}" id="model-state">{body}</div>'


def _total_used(snapshot: GpuSnapshot) -> float | None:
    return sum(gpu.used_mb for gpu in snapshot.gpus) if snapshot.gpus else None


def release_markdown(
    report: ReleaseReport,
    before: GpuSnapshot,
    after: GpuSnapshot,
    on_gpu: bool = True,
    rss_before_mb: float | None = None,
    rss_after_mb: float | None = None,
) -> str:
    """What the release button did, with the memory before and after: GPU memory on a GPU,
    the process's resident memory (RSS) on a CPU, where GPU figures would read 0 -> 0."""
    lines = [release_headline(report)]
    if on_gpu:
        used_before, used_after = _total_used(before), _total_used(after)
        if used_before is not None and used_after is not None:
            lines.append(f"GPU memory used: {used_before:,.0f} MB → {used_after:,.0f} MB")
        lines.append(
            f"This process reserved: {report.reserved_before_mb:,.0f} MB → {report.reserved_after_mb:,.0f} MB"
        )
        if not before.gpus:
            lines.append(before.reason)
        return "\n\n".join(lines)
    if rss_before_mb is not None and rss_after_mb is not None:
        lines.append(f"This process's memory (RSS): {rss_before_mb:,.0f} MB → {rss_after_mb:,.0f} MB")
    lines.append("The next transcription loads the model again.")
    return "\n\n".join(lines)


def release_headline(report: ReleaseReport) -> str:
    """What happened to each model, plainly: freed now, or freed once the job using it ends."""
    released = _md(", ".join(model_label(name) for name in report.released))
    deferred = _md(", ".join(model_label(name) for name in report.deferred))
    verb = "are" if len(report.deferred) > 1 else "is"
    later = (
        (f"{deferred} {verb} in use by a running transcription and will be released as soon as it finishes.")
        if deferred
        else ""
    )
    if released:
        return f"**Released {released} from memory.**" + (f" {later}" if later else "")
    if later:
        return f"**Nothing was released yet: {later}**"
    return "**No model was in memory.**"


def _md(text: str) -> str:
    """Model names into Markdown as plain text."""
    return html.escape(text).replace("*", "\\*").replace("_", "\\_")


def model_choices(names: Iterable[str]):
    """(label, value) pairs for the model drop-down."""
    return [(model_label(name), name) for name in names]
