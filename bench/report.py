"""Tables and target checks from the measurements of one benchmark run."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone

REFERENCE = "whisper"  # (a): every ratio is against stock whisper.transcribe in the same run


def _median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def speedups(runs: dict[str, list[dict]], impl: str, key: str = "wall_s") -> list[float]:
    """Per-round ratios stock / impl: rounds are interleaved, so a round's two numbers saw
    similar machine load; their ratio is steadier than the times themselves."""
    reference = runs.get(REFERENCE, [])
    return [
        ref[key] / run[key]
        for ref, run in zip(reference, runs.get(impl, []))
        if "error" not in ref and "error" not in run
    ]


def summary(runs: dict[str, list[dict]], impl: str) -> dict:
    ok = [r for r in runs.get(impl, []) if "error" not in r]
    if not ok:
        return {"error": (runs.get(impl) or [{"error": "not run"}])[-1].get("error", "failed")}
    walls = [r["wall_s"] for r in ok]
    wall = statistics.median(walls)
    ratios = speedups(runs, impl)
    cpu_ratios = speedups(runs, impl, "cpu_s")
    wers = [r["wer"] for r in ok if r.get("wer") is not None]
    pick = {
        key: _median([r.get(key) for r in ok])
        for key in (
            "peak_rss_mb",
            "weights_mb",
            "peak_allocated_mb",
            "peak_reserved_mb",
            "gpu_process_peak_mb",
            "reserved_after_release_mb",
            "gpu_after_release_mb",
        )
    }
    jobs = [r["job_wall_s"] for r in ok if r.get("job_wall_s")]
    return dict(
        wall=wall,
        wall_min=min(walls),
        wall_max=max(walls),
        rounds=len(ok),
        audio_s=ok[0]["audio_s"],
        throughput=ok[0]["audio_s"] / wall,
        speedup=_median(ratios),
        speedup_range=(min(ratios), max(ratios)) if ratios else None,
        cpu_s=_median([r.get("cpu_s") for r in ok]),
        cpu_speedup=_median(cpu_ratios),
        load=_median([r.get("load") for r in ok]),
        wer=_median(wers),
        wer_range=(min(wers), max(wers)) if wers else None,
        job_wall_s=[_median(walls_of_job) for walls_of_job in zip(*jobs)] if jobs else None,
        windows=ok[0]["windows"],
        fallbacks=ok[0].get("fallbacks", 0),
        tokens=ok[0]["tokens"],
        notes=ok[0].get("notes", []),
        **pick,
    )


def _wer(s: dict) -> str:
    """WER in % (median over rounds; the range when fallback sampling made rounds differ)."""
    if s["wer"] is None:
        return "n/a"
    low, high = s["wer_range"]
    return f"{s['wer']:.2f}" + (f" ({low:.2f}–{high:.2f})" if high > low else "")


def table(runs: dict[str, list[dict]], labels: dict[str, tuple[str, str]], cuda: bool) -> str:
    head = [
        "implementation",
        "precision",
        "wall s (median; min–max)",
        "audio s / s",
        "× stock (range)",
        "WER %",
        "CPU s",
        "× stock in CPU s",
        "windows (+ fallbacks)",
        "tokens",
        "peak host MB",
        "load",
    ]
    if cuda:
        head += [
            "weights MB",
            "peak alloc. MB",
            "peak reserved MB",
            "process GPU peak MB (NVML)",
            "reserved after release MB",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for impl, (label, precision) in labels.items():
        if impl not in runs:
            continue
        s = summary(runs, impl)
        if "error" in s:
            lines.append(f"| {label} | {precision} | failed: {s['error'][:120]} |" + " |" * (len(head) - 3))
            continue
        spread = (
            f"{s['wall']:.1f} ({s['wall_min']:.1f}–{s['wall_max']:.1f})"
            if s["rounds"] > 1
            else f"{s['wall']:.1f}"
        )
        if impl == REFERENCE:
            ratio = "1.00"
        elif s["speedup"] is None:
            ratio = ""
        else:
            low, high = s["speedup_range"]
            ratio = f"**{s['speedup']:.2f}**" + (f" ({low:.2f}–{high:.2f})" if high > low else "")
        cpu_ratio = (
            "1.00" if impl == REFERENCE else ("" if s["cpu_speedup"] is None else f"{s['cpu_speedup']:.2f}")
        )
        windows = f"{s['windows']}" + (f" (+{s['fallbacks']})" if s["fallbacks"] else "")
        row = [
            label,
            precision,
            spread,
            f"{s['throughput']:.1f}",
            ratio,
            _wer(s),
            f"{s['cpu_s']:.0f}",
            cpu_ratio,
            windows,
            f"{s['tokens']:,}",
            _mb(s["peak_rss_mb"]),
            f"{s['load']:.1f}",
        ]
        if cuda:
            row += [
                _mb(s["weights_mb"]),
                _mb(s["peak_allocated_mb"]),
                _mb(s["peak_reserved_mb"]),
                _mb(s["gpu_process_peak_mb"]),
                _mb(s["reserved_after_release_mb"]),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _faster(runs, a: str, b: str) -> float | None:
    """How many times faster `a` ran than `b` (median of per-round wall ratios)."""
    pairs = [
        rb["wall_s"] / ra["wall_s"]
        for ra, rb in zip(runs.get(a, []), runs.get(b, []))
        if "error" not in ra and "error" not in rb
    ]
    return _median(pairs)


INPUT_LABELS = {"jfk": "JFK", "11min": "11 min", "hour": "1 h"}
WER_MARGIN = 0.3  # points of WER an engine row may lose against stock in the same run
RUNNER_PRECISION = {"engine": "fp32", "engine-int8": "int8", "engine-fp16": "fp16"}


def targets(all_runs: dict[str, dict[str, list[dict]]], cuda: bool) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the issue's targets that this run measured: on CPU, for
    every input, the engine at least as fast as faster-whisper's batched pipeline at the same
    batch size and precision; everywhere, each engine row's WER at most 0.3 points above
    stock's (where there is a WER: real weights); on the GPU, speed and memory on the hour."""
    checks: list[tuple[str, str, bool]] = []

    def faster(name: str, value: float | None) -> None:
        if value is not None:
            checks.append((name, f"{value:,.2f}×", value >= 1.0))

    def at_most(name: str, value: float | None, limit: float, unit: str) -> None:
        if value is not None:
            checks.append((name, f"{value:,.0f} {unit}", value <= limit))

    for name, runs in all_runs.items():
        where = INPUT_LABELS.get(name, name)
        if not cuda:
            for engine, fw, precision in (
                ("engine", "fw-batched-fp32", "fp32"),
                ("engine-int8", "fw-batched-int8", "int8"),
            ):
                faster(
                    f"CPU {where}: engine {precision} at least as fast as faster-whisper batched {precision} "
                    "(same batch)",
                    _faster(runs, engine, fw),
                )
        stock = summary(runs, REFERENCE).get("wer")
        for engine in ("engine", "engine-int8", "engine-fp16"):
            wer = summary(runs, engine).get("wer") if engine in runs else None
            if stock is not None and wer is not None:
                checks.append(
                    (
                        f"{'GPU' if cuda else 'CPU'} {where}: engine {RUNNER_PRECISION[engine]} WER at most "
                        f"{WER_MARGIN} points above stock's",
                        f"{wer - stock:+.2f} points ({wer:.2f} % against {stock:.2f} %)",
                        wer - stock <= WER_MARGIN,
                    )
                )
    if cuda:
        runs = all_runs.get("hour", {})
        speedup = summary(runs, "engine-fp16").get("speedup")
        if speedup is not None:
            checks.append(("GPU 1 h: engine fp16 ≥ 10× stock", f"{speedup:,.2f}×", speedup >= 10.0))
        faster(
            "GPU 1 h: engine fp16 ≥ faster-whisper batched fp16 (same batch)",
            _faster(runs, "engine-fp16", "fw-batched-fp16"),
        )
        engine = summary(runs, "engine-fp16")
        at_most("GPU: resident weights ≤ 3.2 GB", engine.get("weights_mb"), 3200, "MB")
        two = summary(runs, "engine-fp16-2jobs")
        at_most(
            "GPU: two concurrent 1 h jobs, peak reserved ≤ 5.2 GB", two.get("peak_reserved_mb"), 5200, "MB"
        )
        at_most("GPU: reserved after release ≤ 300 MB", engine.get("reserved_after_release_mb"), 300, "MB")
    return checks


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GB RAM"
    except ImportError:
        memory = ""
    parts = [f"{cpu}, {torch.get_num_threads()} threads", memory]
    if device == "cuda":
        parts.append(torch.cuda.get_device_name(0))
    versions = []
    for module in ("torch", "whisper", "faster_whisper", "ctranslate2"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except Exception:
            pass
    return (
        "; ".join(p for p in parts if p)
        + "; "
        + ", ".join(versions)
        + f"; Python {platform.python_version()}"
    )


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
