"""`python -m bench.words`: what word timestamps cost, on real tiny.en.

The engine runs each recording without and with word timestamps (default settings
otherwise: VAD, temperature fallback and guards on; CPU fp32, `batch_size: 8`); stock
`whisper.transcribe` does the same on the 5-minute file. `--hallucination-silence-threshold
2` turns whisper's guard on in both (it drops real words on these recordings). Printed: wall time, the cost of
words in percent of the run without them, and the word error rate of both runs.
The README's word-timestamp figures come from this command.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import whisper

from bench.inputs import SHARED_AUDIO, tiny_en_dir
from bench.wer import word_error_rate
from engine import Engine, load_audio, load_settings

RECORDINGS = [
    SHARED_AUDIO / "long" / "lj050_0159_5min.mp3",
    SHARED_AUDIO / "long" / "lj050_0159-0258_full.mp3",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.words", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-stock", action="store_true", help="skip stock whisper (slow on a CPU)")
    parser.add_argument("--hallucination-silence-threshold", type=float, default=None)
    args = parser.parse_args(argv)
    model_dir = str(tiny_en_dir())
    print(
        "| recording | run | no words s | words s | cost | WER % (no words / words) |\n"
        "|---|---|---:|---:|---:|---:|",
        flush=True,
    )
    threshold = args.hallucination_silence_threshold
    settings = load_settings(
        None,
        dict(
            model=model_dir,
            device="cpu",
            precision="fp32",
            warm_up=False,
            batch_size=args.batch_size,
            hallucination_silence_threshold=threshold,
        ),
        environ={},
    )
    with Engine(settings) as engine:
        # load the detector, warm up
        engine.transcribe(np.zeros(16000, dtype=np.float32), word_timestamps=True)
        for recording in RECORDINGS:
            audio, reference = load_audio(recording), recording.with_suffix(".txt").read_text()
            times, errors = [], []
            for words in (False, True):
                torch.manual_seed(0)
                started = time.perf_counter()
                result = engine.transcribe(audio, word_timestamps=words)
                times.append(time.perf_counter() - started)
                errors.append(word_error_rate(reference, result.text))
            _row(recording.name, "engine", times, errors)
        if args.no_stock:
            return
        with engine.models.lease(model_dir) as model:
            recording = RECORDINGS[0]
            audio, reference = load_audio(recording), recording.with_suffix(".txt").read_text()
            times, errors = [], []
            for words in (False, True):
                torch.manual_seed(0)
                started = time.perf_counter()
                text = whisper.transcribe(
                    model, audio, fp16=False, word_timestamps=words, hallucination_silence_threshold=threshold
                )["text"]
                times.append(time.perf_counter() - started)
                errors.append(word_error_rate(reference, text))
            _row(recording.name, "stock whisper.transcribe", times, errors)


def _row(name: str, run: str, times, errors) -> None:
    print(
        f"| {name} | {run} | {times[0]:.1f} | {times[1]:.1f} | {100 * (times[1] / times[0] - 1):+.0f} % | "
        f"{errors[0]:.2f} / {errors[1]:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
