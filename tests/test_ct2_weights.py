"""faster-whisper's CTranslate2 directories read as openai-whisper models: real tiny.en and base
weights (tests/real_models.py) must transcribe the JFK clip word for word."""

import base64
import gzip
import json
import shutil
import struct

import pytest
import torch
import whisper
from whisper.model import ModelDimensions, sinusoids
from whisper.normalizers import EnglishTextNormalizer

from conftest import JFK, fast_settings, shared_audio
from engine import Engine, ModelLoadError
from engine.device.cuda import DevicePlan
from engine.models.cache import load_model
from engine.models.ct2_weights import (
    Ct2FormatError,
    QuantisedModelError,
    is_ct2_model_dir,
    read_ct2_model,
    read_model_bin,
)
from real_models import MODEL_DIRS, load_real_model

CPU32 = DevicePlan(torch.device("cpu"), "fp32", "cpu, fp32")
DIMS = {
    "tiny.en": ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=384,
        n_audio_head=6,
        n_audio_layer=4,
        n_vocab=51864,
        n_text_ctx=448,
        n_text_state=384,
        n_text_head=6,
        n_text_layer=4,
    ),
    "base": ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=512,
        n_audio_head=8,
        n_audio_layer=6,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=512,
        n_text_head=8,
        n_text_layer=6,
    ),
}
normalise = EnglishTextNormalizer()


def reference_text() -> str:
    return normalise(shared_audio(JFK.parent / "reference.txt").read_text())


# -- a writer mirroring ctranslate2's ModelSpec._serialize, for files the packages do not ship --
TYPE_IDS = {
    torch.float32: 0,
    torch.int8: 1,
    torch.int16: 2,
    torch.int32: 3,
    torch.float16: 4,
    torch.bfloat16: 5,
}


def write_model_bin(path, variables, aliases=None, spec="WhisperSpec", revision=3, version=6):
    def string(text):
        data = text.encode("utf-8")
        return struct.pack("<H", len(data) + 1) + data + b"\0"

    with open(path, "wb") as f:
        f.write(struct.pack("<I", version) + string(spec) + struct.pack("<II", revision, len(variables)))
        for name, tensor in variables.items():
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            f.write(
                string(name)
                + struct.pack("<B", tensor.dim())
                + struct.pack(f"<{tensor.dim()}I", *tensor.shape)
            )
            f.write(struct.pack("<BI", TYPE_IDS[tensor.dtype], len(data)) + data)
        f.write(struct.pack("<I", len(aliases or {})))
        for alias, name in (aliases or {}).items():
            f.write(string(alias) + string(name))


def fake_model_dir(tmp_path, variables, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_model_bin(tmp_path / "model.bin", variables, **kwargs)
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


# -- the real weights --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tiny.en", "base"])
def test_real_weights_transcribe_jfk_word_for_word(kind):
    expected = reference_text()
    result = whisper.transcribe(load_real_model(kind), str(shared_audio(JFK)), temperature=0, fp16=False)
    assert normalise(result["text"]) == expected


@pytest.mark.parametrize("kind", ["tiny.en", "base"])
def test_dimensions_come_from_the_tensor_shapes_and_stored_head_counts(kind):
    model = load_real_model(kind)
    assert model.dims == DIMS[kind]
    assert model.is_multilingual == (kind == "base")
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("kind", ["tiny.en", "base"])
def test_alignment_heads_are_the_configs_and_whispers_own(kind):
    model = load_real_model(kind)
    config = json.loads((MODEL_DIRS[kind]() / "config.json").read_text())
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    assert heads == sorted(config["alignment_heads"])
    assert torch.equal(model.alignment_heads.to_dense(), official_heads(model.dims, kind))


def official_heads(dims, kind):
    """openai-whisper's own alignment heads for `kind` (as `set_alignment_heads` decodes them)."""
    packed = gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[kind]))
    return torch.frombuffer(bytearray(packed), dtype=torch.bool).reshape(dims.n_text_layer, dims.n_text_head)


def test_encoder_positions_are_whispers_sinusoids():
    model = load_real_model("tiny.en")
    table = model.encoder.positional_embedding
    assert torch.allclose(table, sinusoids(*table.shape), atol=1e-3)  # stored in float16


def test_word_timestamps_use_the_models_heads():
    result = whisper.transcribe(
        load_real_model("tiny.en"), str(shared_audio(JFK)), temperature=0, fp16=False, word_timestamps=True
    )
    words = [w for s in result["segments"] for w in s["words"]]
    assert normalise("".join(w["word"] for w in words)) == reference_text()
    assert all(a["end"] <= b["start"] + 1e-6 and a["start"] <= a["end"] for a, b in zip(words, words[1:]))
    americans = next(w for w in words if "Americans" in w["word"])
    assert 1.0 < americans["start"] < americans["end"] < 3.0  # said at about 1.5-2.3 s
    assert 9.0 < words[-1]["end"] <= 11.1


def test_base_detects_english_on_jfk():
    model = load_real_model("base")
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(whisper.load_audio(str(shared_audio(JFK)))))
    _, probs = model.detect_language(mel)
    assert max(probs, key=probs.get) == "en"


# -- the app's own loading path ----------------------------------------------------------------
def test_load_model_accepts_a_ct2_directory(tiny_en_model_dir):
    assert is_ct2_model_dir(tiny_en_model_dir) and not is_ct2_model_dir(tiny_en_model_dir / "model.bin")
    model = load_model(str(tiny_en_model_dir), CPU32)
    assert model.dims == DIMS["tiny.en"] and not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    half = load_model(str(tiny_en_model_dir), DevicePlan(torch.device("cpu"), "fp16", "cpu, fp16"))
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert torch.equal(half.alignment_heads.to_dense(), model.alignment_heads.to_dense())


def test_engine_serves_a_ct2_directory(tiny_en_model_dir):
    expected = reference_text()
    settings = fast_settings(tiny_en_model_dir, max_new_tokens=224)
    assert settings.model == str(tiny_en_model_dir)
    with Engine(settings) as engine:
        assert engine.status().model.state == "ready"
        result = engine.transcribe(shared_audio(JFK), language="en")
    assert normalise(result.text) == expected


# -- what the format allows and what is refused --------------------------------------------------
def test_reader_reads_every_byte_of_the_file(tiny_en_model_dir, tmp_path):
    """Reading and writing back gives the very same bytes: nothing of the format is skipped or
    misread (and the test writer above really writes CTranslate2's format)."""
    original = tiny_en_model_dir / "model.bin"
    ct2 = read_model_bin(original)
    assert (ct2.binary_version, ct2.spec, ct2.revision) == (6, "WhisperSpec", 3)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    write_model_bin(
        tmp_path / "model.bin", ct2.variables, ct2.aliases, ct2.spec, ct2.revision, ct2.binary_version
    )
    assert (tmp_path / "model.bin").read_bytes() == original.read_bytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_and_bfloat16_files_load(tiny_en_model_dir, tmp_path, dtype):
    ct2 = read_model_bin(tiny_en_model_dir / "model.bin")
    variables = {
        name: t.to(dtype) if t.dim() and t.is_floating_point() else t for name, t in ct2.variables.items()
    }
    write_model_bin(tmp_path / "model.bin", variables, ct2.aliases)
    shutil.copy(tiny_en_model_dir / "config.json", tmp_path / "config.json")
    model, reference = read_ct2_model(tmp_path).state_dict(), load_real_model("tiny.en").state_dict()
    tolerance = 0 if dtype == torch.float32 else 1e-2  # float16 -> float32 is exact; bfloat16 has 8 bits
    for name, value in reference.items():
        torch.testing.assert_close(model[name], value, rtol=tolerance, atol=tolerance, msg=name)


def test_quantised_directory_is_refused_with_the_way_out(tmp_path):
    quantised = fake_model_dir(
        tmp_path / "int8",
        {  # as ct2-transformers-converter --quantization int8 stores it
            "decoder/embeddings/weight": torch.tensor([[12, -127], [64, 3]], dtype=torch.int8),
            "decoder/embeddings/weight_scale": torch.tensor([41.5, 70.0]),
            "encoder/num_heads": torch.tensor(6, dtype=torch.int16),
        },
    )
    with pytest.raises(QuantisedModelError, match="int8 weights"):
        read_ct2_model(quantised)
    with pytest.raises(ModelLoadError) as error:
        load_model(str(quantised), CPU32)
    message = str(error.value)
    assert "quantised" in message and "float16 or float32" in message and "--quantization float16" in message


def test_other_ct2_models_and_broken_files_are_refused(tiny_en_model_dir, tmp_path):
    translator = fake_model_dir(
        tmp_path / "mt", {"encoder/num_heads": torch.tensor(8, dtype=torch.int16)}, spec="TransformerSpec"
    )
    with pytest.raises(ModelLoadError, match="TransformerSpec model, not a Whisper model"):
        load_model(str(translator), CPU32)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "model.bin").write_bytes((tiny_en_model_dir / "model.bin").read_bytes()[:100_000])
    shutil.copy(tiny_en_model_dir / "config.json", truncated / "config.json")
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(str(truncated), CPU32)

    future = fake_model_dir(tmp_path / "future", {}, version=7)
    with pytest.raises(Ct2FormatError, match="binary version 7"):
        read_ct2_model(future)

    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ModelLoadError, match="directory but not a CTranslate2"):
        load_model(str(not_a_model), CPU32)


def test_a_changed_weights_file_fails_the_real_weight_tests(tmp_path):
    """The test weights come from third-party data packages: a different file is refused loudly."""
    import hashlib

    from real_models import _check_digest

    weights = tmp_path / "model.bin"
    weights.write_bytes(b"not the published weights")
    _check_digest(weights, hashlib.sha256(weights.read_bytes()).hexdigest())  # the right digest passes
    with pytest.raises(pytest.fail.Exception, match="SHA-256"):
        _check_digest(weights, "0" * 64)
