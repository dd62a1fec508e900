"""`python -m bench.vad`: what voice activity detection costs and saves, on real tiny.en.

For each recording the engine runs with `vad: false` and `vad: true` (default decoding
settings otherwise: temperature fallback, guards on; CPU fp32, `batch_size: 8`), and prints
the word error rate against the reference, the wall time, the windows decoded, and the
speech the detector kept. Recordings: both long LJSpeech files (speech without long pauses:
VAD should change nothing), and one built here that a meeting resembles: the 5-minute
file cut at its longest pause near the middle, with a minute of synthetic music and a
minute of noise between the halves (reference: the 5-minute file's). Stock
`whisper.transcribe` runs on the built recording too, for its WER and time.
The README's voice-activity table comes from this command.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import whisper

from bench.inputs import SHARED_AUDIO, tiny_en_dir
from bench.signals import music, noise
from bench.wer import word_error_rate
from engine import Engine, load_audio, load_settings
from engine.audio.sections import plan_sections
from engine.audio.vad import speech_map

FIVE_MIN = SHARED_AUDIO / "long" / "lj050_0159_5min.mp3"
ELEVEN_MIN = SHARED_AUDIO / "long" / "lj050_0159-0258_full.mp3"


def built_recording() -> np.ndarray:
    """Speech, a minute of music, a minute of noise, speech."""
    audio = load_audio(FIVE_MIN)
    middle = plan_sections(audio, 2, min_section_s=60)[1].start  # in the longest pause near the middle
    return np.concatenate([audio[:middle], music(60.0), noise(60.0), audio[middle:]])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vad", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    model_dir = str(tiny_en_dir())
    recordings = [
        ("5 min", load_audio(FIVE_MIN), FIVE_MIN.with_suffix(".txt").read_text()),
        ("11 min", load_audio(ELEVEN_MIN), ELEVEN_MIN.with_suffix(".txt").read_text()),
        ("5 min + 1 min music + 1 min noise", built_recording(), FIVE_MIN.with_suffix(".txt").read_text()),
    ]
    print(
        "| recording | run | WER % | time s | windows | speech kept s |\n|---|---|---:|---:|---:|---:|",
        flush=True,
    )
    for vad in (False, True):
        settings = load_settings(
            None,
            dict(
                model=model_dir,
                device="cpu",
                precision="fp32",
                warm_up=False,
                batch_size=args.batch_size,
                vad=vad,
            ),
            environ={},
        )
        with Engine(settings) as engine:
            engine.transcribe(np.zeros(16000, dtype=np.float32))  # load the detector and the kernels
            for name, audio, reference in recordings:
                torch.manual_seed(0)
                started = time.perf_counter()
                result = engine.transcribe(audio)
                elapsed = time.perf_counter() - started
                kept = speech_map(audio).speech_samples / 16000 if vad else len(audio) / 16000
                print(
                    f"| {name} ({len(audio) / 16000:.0f} s) | engine, vad {str(vad).lower()} | "
                    f"{word_error_rate(reference, result.text):.2f} | {elapsed:.1f} | {result.windows} | "
                    f"{kept:.0f} |",
                    flush=True,
                )
    name, audio, reference = recordings[-1]
    with (
        Engine(
            load_settings(
                None, dict(model=model_dir, device="cpu", precision="fp32", warm_up=False), environ={}
            )
        ) as engine,
        engine.models.lease(model_dir) as model,
    ):
        torch.manual_seed(0)
        started = time.perf_counter()
        text = whisper.transcribe(model, audio, fp16=False)["text"]
        print(
            f"| {name} ({len(audio) / 16000:.0f} s) | stock whisper.transcribe | "
            f"{word_error_rate(reference, text):.2f} | {time.perf_counter() - started:.1f} | | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
