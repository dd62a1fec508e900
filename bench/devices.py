"""`python -m bench.devices`: one process decoding on one device, then on several, same jobs.

    python -m bench.devices --device-index all                   # a GPU box: cuda:0 alone, then every GPU
    python -m bench.devices --device-index 0,1,2,3 --model large-v3 --input 5min --jobs 16
    python -m bench.devices --cpu-replicas 2 --input jfk --jobs 4 --no-docs   # no GPU: the code path only

`--jobs` copies of the recording are submitted at once to one Engine (no job store, no HTTP),
first with the first device alone, then with all of them (`device_index` as given; without a
GPU, `cpu_replicas` model replicas that share the cores, so the second run shows the routing
works, not a speed-up). Each run is a fresh process with `workers` (jobs at once per device)
from `--workers-per-device` (2), so N devices run 2N jobs at once. Wall time from the first submit to the
last result, as jobs and hours of audio per hour, and how many jobs ran on each device.

Results go to docs/benchmarks.md between `<!-- bench:devices-<cuda|cpu> -->` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DOCS = REPO / "docs" / "benchmarks.md"
SHARED = REPO.parent / "shared" / "audio"
INPUTS = {"jfk": SHARED / "jfk" / "jfk.flac", "5min": SHARED / "long" / "lj050_0159_5min.mp3"}


def child(run: dict) -> None:
    """One measurement in this process: print its figures as one line of JSON."""
    from engine import Engine, load_settings

    settings = load_settings(None, run["settings"], environ={})
    engine = Engine(settings)  # loads the model on every device before the clock starts
    try:
        started = time.perf_counter()
        handles = [engine.submit(run["recording"], name=f"{i}") for i in range(run["jobs"])]
        audio_s = sum(handle.result().duration for handle in handles)
        wall = time.perf_counter() - started
        devices = {d.device: d.finished_jobs for d in engine.status().devices}
    finally:
        engine.close(drain=False, timeout=10)
    print(json.dumps(dict(wall_s=wall, audio_s=audio_s, devices=devices)), flush=True)


def measure(args, devices: int, device_index) -> dict:
    values = dict(
        model=args.model,
        language="en",
        workers=args.workers_per_device,
        queue_size=max(16, args.jobs),
    )
    if args.cpu_replicas:
        values.update(device="cpu", precision="fp32", cpu_replicas=devices)
    else:
        values.update(device="cuda", device_index=device_index)
    run = dict(settings=values, recording=str(args.recording), jobs=args.jobs)
    out = subprocess.run(
        [sys.executable, "-m", "bench.devices", "--child", json.dumps(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the run on {devices} device(s) failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{devices} device(s): {result['wall_s']:.1f} s, jobs per device {result['devices']}", flush=True)
    return dict(result, count=devices, workers=values["workers"] * devices)


def report(args, command: str, machine: str, loads: tuple, runs: list[dict]) -> str:
    from bench.report import today

    lines = [
        f"## One process, 1 against {runs[-1]['count']} devices ({args.kind})",
        "",
        f"`{command}` — measured {today()}. Machine: {machine}. Load average (1 min) "
        f"{loads[0]:.1f} before, {loads[1]:.1f} after. Model: {args.model_label}; input: {args.input}; "
        f"{args.jobs} jobs submitted at once to one Engine.",
        "",
        "| devices | workers | wall s | jobs / hour | hours of audio / hour | jobs per device |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['count']} | {r['workers']} | {r['wall_s']:.1f} | {args.jobs / r['wall_s'] * 3600:,.0f} | "
            f"{r['audio_s'] / r['wall_s']:.1f} | {', '.join(f'{d}: {n}' for d, n in r['devices'].items())} |"
        )
    if args.cpu_replicas:
        lines += ["", "CPU replicas share the same cores: this checks the routing, it is not a speed-up."]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.devices", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--device-index", default="all", help='GPUs: "all" or a list, e.g. 0,1 (default all)')
    where.add_argument("--cpu-replicas", type=int, help="no GPU: this many CPU replicas against one")
    parser.add_argument("--model", help="a model name or path (default: the real tiny.en weights)")
    parser.add_argument("--input", choices=sorted(INPUTS), default="5min")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--workers-per-device", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.child:
        child(json.loads(args.child))
        return
    import torch

    from bench.__main__ import write_section
    from bench.inputs import tiny_en_dir
    from bench.report import machine

    args.kind = "cpu" if args.cpu_replicas else "cuda"
    args.model_label = args.model or "tiny.en (real weights)"
    args.model = args.model or str(tiny_en_dir())
    args.recording = INPUTS[args.input]
    if args.cpu_replicas:
        many = [(1, None), (args.cpu_replicas, None)]
    else:
        indices = (
            list(range(torch.cuda.device_count()))
            if args.device_index == "all"
            else [int(i) for i in args.device_index.split(",")]
        )
        if not indices:
            raise SystemExit("no CUDA GPU is visible: use --cpu-replicas N on this machine")
        many = [(1, indices[0]), (len(indices), indices)]
    command = "python -m bench.devices " + " ".join(argv if argv is not None else sys.argv[1:])
    before = os.getloadavg()[0]
    runs = [measure(args, count, index) for count, index in many]
    markdown = report(args, command.strip(), machine(args.kind), (before, os.getloadavg()[0]), runs)
    print(markdown)
    if not args.no_docs:
        write_section(DOCS, f"devices-{args.kind}", markdown)


if __name__ == "__main__":
    main()
