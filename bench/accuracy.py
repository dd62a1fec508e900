"""`python -m bench.accuracy`: word error rate of the engine beside stock `whisper.transcribe`,
on real tiny.en weights, both long recordings, with `condition_on_previous_text` on and off.

Accuracy only (the engine's speed is `python -m bench`): each transcript is compared with the
recording's reference after whisper's EnglishTextNormalizer. Default decoding settings
otherwise (temperature fallback, guards on), CPU fp32, the engine at `batch_size: 8`.
The README's Accuracy table comes from this command.
"""

from __future__ import annotations

import argparse

import whisper

from bench.inputs import SHARED_AUDIO, tiny_en_dir
from bench.wer import word_error_rate
from engine import Engine, load_audio, load_settings

RECORDINGS = [
    SHARED_AUDIO / "long" / "lj050_0159_5min.mp3",
    SHARED_AUDIO / "long" / "lj050_0159-0258_full.mp3",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    model_dir = str(tiny_en_dir())
    print("| recording | condition_on_previous_text | engine WER % | stock WER % |\n|---|---|---:|---:|")
    for recording in RECORDINGS:
        audio = load_audio(recording)
        reference = recording.with_suffix(".txt").read_text()
        for condition in (True, False):
            settings = load_settings(
                None,
                dict(
                    model=model_dir,
                    device="cpu",
                    precision="fp32",
                    warm_up=False,
                    batch_size=args.batch_size,
                    condition_on_previous_text=condition,
                ),
                environ={},
            )
            with Engine(settings) as engine:
                ours = engine.transcribe(audio).text
                with engine.models.lease(model_dir) as model:
                    theirs = whisper.transcribe(
                        model, audio, fp16=False, condition_on_previous_text=condition
                    )["text"]
            print(
                f"| {recording.name} | {str(condition).lower()} | {word_error_rate(reference, ours):.2f} | "
                f"{word_error_rate(reference, theirs):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
