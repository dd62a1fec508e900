"""`python -m bench`: stock openai-whisper, this engine and faster-whisper on the same
recording, the same weights and equal decoding settings, in one run on one machine.

    pip install -r requirements-bench.txt
    python -m bench                    # CPU: tiny dimensions, fp32 and int8, 11 min and 1 h
    python -m bench --device cuda      # GPU: large-v3 dimensions, fp16 (and int8), 1 h and 11 min

The weights are random (no checkpoint can be downloaded here): an openai-whisper
checkpoint with the model's real dimensions, and the same tensors converted to
CTranslate2 for faster-whisper (bench/convert.py, checked tensor by tensor). Random weights
never emit end-of-text, so every window decodes to the token cap; the table counts the
windows and tokens each implementation actually decoded.

Settings, equal for all: greedy (temperature 0 only, hence no fallback), guards off
(compression ratio, log-prob, no-speech), condition_on_previous_text=False, timestamps
on, language "en", a cap of 100 sampled tokens per 30 s window (about what real speech
needs), batch size 16 where there is one. CTranslate2 stops at about half of the
`max_length` faster-whisper gives it (prompt + max_new_tokens), so faster-whisper gets
max_new_tokens = 2 x 100 - 3 = 197 to decode the same 100 tokens per window.

Every measurement runs in a fresh process (bench/worker.py); the implementations take
turns within each round and the order rotates between rounds, so machine load that comes
and goes hits them alike. Ratios are the median of per-round ratios against stock whisper.
Results go to docs/benchmarks.md (the section for this device is replaced).
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
from typing import Dict, List

from bench.inputs import REPO, random_checkpoint, recording
from bench.report import machine, table, targets, today
from bench.runners import RUNNERS
from bench.worker import RESULT_PREFIX

DEFAULT_IMPLS = {
    "cpu": ["whisper", "engine", "engine-int8", "engine-whisper-decode", "fw-int8", "fw-batched-int8",
            "fw-batched-fp32"],
    "cuda": ["whisper", "engine-fp16", "engine-int8", "engine-whisper-decode-fp16", "fw-fp16", "fw-batched-fp16",
             "fw-batched-int8-fp16", "engine-fp16-2jobs"],
}
ONLY_ON_HOUR = {"engine-fp16-2jobs"}  # the memory target is about two one-hour jobs
DOCS = REPO / "docs" / "benchmarks.md"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--dims", choices=["tiny", "large-v3"], default=None,
                        help="model dimensions (default: tiny on CPU, large-v3 on CUDA)")
    parser.add_argument("--inputs", nargs="+", choices=["11min", "hour"], default=None,
                        help="default: 11min hour on CPU, hour 11min on CUDA")
    parser.add_argument("--impls", nargs="+", choices=sorted(RUNNERS), default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--fw-max-new-tokens", type=int, default=None, help="default: 2 x max-new-tokens - 3")
    parser.add_argument("--repeats", type=int, default=3, help="rounds on the 11-minute recording")
    parser.add_argument("--hour-repeats", type=int, default=1, help="rounds on the hour")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (torch, CTranslate2)")
    parser.add_argument("--threshold-mb", type=float, default=5200,
                        help="gpu_memory_threshold_mb of the two-concurrent-jobs run")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "whisper-bench")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section for this device is replaced")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: publish the last results kept in the work directory")
    args = parser.parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not args.report_only and not torch.cuda.is_available():
        # before writing a 6 GB checkpoint and converting it for a run that cannot happen
        parser.error("--device cuda: PyTorch sees no CUDA device here (torch.cuda.is_available() is False)")
    args.dims = args.dims or ("tiny" if args.device == "cpu" else "large-v3")
    args.inputs = args.inputs or (["11min", "hour"] if args.device == "cpu" else ["hour", "11min"])
    args.impls = args.impls or DEFAULT_IMPLS[args.device]
    args.fw_max_new_tokens = args.fw_max_new_tokens or 2 * args.max_new_tokens - 3
    return args


def run_worker(spec: dict, timeout_s: float = 3 * 3600) -> dict:
    command = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"impl": spec["impl"], "error": f"exit {done.returncode}: {tail[0]}"}


def main(argv=None) -> int:
    args = parse(argv)
    work = args.work_dir
    if args.report_only:
        kept = [work / f"results-{args.device}-{name}.json" for name in args.inputs]
        publish(args, {path.stem.rsplit("-", 1)[1]: json.loads(path.read_text()) for path in kept if path.is_file()})
        return 0
    checkpoint = random_checkpoint(args.dims, work)
    ct2_dir = ""
    if any(impl.startswith("fw-") for impl in args.impls):
        from bench.convert import convert

        ct2_dir = str(convert(checkpoint, work / f"ct2-{checkpoint.stem}"))
    runs: Dict[str, Dict[str, List[dict]]] = {}
    for name in args.inputs:
        audio = recording(name, work)
        impls = [i for i in args.impls if name == "hour" or i not in ONLY_ON_HOUR]
        runs[name] = {impl: [] for impl in impls}
        rounds = args.repeats if name == "11min" else args.hour_repeats
        for round_index in range(rounds):
            shift = round_index % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                spec = dict(impl=impl, audio=str(audio), checkpoint=str(checkpoint), ct2_dir=ct2_dir,
                            device=args.device, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            fw_max_new_tokens=args.fw_max_new_tokens, threads=args.threads,
                            memory_threshold_mb=args.threshold_mb if impl in ONLY_ON_HOUR else None)
                started = time.perf_counter()
                result = run_worker(spec)
                runs[name][impl].append(result)
                shown = result.get("error") or f"{result['wall_s']:.1f} s, {result['windows']} windows, {result['tokens']} tokens"
                print(f"[{name} round {round_index + 1}/{rounds}] {impl}: {shown} "
                      f"({time.perf_counter() - started:.0f} s with loading)", flush=True)
    measured = {name: {"measured": today(), "runs": by_impl} for name, by_impl in runs.items()}
    for name, kept in measured.items():
        (work / f"results-{args.device}-{name}.json").write_text(json.dumps(kept, indent=1))
    publish(args, measured)
    return 0


def publish(args: argparse.Namespace, measured: Dict[str, dict]) -> None:
    """Print each input's section, and replace it in the results file (one section per
    device and input, so `--inputs hour` leaves the 11-minute results in place).
    `measured`: input -> {"measured": when, "runs": impl -> [measurement, ...]}."""
    for name, kept in measured.items():
        markdown = render(args, name, kept["runs"], kept["measured"])
        print("\n" + markdown)
        if not args.no_docs:
            write_section(args.docs, f"{args.device}:{name}", markdown)
            print(f"\nwritten to {args.docs}")


TITLES = {"11min": "the 11-minute recording (677.7 s)", "hour": "one hour (the recording repeated, 3600 s)"}


def render(args: argparse.Namespace, name: str, by_impl: Dict[str, List[dict]], measured: str) -> str:
    cuda = args.device == "cuda"
    labels = {impl: (RUNNERS[impl][0], _precision(impl, cuda)) for impl in by_impl}
    rounds = max(len(runs) for runs in by_impl.values())
    command = "python -m bench" + (" --device cuda" if cuda else "")
    lines = [f"### {'GPU' if cuda else 'CPU'}, {args.dims} dimensions: {TITLES[name]}", "",
             f"`{command}` — measured {measured}; {rounds} round{'s' if rounds > 1 else ''}. Machine: {machine(args.device)}. "
             f"Batch size {args.batch_size}, {args.max_new_tokens} tokens per window (faster-whisper: "
             f"max_new_tokens={args.fw_max_new_tokens}), {args.threads} CPU threads.",
             "", table(by_impl, labels, cuda), ""]
    checks = targets({name: by_impl}, cuda)
    if checks:
        lines += ["Targets:", ""] + [f"- {'met' if met else '**missed**'}: {target} — measured {value}"
                                     for target, value, met in checks] + [""]
    return "\n".join(lines)


def _precision(impl: str, cuda: bool) -> str:
    precision = RUNNERS[impl][1]
    if impl == "whisper":
        return "fp16 (fp32 weights)" if cuda else "fp32"
    return precision


def write_section(path: Path, device: str, markdown: str) -> None:
    """Replace this device's section of the results file (between its markers)."""
    start, end = f"<!-- bench:{device} -->", f"<!-- /bench:{device} -->"
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
