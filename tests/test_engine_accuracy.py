"""Accuracy proxy: batching must not change what a window decodes to.

On CPU in fp32 with greedy decoding, each window of the 11-minute recording decoded in a
batch must give the same segments (timestamps and tokens) as stock `whisper.decode` on that
window alone. Random weights cannot measure word accuracy; this checks the decoding logic.
"""
import pytest
import torch
import whisper

from conftest import LONG_11_MIN, shared_audio, window_mels
from engine import load_audio
from engine.chunking import plan_windows
from engine.transcriber import BatchTranscriber, DecodeOptions, split_at_timestamps

TOKENS_PER_WINDOW = 100  # about what 30 s of real speech needs


@pytest.mark.parametrize("batch_size", [16])
def test_batched_windows_decode_like_stock_whisper_alone(micro_checkpoint, batch_size):
    audio = load_audio(shared_audio(LONG_11_MIN))
    model = whisper.load_model(str(micro_checkpoint), device="cpu")
    windows = plan_windows(audio)
    options = DecodeOptions(language="en", temperatures=(0.0,), max_new_tokens=TOKENS_PER_WINDOW,
                            compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None,
                            batch_size=batch_size)
    with torch.inference_mode():
        batched = BatchTranscriber(model, fp16=False).transcribe(audio, windows, options)
    assert batched.windows_decoded == len(windows)

    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, language="en")
    alone_options = whisper.DecodingOptions(language="en", temperature=0.0, sample_len=TOKENS_PER_WINDOW, fp16=False)
    same = 0
    for window, segments, mel in zip(windows, batched.segments, window_mels(audio, model.dims.n_mels)):
        with torch.inference_mode():
            alone = whisper.decode(model, mel, alone_options)
        expected = [(round(s, 2), round(e, 2), t) for s, e, t in
                    split_at_timestamps(alone.tokens, tokenizer.timestamp_begin, tokenizer.eot, window.duration_s)]
        got = [(round(s.start, 2), round(s.end, 2), s.tokens) for s in segments]
        same += got == expected
    assert same / len(windows) >= 0.99, f"only {same} of {len(windows)} windows decode as they do alone"
