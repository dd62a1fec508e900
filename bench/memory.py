"""`python -m bench.memory`: host memory a job holds, per hour of audio, on the engine's real path.

Each case runs in a fresh process (`--case`, so peaks and allocator state are its own): an
Engine on the CPU (fp32, one worker, real tiny.en weights, or `--weights micro` for a random
micro checkpoint where only memory matters), warmed by one JFK job (model, Silero and the
allocator's pools loaded), then the case's file submitted as a server submits it and its
result (or error) awaited. The process's resident memory (VmRSS) is sampled every 10 ms
from a thread; the table gives

- peak MB: the highest RSS while the job ran, over the RSS after the warm-up job;
- after MB: RSS a second after the job has finished, the handle (and its error) still referenced, as a
  waiting client or the job manager holds it, and the periodic collector kept off
  (`gc.disable()`), so a reference cycle shows as memory that stays;
- after gc MB: the same after an explicit `gc.collect()`.

Inputs are built with ffmpeg in the work directory (never in the repository):
- `refused-7h`: 7 h of silence as an 8 kbit/s mp3 without a Xing/Info header (25 MB; ffprobe
  can only estimate its length from the bitrate), refused at `max_audio_duration_s`' default
  (6 h); submitted three times in a row, the after figure is the last one.
- `silence-3h`: 3 h of silence as 16 kHz flac (2 MB), VAD on and off.
- `speech-1h`: the 11-minute LJSpeech recording repeated to one hour (bench/inputs.py), VAD on and off.

`--engine-root DIR` imports `engine` from another checkout (e.g. `git archive` of an older
commit), so a change can be compared with the code before it in one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "MEMORY-RESULT "
CASES = ("refused-7h", "silence-3h-vad", "silence-3h-novad", "speech-1h-vad", "speech-1h-novad")
REFUSED_REPEATS = 3
SAMPLE_S = 0.01
SETTLE_S = 1.0  # the decode loop's thread ends its last step a moment after the client has the result


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


class PeakSampler:
    """The highest RSS seen, sampled from a thread while a job runs."""

    def __init__(self):
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def build_inputs(work_dir: Path) -> dict[str, Path]:
    """The three recordings, written once in `work_dir` and reused by later runs."""
    sys.path.insert(0, str(REPO))
    from bench.inputs import recording

    work_dir.mkdir(parents=True, exist_ok=True)
    undeclared = work_dir / "silence-7h-no-xing.mp3"
    if not undeclared.is_file():
        _ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "25200",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "8k",
            "-write_xing",
            "0",
            str(undeclared) + ".partial.mp3",
        )
        os.rename(str(undeclared) + ".partial.mp3", undeclared)
    silent = work_dir / "silence-3h.flac"
    if not silent.is_file():
        _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "10800", str(silent) + ".partial.flac")
        os.rename(str(silent) + ".partial.flac", silent)
    return {"refused-7h": undeclared, "silence-3h": silent, "speech-1h": recording("hour", work_dir)}


def run_case(case: str, path: Path, weights: str, work_dir: Path) -> dict:
    """One case in this process (the `--case` child)."""
    from bench.inputs import JFK
    from engine import Engine, load_settings  # from --engine-root, put first on sys.path by main()

    model = _weights(weights, work_dir)
    values = dict(model=str(model), device="cpu", precision="fp32", workers=1, vad=case.endswith("-vad"))
    # random weights fail every guard: one short greedy decode per window is enough here
    if weights == "micro":
        values.update(temperatures=[0.0], max_new_tokens=24)
    settings = load_settings(None, values, environ={})
    engine = Engine(settings)
    engine.transcribe(str(JFK), language="en")
    gc.collect()
    gc.disable()  # what stays after a job must be freed by reference counting alone
    baseline = rss_mb()
    held: list[object] = []  # handles and errors, as a waiting client or the job manager keeps them
    after: list[float] = []
    started = time.perf_counter()
    outcome = ""
    with PeakSampler() as sampler:
        for _ in range(REFUSED_REPEATS if case == "refused-7h" else 1):
            try:
                handle = engine.submit(str(path), language="en")
                held.append(handle)
                result = handle.result()
                outcome = f"done, {len(result.segments)} segments, {result.duration / 3600:.2f} h"
            except Exception as error:  # refused at submission (header) or by the job (decoding)
                held.append(error)
                outcome = f"{type(error).__name__}: {str(error)[:60]}"
            time.sleep(SETTLE_S)
            after.append(rss_mb() - baseline)
    seconds = time.perf_counter() - started
    gc.enable()
    gc.collect()
    after_gc = rss_mb() - baseline
    engine.close()
    return dict(
        case=case,
        outcome=outcome,
        seconds=round(seconds, 1),
        baseline_mb=round(baseline),
        peak_mb=round(sampler.peak - baseline),
        after_mb=[round(a) for a in after],
        after_gc_mb=round(after_gc),
    )


def _weights(weights: str, work_dir: Path) -> Path:
    if weights == "tiny.en":
        from bench.inputs import tiny_en_dir

        return tiny_en_dir()
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoints import write_checkpoint

    path = work_dir / "micro.pt"
    if not path.is_file():
        write_checkpoint(path, "micro")
    return path


def _child(case: str, path: Path, args) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.memory",
        "--case",
        case,
        "--input",
        str(path),
        "--weights",
        args.weights,
        "--work-dir",
        str(args.work_dir),
        "--engine-root",
        str(args.engine_root),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"case {case} failed:\n{done.stderr[-3000:]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    parser.add_argument("--weights", choices=("tiny.en", "micro"), default="tiny.en")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "whisper-bench")
    parser.add_argument(
        "--engine-root", type=Path, default=REPO, help="the checkout whose engine is measured"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.engine_root = args.engine_root.resolve()
    if args.case:  # the child: one case, one line of JSON
        sys.path.insert(0, str(args.engine_root))
        print(
            RESULT_PREFIX + json.dumps(run_case(args.case, args.input, args.weights, args.work_dir)),
            flush=True,
        )
        return
    inputs = build_inputs(args.work_dir)
    print(
        f"engine from {args.engine_root}; weights {args.weights}; "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "| case | outcome | s | peak MB over baseline | after MB (each request) | after gc MB | baseline MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        source = inputs[case.rsplit("-", 1)[0] if case != "refused-7h" else case]
        r = _child(case, source, args)
        print(
            f"| {case} | {r['outcome']} | {r['seconds']} | {r['peak_mb']:,} | "
            f"{' / '.join(f'{a:,}' for a in r['after_mb'])} | {r['after_gc_mb']:,} | {r['baseline_mb']:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
