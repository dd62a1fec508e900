"""Randomly initialised whisper checkpoints in openai-whisper's own file format.

No real weights can be downloaded in CI, so tests write these and load them with
`whisper.load_model(path)`. Their text is gibberish: tests assert structure, never words.
The "lively" flavour (the default) is scaled so that tokens and timestamps depend on the
audio; plain random weights decode the same tokens for every window.
"""

from __future__ import annotations

from pathlib import Path

import torch
import whisper
from whisper.model import ModelDimensions, Whisper

DIMS = {
    "micro": dict(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=2,
    ),
    # large-v3's vocabulary and 128 mel bins, tiny width
    "v3micro": dict(
        n_mels=128,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=51866,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=2,
    ),
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


def _probe_mels(n_mels: int, n: int = 4) -> torch.Tensor:
    """Tones in noise: a deterministic batch of log-mels, no audio files needed."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(whisper.audio.N_SAMPLES) / whisper.audio.SAMPLE_RATE
    mels = []
    for i in range(n):
        wave = 0.1 * torch.randn(t.shape, generator=g) + 0.3 * torch.sin(2 * torch.pi * (200 + 150 * i) * t)
        mels.append(whisper.log_mel_spectrogram(wave.float(), n_mels=n_mels))
    return torch.stack(mels)


def build_model(dims: str = "micro", lively: bool = True, seed: int = 0) -> Whisper:
    torch.manual_seed(seed)
    model = Whisper(ModelDimensions(**DIMS[dims])).eval()
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.02)  # whisper leaves it uninitialised
        if not lively:
            return model
        model.decoder.token_embedding.weight.normal_(0, 0.05)  # flat logits: input-dependent argmax
        model.encoder.conv1.weight.mul_(5)  # audio outweighs the positional signal
        model.encoder.conv2.weight.mul_(5)
        for block in model.decoder.blocks:
            block.cross_attn.out.weight.mul_(5)  # the decoder listens to the audio
        # Make end-of-text competitive on part of the states, so some windows end early.
        eot = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages).eot
        states = []
        hook = model.decoder.ln.register_forward_hook(lambda m, i, o: states.append(o[:, -1]))
        options = whisper.DecodingOptions(language="en", fp16=False, temperature=0.0, sample_len=24)
        whisper.decode(model, _probe_mels(model.dims.n_mels), options)
        hook.remove()
        x = torch.cat(states)
        top = (x @ model.decoder.token_embedding.weight.T).max(-1).values
        mean_dir = x.mean(0) / x.mean(0).norm()
        pc = torch.pca_lowrank(x - x.mean(0), q=2)[2][:, 0]
        a = (top.mean() - 1.0 * top.std()) / (x @ mean_dir).mean()
        b = 3.2 * top.std() / (x @ pc).std()
        model.decoder.token_embedding.weight[eot] = a * mean_dir + b * pc
    return model


def write_checkpoint(path: Path, dims: str = "micro", lively: bool = True, seed: int = 0) -> Path:
    model = build_model(dims, lively, seed)
    torch.save({"dims": model.dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path
