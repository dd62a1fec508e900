"""`python -m bench.first_output`: how soon a long job shows something, on real tiny.en.

The 5-minute recording goes to an engine built from config.yaml (the model replaced by real
tiny.en, CPU fp32; batch_size 8, VAD and whisper's decoding defaults as configured), as the
page and the API submit it, and is followed as they follow it:

- plain: the progress that the page's bar and `/v1/jobs` show (`handle.seconds_done`);
- stream: the job as `stream=true` serves it, through ui.routes.streaming's own response (its
  event generator, which polls `handle.segments_so_far()` every 0.1 s), timed per event.

Reported per run (medians over the rounds): seconds from the job's start (a worker took it;
reading the audio and VAD come first) and from its first decode (the first window's encoder
pass) to the first progress change and to the first delta; the deltas, and how many came
only once the job was done; the job's time; whether the transcript is the baseline's token
for token. `--baseline REF` measures that git revision too, in the same run (its files
extracted with `git archive` into a temporary folder; the rounds alternate between the two
trees, every measurement in a fresh process). `--docs` replaces this command's section of
docs/benchmarks.md.

    python -m bench.first_output --baseline main --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.inputs import REPO, SHARED_AUDIO, tiny_en_dir

FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"
MODES = ("plain", "stream")
POLL_S = 0.02  # how often the plain run looks at the progress (the page looks every 0.25 s)
RESULT_PREFIX = "FIRST-OUTPUT "
SECTION = "cpu:tiny.en:first-output"


# -- one measurement, in a fresh process whose `engine` and `ui` come from `tree` -------------
def measure(tree: Path, mode: str) -> dict:
    sys.path.insert(0, str(tree))
    from engine import Engine, load_settings
    from engine.decoding.greedy_decode import GreedyDecode

    first_decode: list[float] = []
    admit = GreedyDecode.admit

    def noting_admit(decode, *args, **kwargs):  # called through: only the first call's time is kept
        if not first_decode:
            first_decode.append(time.monotonic())
        return admit(decode, *args, **kwargs)

    GreedyDecode.admit = noting_admit
    data_dir = tempfile.mkdtemp(prefix="first-output-")
    overrides = dict(model=str(tiny_en_dir()), device="cpu", precision="fp32", data_dir=data_dir)
    settings = load_settings(tree / "config.yaml", overrides, environ={})
    from ui.routes.streaming import streaming_response  # the web side loaded, as in the server

    with Engine(settings) as engine:
        from engine import load_audio

        engine.transcribe(load_audio(FIVE_MIN)[: 16000 * 10])  # VAD and kernels loaded, as on a used server
        first_decode.clear()
        submitted = time.monotonic()
        handle = engine.submit(FIVE_MIN)
        if mode == "plain":
            first_progress = None
            while not handle.done():
                if first_progress is None and handle.seconds_done > 0:
                    first_progress = time.monotonic()
                time.sleep(POLL_S)
            events: list[tuple] = []
        else:
            events = asyncio.run(_stream(streaming_response(handle, False)))
            first_progress = None
        result = handle.result()
        done = handle.finished_at - handle.submitted_at + submitted  # on the monotonic clock
    started = handle.started_at - handle.submitted_at + submitted
    deltas = [t for kind, t in events if kind == "transcript.text.delta"]
    fingerprint = hashlib.sha1(
        json.dumps([(round(s.start, 2), round(s.end, 2), s.tokens) for s in result.segments]).encode()
    ).hexdigest()[:12]

    def since(t: float | None, origin: float | None) -> float | None:
        return None if t is None or origin is None else round(t - origin, 2)

    first = first_progress if mode == "plain" else (deltas[0] if deltas else None)
    return dict(
        mode=mode,
        from_start_s=since(first, started),
        from_decode_s=since(first, first_decode[0] if first_decode else None),
        job_s=round(done - started, 2),
        deltas=len(deltas),
        deltas_at_end=sum(t >= done for t in deltas),
        fingerprint=fingerprint,
        load=os.getloadavg()[0],
    )


async def _stream(response) -> list[tuple]:
    events = []
    async for chunk in response.body_iterator:
        body = json.loads(chunk.decode().removeprefix("data: "))
        events.append((body.get("type", "error"), time.monotonic()))
    return events


# -- the run: trees and modes in alternation --------------------------------------------------
def run_child(tree: Path, mode: str) -> dict:
    command = [sys.executable, "-m", "bench.first_output", "--child", str(tree), "--mode", mode]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    line = next((line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len(RESULT_PREFIX) :])


def extract(ref: str, into: Path) -> Path:
    """The files of git revision `ref` (no worktree, nothing written to the repository)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True)
    archive = archive.stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _median(values: list[float | None], digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.{digits}f}" if values else "none"


def table(runs: dict[str, list[dict]], names: dict[str, str]) -> str:
    lines = [
        "| tree | follows | first change after job start s | after first decode s "
        "| deltas (at the end) | job s | transcript |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    baseline = runs.get("baseline", [])
    reference = {m: next((r["fingerprint"] for r in baseline if r["mode"] == m), None) for m in MODES}
    for tree, rows in runs.items():
        for mode in MODES:
            mine = [r for r in rows if r["mode"] == mode]
            if not mine:
                continue
            what = "progress (page, /v1/jobs)" if mode == "plain" else "first delta (stream=true)"
            at_end = _median([r["deltas_at_end"] for r in mine], 0)
            deltas = f"{_median([r['deltas'] for r in mine], 0)} ({at_end})" if mode == "stream" else ""
            prints = {r["fingerprint"] for r in mine}
            same = (
                ""
                if reference[mode] is None or tree == "baseline"
                else "same as baseline"
                if prints == {reference[mode]}
                else "DIFFERS"
            )
            lines.append(
                f"| {names[tree]} | {what} | {_median([r['from_start_s'] for r in mine])} | "
                f"{_median([r['from_decode_s'] for r in mine])} | {deltas} | "
                f"{_median([r['job_s'] for r in mine])} | {same or ', '.join(sorted(prints))} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_output", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision to measure in the same run (e.g. main)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", action="store_true", help="replace its section of docs/benchmarks.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(measure(args.child, args.mode)), flush=True)
        return 0
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    names = {"this": f"this checkout ({head}{' + changes' if dirty else ''})"}
    with tempfile.TemporaryDirectory(prefix="first-output-baseline-") as folder:
        trees = {"this": REPO}
        if args.baseline:
            trees = {"baseline": extract(args.baseline, Path(folder)), **trees}
            resolved = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
                capture_output=True,
                text=True,
            ).stdout.strip()
            same = args.baseline.startswith(resolved)
            names["baseline"] = f"baseline ({args.baseline}{'' if same else ', ' + resolved})"
        loads = [os.getloadavg()[0]]
        runs: dict[str, list[dict]] = {tree: [] for tree in trees}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for tree in order:
                for mode in MODES:
                    row = run_child(trees[tree], mode)
                    runs[tree].append(row)
                    loads.append(row["load"])
                    print(f"round {round_ + 1}, {names[tree]}, {mode}: {row}", flush=True)
    from bench.report import machine, today

    markdown = (
        f"`python -m bench.first_output{f' --baseline {args.baseline}' if args.baseline else ''} "
        f"--rounds {args.rounds}` on {today()}; {machine('cpu')}; load average (1 min) "
        f"{min(loads):.1f} to {max(loads):.1f} during the run (its own process included). "
        f"Medians of {args.rounds} rounds.\n\n" + table(runs, names)
    )
    print("\n" + markdown)
    if args.docs:
        from bench.__main__ import DOCS, write_section

        write_section(
            DOCS,
            SECTION,
            "### CPU, real tiny.en: first progress and first streamed text "
            "(the 5-minute recording)\n\n" + markdown,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
