"""engine.decoding.fast_decode gives the tokens whisper.decode gives, window for window.

The accuracy proxy for the fp32 greedy path: on the 11-minute recording and real tiny.en
weights, every window decoded in a batch by the fast decoder gets the tokens (and nearly the same log-prob and
no-speech probability) that stock `whisper.decode` gives that window alone, from the same
log-mel. Then the paths the recording does not reach: rows that end early and leave the
batch, prompts, no timestamps, the context limit, and the hand-over to whisper.decode.
"""

import dataclasses
import math

import pytest
import torch
import whisper

from checkpoints import _probe_mels, build_model
from conftest import LONG_11_MIN, shared_audio, window_mels
from engine import load_audio
from engine.decoding import fast_decode, greedy_decode
from real_models import load_real_model

TOKENS_PER_WINDOW = 100  # about what 30 s of real speech needs
GREEDY = whisper.DecodingOptions(language="en", temperature=0.0, sample_len=TOKENS_PER_WINDOW, fp16=False)


@pytest.fixture(scope="module")
def micro():
    return build_model("micro")


@pytest.fixture(scope="module")
def varied_mels():
    """Probe tones in noise: on the lively micro model some rows end after 1 or a few tokens."""
    mels = _probe_mels(80, 8)
    return mels + 0.3 * torch.randn(mels.shape, generator=torch.Generator().manual_seed(3))


def _same(a, b) -> bool:
    return (
        a.tokens == b.tokens
        and a.text == b.text
        and math.isclose(a.avg_logprob, b.avg_logprob, abs_tol=1e-4)
        and math.isclose(a.no_speech_prob, b.no_speech_prob, rel_tol=1e-3, abs_tol=1e-7)
    )


def test_every_window_of_the_recording_decodes_as_whisper_decode_alone():
    audio = load_audio(shared_audio(LONG_11_MIN))
    model = load_real_model("tiny.en")
    mels = window_mels(audio)
    with torch.inference_mode():
        batched = [r for part in mels.split(16) for r in fast_decode.decode(model, part, GREEDY)]
        alone = [whisper.decode(model, mel, GREEDY) for mel in mels]
    same = sum(_same(a, b) for a, b in zip(alone, batched))
    assert same / len(mels) >= 0.99, f"only {same} of {len(mels)} windows decode as they do alone"
    assert len({tuple(r.tokens) for r in batched}) == len(mels)  # real speech: every window its own text


def test_rows_that_end_early_leave_the_batch_and_keep_their_tokens(micro, varied_mels, monkeypatch):
    kept = []
    compact = greedy_decode.GreedyDecode._compact
    monkeypatch.setattr(
        greedy_decode.GreedyDecode, "_compact", lambda self: (kept.append(len(self)), compact(self))
    )
    expected = whisper.decode(micro, varied_mels, GREEDY)
    got = fast_decode.decode(micro, varied_mels, GREEDY)
    assert sorted(len(r.tokens) for r in expected)[0] < 10 < max(len(r.tokens) for r in expected)
    assert kept and kept[0] < len(varied_mels)  # finished rows were dropped
    assert all(_same(a, b) for a, b in zip(expected, got))


@pytest.mark.parametrize(
    "change",
    [
        dict(prompt="The Secret Service should not and does not plan"),
        dict(without_timestamps=True),
        dict(max_initial_timestamp=None),
        dict(suppress_blank=False),
        dict(suppress_tokens=""),
        dict(suppress_tokens=[220, 1000, -1]),
        dict(task="translate", language="de"),
        dict(prompt=list(range(1000, 1300)), sample_len=224),  # runs into the 448-token context
    ],
    ids=lambda change: ",".join(change),
)
def test_options_mean_what_they_mean_in_whisper(micro, varied_mels, change):
    options = dataclasses.replace(GREEDY, **{"sample_len": 40, **change})
    expected = whisper.decode(micro, varied_mels, options)
    got = fast_decode.decode(micro, varied_mels, options)
    assert [r.tokens for r in got] == [r.tokens for r in expected]
    assert all(_same(a, b) for a, b in zip(expected, got))


def test_one_mel_gives_one_result_and_features_are_accepted(micro, varied_mels):
    single = fast_decode.decode(micro, varied_mels[0], GREEDY)
    assert single.tokens == whisper.decode(micro, varied_mels[0], GREEDY).tokens
    features = micro.encoder(varied_mels[:2])
    assert [r.tokens for r in fast_decode.decode(micro, features, GREEDY)] == [
        r.tokens for r in whisper.decode(micro, varied_mels[:2], GREEDY)
    ]


def test_encoder_runs_a_few_windows_at_a_time_on_cpu_with_the_same_output(micro, varied_mels):
    together = micro.encoder(varied_mels)
    assert torch.allclose(greedy_decode.encode(micro, varied_mels, fp16=False), together, atol=1e-5)


@pytest.mark.parametrize(
    "change",
    [dict(temperature=0.5), dict(language=None), dict(beam_size=2), dict(prefix="Hello")],
    ids=lambda change: ",".join(change),
)
def test_what_it_does_not_do_goes_to_whisper_decode(micro, varied_mels, change, monkeypatch):
    calls = []
    original = whisper.decode
    monkeypatch.setattr(
        whisper, "decode", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    )
    fast_decode.decode(micro, varied_mels[:1], dataclasses.replace(GREEDY, sample_len=8, **change))
    assert calls == [1]


def test_rows_with_their_own_prompts_decode_as_whisper_decode_alone(micro, varied_mels):
    """The streams of different sections share a batch, each conditioned on its own previous
    text: prompts of different lengths (none, short, long enough to be trimmed) in one batch."""
    tokenizer = whisper.tokenizer.get_tokenizer(False)
    prompts = [
        None,
        tokenizer.encode(" Hello there."),
        list(range(100, 400)),
        [50400, 220, 50450],
        None,
        tokenizer.encode(" And so, my fellow Americans"),
        list(range(500, 520)),
        [1, 2, 3],
    ]
    options = dataclasses.replace(GREEDY, sample_len=40)
    got = fast_decode.decode_rows(micro, varied_mels, options, prompts)
    for row, (mel, prompt) in enumerate(zip(varied_mels, prompts)):
        alone = whisper.decode(micro, mel, dataclasses.replace(options, prompt=prompt))
        assert _same(got[row], alone), f"row {row} (prompt of {len(prompt or [])} tokens)"
    assert len({tuple(r.tokens) for r in got}) > 4


def test_rows_with_prompts_at_the_context_limit_stop_where_whisper_stops(micro, varied_mels):
    """A prompt of 223 tokens leaves 222 steps; a row without one may take 224: each row stops
    at its own limit, none writes past the context."""
    options = dataclasses.replace(GREEDY, sample_len=224)
    prompts = [list(range(1000, 1300)), None]
    got = fast_decode.decode_rows(micro, varied_mels[:2], options, prompts)
    for row, prompt in enumerate(prompts):
        assert _same(
            got[row], whisper.decode(micro, varied_mels[row], dataclasses.replace(options, prompt=prompt))
        )


@pytest.mark.parametrize("prompted", [False, True], ids=["same start", "own prompts"])
def test_the_cuda_path_runs_on_the_cpu_with_whisper_decodes_tokens(micro, varied_mels, monkeypatch, prompted):
    """GPUs are lent rarely: the CUDA branch (SDPA cross-attention, finished rows looked at
    every few steps) runs here in fp32 against whisper.decode, then in fp16 tensors."""
    monkeypatch.setattr(greedy_decode, "reads_back_cheaply", lambda device: False)
    tokenizer = whisper.tokenizer.get_tokenizer(False)
    prompts = [
        tokenizer.encode(" Hello there.") if prompted and i % 2 else None for i in range(len(varied_mels))
    ]
    options = dataclasses.replace(GREEDY, sample_len=30)
    got = fast_decode.decode_rows(micro, varied_mels, options, prompts)
    for row, prompt in enumerate(prompts):
        assert _same(
            got[row], whisper.decode(micro, varied_mels[row], dataclasses.replace(options, prompt=prompt))
        )
    half = build_model("micro").half()
    for module in half.modules():  # CUDA's layer norm takes fp16 weights with fp32 input; the CPU's does not
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    fp16 = fast_decode.decode_rows(half, varied_mels.half(), dataclasses.replace(options, fp16=True), prompts)
    assert all(r.tokens and r.audio_features.dtype == torch.float16 for r in fp16)


@pytest.mark.parametrize("host", [True, False], ids=["cpu path", "cuda path"])
def test_rows_that_join_a_running_decode_decode_as_whisper_decode_alone(
    micro, varied_mels, monkeypatch, host
):
    """The decode loop refills a row as soon as its window ends: windows that join a running
    decode (into a freed slot or after the last), at other positions and with their own
    prompts, get the tokens whisper.decode gives each alone; a dropped row never comes back."""
    if not host:
        monkeypatch.setattr(greedy_decode, "reads_back_cheaply", lambda device: False)
    tokenizer = whisper.tokenizer.get_tokenizer(False)
    # the first rows need a short cache; a row with a prompt trimmed to 223 tokens joins later and longer
    prompts = [
        None,
        tokenizer.encode(" Hello there."),
        [1, 2, 3],
        None,
        [50400, 220, 50450],
        list(range(100, 400)),
        tokenizer.encode(" And so, my fellow Americans"),
        None,
    ]
    options = dataclasses.replace(GREEDY, sample_len=40)
    decode = greedy_decode.GreedyDecode(micro, options)
    decode.admit(varied_mels[:3], prompts[:3], [0, 1, 2])
    waiting, results, joined_running = list(range(3, 8)), {}, 0
    decode.drop([2])
    while len(decode) or waiting:
        results.update(decode.step())
        if waiting and decode.step_count % 3 == 0:
            rows, waiting = waiting[:2], waiting[2:]
            joined_running += len(decode) > 0
            decode.admit(varied_mels[rows], [prompts[r] for r in rows], rows)
    assert joined_running >= 1
    assert sorted(results) == [0, 1, 3, 4, 5, 6, 7]
    for row, result in results.items():
        alone = whisper.decode(micro, varied_mels[row], dataclasses.replace(options, prompt=prompts[row]))
        assert _same(result, alone), f"row {row}"


def test_a_row_with_a_longer_prompt_joining_grows_the_caches(micro, varied_mels):
    """Caches hold what the rows in them need (prompt and token cap); a row that needs more
    joins by growing every row's cache, and both rows still decode as alone."""
    options = dataclasses.replace(GREEDY, sample_len=40)
    prompts = [None, list(range(100, 400))]
    decode = greedy_decode.GreedyDecode(micro, options)
    decode.admit(varied_mels[:1], prompts[:1], [0])
    short = decode.rows["keys0"].shape[1]
    decode.admit(varied_mels[1:2], prompts[1:], [1])
    assert len(decode) == 2 and short < decode.rows["keys0"].shape[1]
    results = {}
    while len(decode):
        results.update(decode.step())
    for row, prompt in enumerate(prompts):
        assert _same(
            results[row], whisper.decode(micro, varied_mels[row], dataclasses.replace(options, prompt=prompt))
        )
