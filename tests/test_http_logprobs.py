"""include[]=logprobs: per-token log-probabilities in OpenAI's shape, through the official
client against the real app on 127.0.0.1 (real tiny.en), in json and in a stream; the greedy
decoder's values are those a forced re-run through the same logit rules gives, and a
temperature-fallback re-decode carries its own tokens' values."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
import torch
import whisper
from whisper.decoding import DecodingOptions

from conftest import JFK, app_server, shared_audio, window_mels
from engine.audio.files import load_audio
from engine.decoding.fast_decode import decode_rows, decode_whole


@pytest.fixture(scope="module")
def real(tiny_en_model_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("logprobs") / "data"
    with app_server(tiny_en_model_dir, data_dir, max_new_tokens=224) as server:
        yield server


def test_json_with_logprobs_through_the_openai_client(real):
    client = openai.OpenAI(base_url=real.url + "v1", api_key="none", max_retries=0, timeout=120)
    with open(shared_audio(JFK), "rb") as file:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=file, response_format="json", include=["logprobs"]
        )
    result = raw.parse()
    assert result.logprobs and "country" in result.text.lower()
    assert "".join(p.token for p in result.logprobs).strip() == result.text  # every text token, in order
    for p in result.logprobs:
        # the client types them float
        assert bytes(int(b) for b in p.bytes).decode("utf-8", errors="replace") == p.token
        assert -30 < p.logprob <= 0
    assert sum(math.exp(p.logprob) for p in result.logprobs) / len(result.logprobs) > 0.5  # real speech, sure
    with httpx.Client(base_url=real.url.rstrip("/"), timeout=30) as http:
        job_id = raw.headers["x-job-id"]
        stored = http.get(f"/v1/jobs/{job_id}/result", params={"format": "json"}).json()
        assert "logprobs" not in json.dumps(stored)  # whisper's own json file is unchanged
        with open(shared_audio(JFK), "rb") as file:  # OpenAI gives them with json only
            refused = http.post(
                "/v1/audio/transcriptions",
                files={"file": file},
                data={"response_format": "verbose_json", "include[]": "logprobs"},
            )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "include"
    with open(shared_audio(JFK), "rb") as file:  # without include: none
        assert client.audio.transcriptions.create(model="whisper-1", file=file).logprobs is None


def test_stream_with_logprobs(real):
    client = openai.OpenAI(base_url=real.url + "v1", api_key="none", max_retries=0, timeout=120)
    with open(shared_audio(JFK), "rb") as file:
        events = list(
            client.audio.transcriptions.create(
                model="whisper-1", file=file, stream=True, include=["logprobs"]
            )
        )
    deltas, done = events[:-1], events[-1]
    assert deltas and all(e.logprobs for e in deltas)
    assert [p.token for e in deltas for p in e.logprobs] == [p.token for p in done.logprobs]
    assert "".join(p.token for p in done.logprobs).strip() == done.text


def test_greedy_values_are_what_a_forced_rerun_gives_and_fallback_rows_carry_their_own(tiny_en_model_dir):
    from engine.models.ct2_weights import read_ct2_model

    model = read_ct2_model(str(tiny_en_model_dir)).eval()
    mel = window_mels(load_audio(str(shared_audio(JFK))))[:1]
    options = DecodingOptions(language="en", fp16=False, without_timestamps=False)
    with torch.inference_mode():
        greedy = decode_rows(model, mel, options, [None])[0]
        assert len(greedy.token_logprobs) == len(greedy.tokens)
        forced = decode_whole(model, options, mel, [None], forced=[greedy.tokens])[0]
        assert forced.tokens == greedy.tokens
        assert forced.token_logprobs == pytest.approx(greedy.token_logprobs, abs=1e-5)
        # the values add up to whisper's own sum, less the end-of-text token's (avg_logprob counts it)
        stock = whisper.decode(model, mel[0], options)
        assert stock.tokens == greedy.tokens
        whole = stock.avg_logprob * (len(stock.tokens) + 1)  # the tokens' and the end-of-text's
        assert whole - 1e-3 <= sum(greedy.token_logprobs) <= 0

        torch.manual_seed(0)
        hot = decode_rows(model, mel, DecodingOptions(language="en", fp16=False, temperature=0.8), [None])[0]
        assert hot.temperature == 0.8 and len(hot.token_logprobs) == len(hot.tokens)
        assert all(math.isfinite(v) and v <= 0 for v in hot.token_logprobs)
        if hot.tokens != greedy.tokens:  # sampled tokens: their own values, not the greedy run's
            assert hot.token_logprobs != greedy.token_logprobs[: len(hot.token_logprobs)]
