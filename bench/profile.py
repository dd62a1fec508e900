"""Where the engine's time goes: `python -m bench.profile [--precision fp32|int8] [--dims tiny]`.

Runs what `Engine._run` runs (audio decoding, window planning, batched decoding, stitching)
on the 11-minute recording, with a timer around each stage. The stages are the engine's
own functions, wrapped for the run, so nothing here changes what is measured:

    audio decoding   engine.audio.load_audio (ffmpeg to float32 16 kHz)
    planning         engine.chunking.plan_windows
    silence check    engine.chunking.is_silent, per window
    log-mel          BatchTranscriber._mels
    encoder          engine.fast_decode.encode
    decoder blocks   self- and cross-attention and MLP of every token step
    output proj.     the 51,865-wide logits matmul of every token step
    token selection  logit rules, argmax, log-probs, finished rows (the rest of the loop)
    segments         tokens to timestamped segments
    stitching        engine.chunking.stitch_segments
"""
from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.inputs import RECORDING_11_MIN, random_checkpoint  # noqa: E402

TIMES: Dict[str, float] = collections.defaultdict(float)


def _timed(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - started
    return wrapper


def profile(checkpoint: Path, precision: str = "fp32", batch_size: int = 16, max_new_tokens: int = 100,
            audio_path: Path = RECORDING_11_MIN) -> Tuple[float, List[Tuple[str, float]], Dict[str, float]]:
    """(total seconds, [(stage, seconds)], counts) for one engine run on CPU."""
    from engine import audio as engine_audio, chunking, fast_decode, transcriber
    from engine.cuda import plan_device
    from engine.models import load_model

    model = load_model(str(checkpoint), plan_device("cpu", 0, precision))
    greedy = fast_decode._GreedyBatch
    patches = [
        (engine_audio, "load_audio", "audio decoding"),
        (chunking, "plan_windows", "planning"),
        (transcriber, "is_silent", "silence check"),
        (transcriber.BatchTranscriber, "_mels", "log-mel"),
        (fast_decode, "encode", "encoder"),
        (greedy, "_cross_keys_values", "cross-attention keys, values"),
        (greedy, "_forward", "decoder blocks"),
        (greedy, "_logits", "output projection"),
        (greedy, "run", "decoding (all)"),
        (transcriber.BatchTranscriber, "_segments", "segments"),
        (chunking, "stitch_segments", "stitching"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, label in patches:
        setattr(owner, name, _timed(label, getattr(owner, name)))
    options = transcriber.DecodeOptions(language="en", temperatures=(0.0,), max_new_tokens=max_new_tokens,
                                        compression_ratio_threshold=None, logprob_threshold=None,
                                        no_speech_threshold=None, batch_size=batch_size)
    try:
        # warm-up: one window, so one-time set-up is not counted as a stage
        with torch.inference_mode():
            transcriber.BatchTranscriber(model, fp16=False).transcribe(
                engine_audio.load_audio(audio_path)[:30 * 16000], chunking.plan_windows(
                    engine_audio.load_audio(audio_path)[:30 * 16000]), options)
        TIMES.clear()
        started = time.perf_counter()
        audio = engine_audio.load_audio(audio_path)
        windows = chunking.plan_windows(audio)
        with torch.inference_mode():
            decoded = transcriber.BatchTranscriber(model, fp16=False).transcribe(audio, windows, options)
        chunking.stitch_segments(windows, decoded.segments, len(audio) / 16000)
        total = time.perf_counter() - started
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    decoding = TIMES.pop("decoding (all)")
    encoder = TIMES["encoder"]
    TIMES["token selection"] = (decoding - encoder - TIMES["cross-attention keys, values"] - TIMES["decoder blocks"]
                                - TIMES["output projection"])
    order = ["audio decoding", "planning", "silence check", "log-mel", "encoder", "cross-attention keys, values",
             "decoder blocks", "output projection", "token selection", "segments", "stitching"]
    stages = [(name, TIMES[name]) for name in order]
    stages.append(("other (batching, Python)", total - sum(t for _, t in stages)))
    return total, stages, {"windows": decoded.windows_decoded, "tokens": decoded.tokens_decoded}


def table(total: float, stages: List[Tuple[str, float]]) -> str:
    lines = ["| stage | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.2f} | {100 * seconds / total:.0f}% |" for name, seconds in stages]
    lines.append(f"| **total** | **{total:.2f}** | 100% |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--dims", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/whisper-bench"))
    args = parser.parse_args(argv)
    checkpoint = random_checkpoint(args.dims, args.work_dir)
    total, stages, counts = profile(checkpoint, args.precision, args.batch_size, args.max_new_tokens)
    print(f"engine, {args.dims} dims, {args.precision}, batch {args.batch_size}, "
          f"{counts['windows']} windows, {counts['tokens']} tokens, {torch.get_num_threads()} threads")
    print(table(total, stages))


if __name__ == "__main__":
    main()
