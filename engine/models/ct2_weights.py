"""Whisper weights stored in CTranslate2's format (faster-whisper's models), read as an openai-whisper model.

Why: faster-whisper users already have Whisper models on disk as CTranslate2 directories
(`model.bin`, `config.json`, `tokenizer.json`, `vocabulary.txt`; the Hugging Face cache holds
them under `models--Systran--faster-whisper-*`), and some Python packages ship weights only in
that form. Reading them here lets `model:` point at such a directory instead of asking for a
second, openai-whisper copy of the same weights. No CTranslate2 library is needed to read them.

The format (`ctranslate2/specs/model_spec.py`, `ModelSpec._serialize`; read by CTranslate2's
`src/models/model.cc`), little-endian:

    u32 binary version (4..6 share the layout below)
    str spec name ("WhisperSpec"), u32 spec revision
    u32 variable count, then per variable:
        str name ("encoder/layer_0/self_attention/linear_0/weight"), u8 rank, u32 x rank shape,
        u8 dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16),
        u32 byte count, the raw bytes (C order)
    u32 alias count, then per alias: str alias, str name of the variable it shares
    (a str is u16 length including a final NUL, then the UTF-8 bytes and the NUL)

Scalars (rank 0) are settings: head counts, flags. Duplicated tensors are stored once and
aliased (Whisper's output projection is an alias of the token embedding, as openai-whisper
ties them too).

The mapping back to openai-whisper (the converter, `converters/transformers.py`, fuses the
Hugging Face projections; these are split again here):

- self-attention `linear_0` is query, key and value fused along the output rows, with a zero
  bias for the key (Whisper's key projection has none); `linear_1` is the output.
- cross-attention `linear_0` is the query, `linear_1` key and value fused, `linear_2` the output.
- `ffn/linear_0`, `ffn/linear_1` are the MLP; `layer_norm/gamma`, `beta` are weight and bias.
- `encoder/position_encodings` is the sinusoid table openai-whisper keeps as a buffer;
  `decoder/position_encodings` the learned one.

Dropping the key bias is exact even where it is not zero: it adds `q . b` to every score of
a query, the same for every key, and softmax ignores a constant shift.

Quantised directories (int8/int16 weights with `*_scale` variables) are refused: rebuilding
float weights from them would silently give a less accurate model than the user asked for.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from whisper.model import ModelDimensions, Whisper

from engine.errors import Ct2FormatError, QuantisedModelError

PathLike = str | os.PathLike

MODEL_FILE = "model.bin"
CONFIG_FILE = "config.json"
SPEC_NAME = "WhisperSpec"
SUPPORTED_BINARY_VERSIONS = range(4, 7)  # 4 introduced dtype ids; 6 is what CTranslate2 4.x writes
DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
WHISPER_HEAD_DIM = 64  # every released Whisper size; used only when a file does not store its head counts


@dataclass(frozen=True)
class Ct2File:
    """The contents of a `model.bin`, tensors in their stored dtype."""

    binary_version: int
    spec: str  # "WhisperSpec" for Whisper models
    revision: int  # the spec's revision
    variables: dict[str, torch.Tensor]  # in file order; scalars are 0-d tensors
    aliases: dict[str, str]  # alias -> name of the stored variable it shares

    def resolved(self) -> dict[str, torch.Tensor]:
        """Every name, aliases included, mapped to its tensor."""
        return {
            **self.variables,
            **{alias: self.variables[name] for alias, name in self.aliases.items() if name in self.variables},
        }


def is_ct2_model_dir(path: PathLike) -> bool:
    """A directory with a CTranslate2 `model.bin` and its `config.json` (what faster-whisper loads)."""
    path = Path(path)
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()


# -- reading model.bin ------------------------------------------------------------------------
def _unpack(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise Ct2FormatError(f"{getattr(f, 'name', MODEL_FILE)} is truncated (ends at byte {f.tell()})")
    return struct.unpack("<" + fmt, data)


def _string(f: BinaryIO) -> str:
    (length,) = _unpack(f, "H")
    data = f.read(length)
    if len(data) != length:
        raise Ct2FormatError(f"{getattr(f, 'name', MODEL_FILE)} is truncated (ends at byte {f.tell()})")
    return data.rstrip(b"\0").decode("utf-8")


def read_model_bin(path: PathLike) -> Ct2File:
    """Parse a CTranslate2 `model.bin` (layout in the module docstring)."""
    with open(path, "rb") as f:
        (version,) = _unpack(f, "I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            newest = SUPPORTED_BINARY_VERSIONS.stop - 1
            advice = (
                "written by a CTranslate2 newer than this reader"
                if version > newest
                else "convert the model again with a current ct2-transformers-converter"
            )
            raise Ct2FormatError(
                f"{path} has CTranslate2 binary version {version}; this reader knows "
                f"{SUPPORTED_BINARY_VERSIONS.start}-{newest} ({advice})"
            )
        spec = _string(f)
        (revision,) = _unpack(f, "I")
        (count,) = _unpack(f, "I")
        variables: dict[str, torch.Tensor] = {}
        for _ in range(count):
            name = _string(f)
            (rank,) = _unpack(f, "B")
            shape = _unpack(f, "I" * rank) if rank else ()
            type_id, num_bytes = _unpack(f, "BI")
            if type_id not in DTYPES:
                raise Ct2FormatError(f"{path}: variable {name} has unknown dtype id {type_id}")
            dtype = DTYPES[type_id]
            if num_bytes != math.prod(shape) * dtype.itemsize:
                raise Ct2FormatError(
                    f"{path}: variable {name} of shape {list(shape)} holds {num_bytes} bytes"
                )
            data = bytearray(f.read(num_bytes))  # writable, so torch shares it without a warning
            if len(data) != num_bytes:
                raise Ct2FormatError(f"{path} is truncated inside variable {name}")
            variables[name] = (
                torch.frombuffer(data, dtype=dtype).reshape(shape)
                if num_bytes
                else torch.empty(shape, dtype=dtype)
            )
        (alias_count,) = _unpack(f, "I")
        aliases = {}
        for _ in range(alias_count):
            alias = _string(f)
            aliases[alias] = _string(f)
    return Ct2File(version, spec, revision, variables, aliases)


# -- mapping to openai-whisper ----------------------------------------------------------------
def _check_float(variables: dict[str, torch.Tensor], directory: PathLike) -> None:
    integer = sorted(name for name, t in variables.items() if t.dim() > 0 and not t.dtype.is_floating_point)
    if integer or any(name.endswith("_scale") for name in variables):
        kind = (
            f"{str(variables[integer[0]].dtype).removeprefix('torch.')} weights, e.g. {integer[0]}"
            if integer
            else "weights with quantisation scales"
        )
        raise QuantisedModelError(
            f"{directory} is a quantised CTranslate2 model ({kind}); openai-whisper needs float weights. "
            "Use a float16 or float32 conversion instead, e.g. ct2-transformers-converter "
            "--model openai/whisper-base --output_dir whisper-base-ct2 --quantization float16"
        )


def _head_count(variables: dict[str, torch.Tensor], scope: str, n_state: int) -> int:
    stored = variables.get(f"{scope}/num_heads")
    return int(stored) if stored is not None else n_state // WHISPER_HEAD_DIM


def whisper_dims(variables: dict[str, torch.Tensor]) -> ModelDimensions:
    """openai-whisper's dimensions, from tensor shapes and the stored head counts."""

    def count_layers(scope: str) -> int:
        layers = (re.match(rf"{scope}/layer_(\d+)/", name) for name in variables)  # not layer_norm
        return len({match.group(1) for match in layers if match})

    conv1 = variables["encoder/conv1/weight"]  # (n_audio_state, n_mels, 3)
    audio_positions = variables["encoder/position_encodings/encodings"]  # (n_audio_ctx, n_audio_state)
    embedding = variables["decoder/embeddings/weight"]  # (n_vocab, n_text_state)
    text_positions = variables["decoder/position_encodings/encodings"]  # (n_text_ctx, n_text_state)
    return ModelDimensions(
        n_mels=conv1.shape[1],
        n_audio_ctx=audio_positions.shape[0],
        n_audio_state=conv1.shape[0],
        n_audio_head=_head_count(variables, "encoder", conv1.shape[0]),
        n_audio_layer=count_layers("encoder"),
        n_vocab=embedding.shape[0],
        n_text_ctx=text_positions.shape[0],
        n_text_state=embedding.shape[1],
        n_text_head=_head_count(variables, "decoder", embedding.shape[1]),
        n_text_layer=count_layers("decoder"),
    )


def _linear(
    state: dict[str, torch.Tensor], name: str, variables: dict[str, torch.Tensor], source: str
) -> None:
    state[f"{name}.weight"] = variables[f"{source}/weight"]
    state[f"{name}.bias"] = variables[f"{source}/bias"]


def _layer_norm(
    state: dict[str, torch.Tensor], name: str, variables: dict[str, torch.Tensor], source: str
) -> None:
    state[f"{name}.weight"] = variables[f"{source}/gamma"]
    state[f"{name}.bias"] = variables[f"{source}/beta"]


def _split_attention(
    state: dict[str, torch.Tensor],
    name: str,
    fused_weight: torch.Tensor,
    fused_bias: torch.Tensor,
    parts: list[str],
) -> None:
    """Split fused projections (rows [query; key; value] or [key; value]) into whisper's Linears.
    The key's bias is dropped: whisper's key has none (see the module docstring)."""
    for part, weight, bias in zip(parts, fused_weight.chunk(len(parts)), fused_bias.chunk(len(parts))):
        state[f"{name}.{part}.weight"] = weight
        if part != "key":
            state[f"{name}.{part}.bias"] = bias


def whisper_state_dict(variables: dict[str, torch.Tensor], dims: ModelDimensions) -> dict[str, torch.Tensor]:
    """openai-whisper's state dict (names as `Whisper.state_dict()`) from the CTranslate2 variables."""
    v, state = variables, {}
    # The stored table, not a fresh `sinusoids()`: it is whisper's sinusoids rounded to the file's
    # float16 (within 3e-4), as a float16 openai-whisper checkpoint stores this buffer too.
    state["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        _linear(state, f"encoder.{conv}", v, f"encoder/{conv}")
    _layer_norm(state, "encoder.ln_post", v, "encoder/layer_norm")
    state["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    state["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    _layer_norm(state, "decoder.ln", v, "decoder/layer_norm")

    for side, n_layers in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            own = f"{src}/self_attention"
            _split_attention(
                state,
                f"{dst}.attn",
                v[f"{own}/linear_0/weight"],
                v[f"{own}/linear_0/bias"],
                ["query", "key", "value"],
            )
            _linear(state, f"{dst}.attn.out", v, f"{own}/linear_1")
            _layer_norm(state, f"{dst}.attn_ln", v, f"{own}/layer_norm")
            if side == "decoder":
                cross = f"{src}/attention"
                _linear(state, f"{dst}.cross_attn.query", v, f"{cross}/linear_0")
                _split_attention(
                    state,
                    f"{dst}.cross_attn",
                    v[f"{cross}/linear_1/weight"],
                    v[f"{cross}/linear_1/bias"],
                    ["key", "value"],
                )
                _linear(state, f"{dst}.cross_attn.out", v, f"{cross}/linear_2")
                _layer_norm(state, f"{dst}.cross_attn_ln", v, f"{cross}/layer_norm")
            _linear(state, f"{dst}.mlp.0", v, f"{src}/ffn/linear_0")
            _linear(state, f"{dst}.mlp.2", v, f"{src}/ffn/linear_1")
            _layer_norm(state, f"{dst}.mlp_ln", v, f"{src}/ffn/layer_norm")
    return state


def _check_tied_projection(variables: dict[str, torch.Tensor], directory: PathLike) -> None:
    """openai-whisper computes logits with the token embedding; a separate projection cannot be kept."""
    projection = variables.get("decoder/projection/weight")
    embedding = variables["decoder/embeddings/weight"]
    if projection is not None and projection is not embedding and not torch.equal(projection, embedding):
        raise Ct2FormatError(
            f"{directory}: the output projection differs from the token embedding; "
            "openai-whisper ties the two, so this model cannot be represented"
        )
    bias = variables.get("decoder/projection/bias")
    if bias is not None and bias.dim() > 0 and bool(bias.any()):
        raise Ct2FormatError(
            f"{directory}: the output projection has a bias, which openai-whisper's model lacks"
        )


def alignment_heads(directory: PathLike, dims: ModelDimensions) -> torch.Tensor | None:
    """config.json's `alignment_heads` ([layer, head] pairs) as whisper's sparse bool mask, or
    None when the config names none (whisper then keeps its default, the last half of the layers)."""
    try:
        pairs = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8")).get("alignment_heads")
    except (ValueError, AttributeError) as exc:  # not JSON, or not an object
        raise Ct2FormatError(f"{directory}/{CONFIG_FILE} is not a CTranslate2 config ({exc})") from exc
    if not pairs:
        return None
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in pairs:
        if not (0 <= layer < dims.n_text_layer and 0 <= head < dims.n_text_head):
            raise Ct2FormatError(
                f"{directory}/{CONFIG_FILE}: alignment head [{layer}, {head}] is outside the "
                f"decoder's {dims.n_text_layer} layers x {dims.n_text_head} heads"
            )
        mask[layer, head] = True
    return mask.to_sparse()


def read_ct2_model(directory: PathLike) -> Whisper:
    """An openai-whisper model on the CPU in float32 from a CTranslate2 Whisper directory.

    float16, bfloat16 and float32 files are read; the caller converts precision and device
    (float32 first, so CPU runs need no further cast). Quantised files raise
    `QuantisedModelError`, anything else unreadable `Ct2FormatError`.
    """
    directory = Path(directory)
    if not is_ct2_model_dir(directory):
        raise Ct2FormatError(
            f"{directory} is not a CTranslate2 model directory (it needs {MODEL_FILE} and {CONFIG_FILE})"
        )
    ct2 = read_model_bin(directory / MODEL_FILE)
    if ct2.spec != SPEC_NAME:
        raise Ct2FormatError(
            f"{directory} holds a CTranslate2 {ct2.spec or 'unnamed'} model, not a Whisper model "
            f"({SPEC_NAME})"
        )
    variables = ct2.resolved()
    _check_float(variables, directory)
    try:
        dims = whisper_dims(variables)
        _check_tied_projection(variables, directory)
        state = whisper_state_dict(variables, dims)
    except KeyError as exc:
        raise Ct2FormatError(
            f"{directory}: {MODEL_FILE} lacks the variable {exc.args[0]} a Whisper model has"
        ) from exc

    model = Whisper(dims)
    try:
        model.load_state_dict(state, strict=True)  # copies, casting to the model's float32
    except RuntimeError as exc:  # shapes that do not fit the inferred dimensions
        raise Ct2FormatError(
            f"{directory}: the weights do not form a Whisper model ({str(exc).splitlines()[0]})"
        ) from exc
    heads = alignment_heads(directory, dims)
    if heads is not None:
        # as Whisper.set_alignment_heads does
        model.register_buffer("alignment_heads", heads, persistent=False)
    return model
