"""Temperature fallback: a window whose text loops is decoded again, hotter, as whisper's
compression-ratio guard intends; a window that passes the guards is decoded once.

The lively random checkpoint loops on speech ("unreal unreal unreal ...", compression ratio
~21) and says nothing on noise: one of each in a batch, first decoded greedily together (as
the running decode does), then through `fall_back`."""

import numpy as np
import torch
from whisper.decoding import DecodingOptions

from checkpoints import build_model
from conftest import JFK, shared_audio, window_mels
from engine import load_audio
from engine.decoding import fallback
from engine.decoding.fast_decode import decode_rows
from engine.decoding.options import TranscribeOptions
from engine.decoding.stream import StreamWindow

LADDER = (0.0, 0.5, 1.0)


def test_a_looping_window_falls_back_through_the_ladder_and_a_clean_one_does_not(monkeypatch):
    model = build_model("micro", True, 0).eval()
    speech = window_mels(load_audio(shared_audio(JFK)))[0]
    noise = window_mels((0.1 * np.random.default_rng(0).standard_normal(16000 * 30)).astype(np.float32))[0]
    windows = [StreamWindow(mel, [], 0, 3000) for mel in (speech, noise)]
    options = TranscribeOptions(
        temperatures=LADDER,
        max_new_tokens=100,
        compression_ratio_threshold=2.4,
        logprob_threshold=None,
        no_speech_threshold=None,
    )
    greedy = decode_rows(
        model,
        torch.stack([speech, noise]),
        DecodingOptions(language="en", sample_len=100, fp16=False),
        [None, None],
    )
    redecoded = []

    def counting(model, features, decoding, prompts):
        redecoded.append((decoding.temperature, len(features)))
        return decode_rows(model, features, decoding, prompts)

    monkeypatch.setattr(fallback, "decode_rows", counting)
    torch.manual_seed(0)
    looping, clean = fallback.fall_back(model, windows, [options, options], list(greedy), "en", False)
    assert clean is greedy[1] and clean.compression_ratio <= 2.4  # decoded once: its greedy result kept
    # the loop (greedy compression ratio ~21) is decoded again at every temperature left,
    # alone, until one passes or the ladder ends
    assert greedy[0].compression_ratio > 2.4
    assert redecoded and redecoded == [(t, 1) for t in LADDER[1 : len(redecoded) + 1]]
    assert looping.temperature == LADDER[len(redecoded)]
    assert looping.compression_ratio <= 2.4 or looping.temperature == LADDER[-1]
