"""An openai-whisper checkpoint as a CTranslate2 model for faster-whisper, offline.

Three steps, none of which downloads anything:

1. the state dict renamed to transformers' `WhisperForConditionalGeneration` layout and
   saved with a matching `WhisperConfig` and generation config (recent transformers no
   longer ship their conversion script; the mapping is the short table below);
2. `tokenizer.json` built from the tiktoken vocabulary bundled with openai-whisper, its
   special tokens (languages, tasks, timestamps) at whisper's own ids;
3. `ct2-transformers-converter`, the command CTranslate2 documents, in float32, so the
   benchmark picks int8/float16/float32 at load time from one conversion.

`check_tensors` then reads CTranslate2's `model.bin` and compares a few tensors with the
original checkpoint, bit for bit, so a wrong mapping cannot pass unnoticed.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

# whisper name fragment -> transformers name fragment, applied in this order
RENAMES = (
    ("encoder.positional_embedding", "encoder.embed_positions.weight"),
    ("decoder.positional_embedding", "decoder.embed_positions.weight"),
    ("token_embedding", "embed_tokens"),
    ("encoder.ln_post", "encoder.layer_norm"),
    ("decoder.ln.", "decoder.layer_norm."),
    ("blocks", "layers"),
    (".cross_attn_ln", ".encoder_attn_layer_norm"),
    (".cross_attn.query", ".encoder_attn.q_proj"),
    (".cross_attn.key", ".encoder_attn.k_proj"),
    (".cross_attn.value", ".encoder_attn.v_proj"),
    (".cross_attn.out", ".encoder_attn.out_proj"),
    (".attn_ln", ".self_attn_layer_norm"),
    (".attn.query", ".self_attn.q_proj"),
    (".attn.key", ".self_attn.k_proj"),
    (".attn.value", ".self_attn.v_proj"),
    (".attn.out", ".self_attn.out_proj"),
    (".mlp_ln", ".final_layer_norm"),
    (".mlp.0", ".fc1"),
    (".mlp.2", ".fc2"),
)


def hf_name(name: str) -> str:
    for old, new in RENAMES:
        name = name.replace(old, new)
    return "model." + name


def _whisper_tokenizer(n_vocab: int):
    import whisper.tokenizer

    multilingual = n_vocab >= 51865
    num_languages = n_vocab - 51765 - int(multilingual)
    return whisper.tokenizer.get_tokenizer(multilingual, num_languages=num_languages)


def write_tokenizer_json(n_vocab: int, out_dir: Path) -> Path:
    """tokenizer.json from whisper's tiktoken ranks; special tokens keep whisper's ids."""
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = _whisper_tokenizer(n_vocab).encoding

    class _Ranks(TikTokenConverter):  # the ranks are in memory already; no file to re-read
        @staticmethod
        def load_tiktoken_bpe(_):
            return encoding._mergeable_ranks

    path = out_dir / "tokenizer.json"
    _Ranks(
        vocab_file="(whisper's bundled vocabulary)",
        pattern=encoding._pat_str,
        extra_special_tokens=encoding._special_tokens,
    ).converted().save(str(path))

    built = Tokenizer.from_file(str(path))
    for token, token_id in encoding._special_tokens.items():
        if built.token_to_id(token) != token_id:
            raise RuntimeError(
                f"tokenizer.json: {token} has id {built.token_to_id(token)}, whisper says {token_id}"
            )
    sample = " The Commission recommends that prompt and favorable consideration be given, 1964."
    if built.encode(sample, add_special_tokens=False).ids != encoding.encode(sample):
        raise RuntimeError("tokenizer.json does not encode like whisper's tiktoken vocabulary")
    return path


def write_transformers_model(checkpoint: Path, out_dir: Path) -> Path:
    """The checkpoint in transformers' Whisper layout (config, generation config, weights)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    dims = saved["dims"]
    tokenizer = _whisper_tokenizer(dims["n_vocab"])
    eot = tokenizer.eot
    config = WhisperConfig(
        vocab_size=dims["n_vocab"],
        num_mel_bins=dims["n_mels"],
        d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"],
        encoder_attention_heads=dims["n_audio_head"],
        decoder_layers=dims["n_text_layer"],
        decoder_attention_heads=dims["n_text_head"],
        encoder_ffn_dim=4 * dims["n_audio_state"],
        decoder_ffn_dim=4 * dims["n_text_state"],
        max_source_positions=dims["n_audio_ctx"],
        max_target_positions=dims["n_text_ctx"],
        decoder_start_token_id=tokenizer.sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    model = WhisperForConditionalGeneration(config)
    state = {hf_name(k): v for k, v in saved["model_state_dict"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise RuntimeError(f"state dict mapping is wrong: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    languages = tokenizer.all_language_tokens
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=list(tokenizer.non_speech_tokens),
        begin_suppress_tokens=tokenizer.encode(" ") + [eot],
        lang_to_id={tokenizer.decode([t]): t for t in languages},
        no_timestamps_token_id=tokenizer.no_timestamps,
        max_length=dims["n_text_ctx"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    write_tokenizer_json(dims["n_vocab"], out_dir)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "WhisperFeatureExtractor",
                "feature_size": dims["n_mels"],
                "hop_length": 160,
                "chunk_length": 30,
                "n_fft": 400,
                "n_samples": 480000,
                "nb_max_frames": 3000,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": False,
                "sampling_rate": 16000,
            },
            indent=2,
        )
    )
    return out_dir


def convert(checkpoint: Path, out_dir: Path) -> Path:
    """checkpoint.pt -> out_dir (a CTranslate2 model directory faster-whisper can load)."""
    if (out_dir / "model.bin").is_file():
        return out_dir
    hf_dir = out_dir.with_name(out_dir.name + "-transformers")
    write_transformers_model(checkpoint, hf_dir)
    converter = shutil.which("ct2-transformers-converter") or str(
        Path(sys.executable).with_name("ct2-transformers-converter")
    )
    subprocess.run(
        [
            converter,
            "--model",
            str(hf_dir),
            "--output_dir",
            str(out_dir),
            "--quantization",
            "float32",
            "--copy_files",
            "tokenizer.json",
            "preprocessor_config.json",
            "--force",
        ],
        check=True,
    )
    check_tensors(checkpoint, out_dir)
    shutil.rmtree(hf_dir)
    return out_dir


# -- reading model.bin back (format: ctranslate2/specs/model_spec.py, `_serialize`) --------------
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16)


def read_ct2_variables(model_bin: Path) -> Iterator[tuple[str, np.ndarray]]:
    with open(model_bin, "rb") as f:

        def string() -> str:
            (length,) = struct.unpack("H", f.read(2))
            return f.read(length)[:-1].decode()

        struct.unpack("I", f.read(4))  # binary version
        string()  # spec name
        struct.unpack("I", f.read(4))  # revision
        (count,) = struct.unpack("I", f.read(4))
        for _ in range(count):
            name = string()
            (rank,) = struct.unpack("B", f.read(1))
            shape = struct.unpack(f"{rank}I", f.read(4 * rank))
            (dtype,) = struct.unpack("B", f.read(1))
            (size,) = struct.unpack("I", f.read(4))
            data = f.read(size)
            yield (
                name,
                (np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape) if dtype < len(_DTYPES) else None),
            )


def check_tensors(checkpoint: Path, ct2_dir: Path) -> dict[str, bool]:
    """Compare a few CTranslate2 tensors with the whisper checkpoint; raise on any difference."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model_state_dict"]
    wanted = {
        "encoder/conv1/weight": state["encoder.conv1.weight"],
        "encoder/position_encodings/encodings": state["encoder.positional_embedding"],
        "encoder/layer_0/self_attention/linear_0/weight": torch.cat(
            [state[f"encoder.blocks.0.attn.{p}.weight"] for p in ("query", "key", "value")]
        ),
        "decoder/embeddings/weight": state["decoder.token_embedding.weight"],
        "decoder/position_encodings/encodings": state["decoder.positional_embedding"],
        "decoder/layer_0/attention/linear_1/weight": torch.cat(
            [state[f"decoder.blocks.0.cross_attn.{p}.weight"] for p in ("key", "value")]
        ),
    }
    found = {name: array for name, array in read_ct2_variables(ct2_dir / "model.bin") if name in wanted}
    results = {}
    for name, tensor in wanted.items():
        if name not in found:
            raise RuntimeError(f"{name} is not in {ct2_dir / 'model.bin'}")
        results[name] = bool(np.array_equal(found[name].reshape(tensor.shape), tensor.numpy()))
    if not all(results.values()):
        raise RuntimeError(f"converted tensors differ from the checkpoint: {results}")
    return results


if __name__ == "__main__":
    out = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(out, check_tensors(Path(sys.argv[1]), out))
