"""What the benchmark runs on: random-weight checkpoints and the shared recordings.

Nothing here goes into the repository: checkpoints, the CTranslate2 conversion and the
one-hour recording are written to a work directory (by default under the system's temp
directory) and reused by later runs.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio" / "long"
RECORDING_11_MIN = SHARED_AUDIO / "lj050_0159-0258_full.mp3"  # 677.7 s of read speech
HOUR_S = 3600

DIMS = {  # openai-whisper's own dimensions for these sizes
    "tiny": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                 n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4),
    "large-v3": dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                     n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32),
}


def random_checkpoint(dims: str, work_dir: Path, seed: int = 0) -> Path:
    """A whisper checkpoint with random weights, as `whisper.load_model(path)` reads it.

    Plain random weights: every window decodes to the token cap and never emits
    end-of-text, so every implementation does the same amount of decoding per window.
    (The decoder's positional embedding is drawn too; whisper leaves it uninitialised.)
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
    """'11min': the shared recording itself; 'hour': it repeated and cut at 3600 s (ffmpeg
    concat, written once as 16 kHz mono WAV in the work directory)."""
    if not RECORDING_11_MIN.is_file():
        raise FileNotFoundError(f"{RECORDING_11_MIN} is missing: the benchmark reads the shared recordings")
    if name == "11min":
        return RECORDING_11_MIN
    if name != "hour":
        raise ValueError(f"unknown input {name!r}: 11min or hour")
    path = work_dir / "hour.wav"
    if not path.is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        copies = 6  # 6 x 677.7 s > 3600 s
        partial = work_dir / "hour.partial.wav"
        # The concat *filter* joins decoded samples, so the cut lands at exactly 3600 s (the
        # concat demuxer joins mp3 packets, and encoder padding makes the hour 0.5 s short).
        inputs = [arg for _ in range(copies) for arg in ("-i", str(RECORDING_11_MIN))]
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *inputs, "-filter_complex",
                        f"concat=n={copies}:v=0:a=1", "-t", str(HOUR_S), "-ac", "1", "-ar", "16000", str(partial)],
                       check=True)
        partial.rename(path)
    return path
