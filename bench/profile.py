"""Where the engine's time goes: `python -m bench.profile [--precision fp32|int8] [--input 11min]`.

Runs the engine as `python -m bench` does (engine.Engine on CPU, real tiny.en weights, the
bench's long-form settings: fallback ladder, whisper's guards, previous text; batch 16) on
one recording, with a timer around each stage. The stages are the engine's own functions,
wrapped for the run, so nothing here changes what is measured:

    audio decoding        engine.audio.files.load_audio (ffmpeg to float32 16 kHz)
    section planning      engine.audio.sections.plan_sections (cuts at the longest pauses)
    log-mel               SectionStream.__init__ (each section's log-mel, computed once)
    window slicing        SectionStream.next_window (the window at `seek`, the silence check)
    voice activity        engine.audio.vad.speech_probabilities and speech_map (Silero, on by default)
    encoder               engine.decoding.greedy_decode.encode
    cross-attention k, v  computed once per window as it joins the decode
    decoder blocks        self- and cross-attention and MLP of every token step (prompts' prefill included)
    output projection     the 51,865-wide logits matmul of every token step
    token selection       logit rules, argmax, log-probs, rows joining and leaving, results
                          (the rest of GreedyDecode.admit and .step)
    fallback re-decodes   rows that failed a guard, decoded again hotter (whisper.decode per row),
                          and word timing when asked for (engine.decoding.fallback.fall_back,
                          engine.decoding.word_timing.align_windows)
    stream bookkeeping    SectionStream.advance (segments, seek, previous text)
    other                 the decode loop and the job around it (batching, stacking, threads)

Set OMP_WAIT_POLICY=PASSIVE in the environment on a machine other work keeps busy (see
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.inputs import recording, tiny_en_dir
from bench.runners import Spec, engine_settings

TIMES: dict[str, float] = collections.defaultdict(float)
_LOCK = threading.Lock()  # the decode loop's thread and the job's thread both add times

ORDER = [
    "audio decoding",
    "voice activity",
    "section planning",
    "log-mel",
    "window slicing",
    "encoder",
    "cross-attention keys, values",
    "decoder blocks",
    "output projection",
    "token selection",
    "fallback re-decodes",
    "stream bookkeeping",
]


def _timed(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            with _LOCK:
                TIMES[name] += time.perf_counter() - started

    return wrapper


def profile(
    model: str,
    audio_path: Path,
    precision: str = "fp32",
    batch_size: int = 16,
    threads: int = os.cpu_count() or 1,
) -> tuple[float, list[tuple[str, float]], dict[str, int]]:
    """(total seconds, [(stage, seconds)], counts) for one engine run on CPU."""
    import whisper

    from engine import Engine
    from engine import job_runner as runner_module
    from engine.decoding import cached_decoder, decode_loop, greedy_decode
    from engine.decoding.stream import SectionStream

    sections: list[int] = []
    greedy, decoder = greedy_decode.GreedyDecode, cached_decoder.CachedDecoder

    def plan_sections(audio, *args, **kwargs):
        planned = original_plan(audio, *args, **kwargs)
        sections.append(len(planned))
        return planned

    original_plan = runner_module.plan_sections
    patches = [
        (runner_module, "load_audio", "audio decoding"),
        (runner_module, "speech_probabilities", "voice activity"),
        (runner_module, "speech_map", "voice activity"),
        (runner_module, "plan_sections", "section planning"),
        (SectionStream, "__init__", "log-mel"),
        (SectionStream, "next_window", "window slicing"),
        (SectionStream, "advance", "stream bookkeeping"),
        (greedy_decode, "encode", "encoder"),
        (decoder, "cross_keys_values", "cross-attention keys, values"),
        (decoder, "forward", "decoder blocks"),
        (decoder, "logits", "output projection"),
        (greedy, "admit", "greedy decode"),
        (greedy, "step", "greedy decode"),
        (decode_loop, "fall_back", "fallback re-decodes"),
        (decode_loop, "align_windows", "fallback re-decodes"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    runner_module.plan_sections = plan_sections
    for owner, name, label in patches:
        setattr(owner, name, _timed(label, getattr(owner, name)))
    torch.set_num_threads(threads)
    spec = Spec(
        impl="engine",
        audio=str(audio_path),
        model=model,
        ct2_dir=model,
        device="cpu",
        batch_size=batch_size,
        threads=threads,
    )
    engine = Engine(engine_settings(spec, precision))
    try:
        # warm-up: 30 s, so one-time set-up is not counted as a stage
        engine.transcribe(whisper.audio.load_audio(str(audio_path))[: 30 * 16000])
        TIMES.clear()
        sections.clear()
        started = time.perf_counter()
        result = engine.transcribe(str(audio_path))
        total = time.perf_counter() - started
    finally:
        engine.close()
        for owner, name, original in saved:
            setattr(owner, name, original)
    # admit and step contain the encoder and the decoder's matmuls
    TIMES["token selection"] = TIMES.pop("greedy decode", 0.0) - sum(
        TIMES[name]
        for name in ("encoder", "cross-attention keys, values", "decoder blocks", "output projection")
    )
    stages = [(name, TIMES[name]) for name in ORDER]
    stages.append(("other (decode loop, batching, job)", total - sum(t for _, t in stages)))
    return (
        total,
        stages,
        {
            "sections": sections[0] if sections else 0,
            "windows": result.windows,
            "fallbacks": result.fallbacks,
            "tokens": result.tokens_decoded,
        },
    )


def table(total: float, stages: list[tuple[str, float]]) -> str:
    lines = ["| stage | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.2f} | {100 * seconds / total:.0f}% |" for name, seconds in stages]
    lines.append(f"| **total** | **{total:.2f}** | 100% |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    parser.add_argument(
        "--model", default=None, help="CTranslate2 directory or .pt checkpoint (default: tiny.en)"
    )
    parser.add_argument("--input", default="11min", choices=["jfk", "11min", "hour"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "whisper-bench")
    args = parser.parse_args(argv)
    model = args.model or str(tiny_en_dir())
    total, stages, counts = profile(
        model, recording(args.input, args.work_dir), args.precision, args.batch_size, args.threads
    )
    name = "tiny.en" if args.model is None else Path(model).name
    print(
        f"engine, {name}, {args.precision}, {args.input}, batch {args.batch_size}, "
        f"{counts['sections']} sections, {counts['windows']} windows (+{counts['fallbacks']} fallback "
        "re-decodes), "
        f"{counts['tokens']} tokens, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(table(total, stages))


if __name__ == "__main__":
    main()
