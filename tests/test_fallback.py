"""Temperature fallback: a window whose text loops is decoded again, hotter, as whisper's
compression-ratio guard intends; a window that passes the guards is decoded once.

The lively random checkpoint loops on speech ("unreal unreal unreal ...", compression ratio
~21) and says nothing on noise: one of each in a batch."""

import numpy as np
import torch

from checkpoints import build_model
from conftest import JFK, shared_audio, window_mels
from engine import load_audio
from engine.decoding.fast_decode import decode_rows
from engine.decoding.options import DecodeOptions
from engine.decoding.stream import StreamWindow
from engine.decoding.transcriber import decode_batch

LADDER = (0.0, 0.5, 1.0)


def test_a_looping_window_falls_back_through_the_ladder_and_a_clean_one_does_not():
    model = build_model("micro", True, 0).eval()
    speech = window_mels(load_audio(shared_audio(JFK)))[0]
    noise = window_mels((0.1 * np.random.default_rng(0).standard_normal(16000 * 30)).astype(np.float32))[0]
    windows = [StreamWindow(mel, [], 0, 3000) for mel in (speech, noise)]
    options = DecodeOptions(
        temperatures=LADDER,
        max_new_tokens=100,
        compression_ratio_threshold=2.4,
        logprob_threshold=None,
        no_speech_threshold=None,
    )
    decoded = []

    def counting(model, mel, decoding, prompts):
        decoded.append((decoding.temperature, len(mel)))
        return decode_rows(model, mel, decoding, prompts)

    torch.manual_seed(0)
    looping, clean = decode_batch(model, windows, [options, options], "en", False, counting)
    assert decoded[0] == (0.0, 2)  # both rows greedy, together
    assert clean.temperature == 0.0 and clean.compression_ratio <= 2.4
    # the loop (greedy compression ratio ~21) is decoded again at every temperature left,
    # alone, until one passes or the ladder ends
    assert len(decoded) > 1 and decoded[1:] == [(t, 1) for t in LADDER[1 : len(decoded)]]
    assert looping.temperature == LADDER[len(decoded) - 1]
    assert looping.compression_ratio <= 2.4 or looping.temperature == LADDER[-1]
