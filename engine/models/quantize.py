"""int8 weights: PyTorch's dynamic quantisation on CPU, bitsandbytes on CUDA.

Linear layers hold most of whisper's weights. On CPU, dynamic quantisation stores them as
int8 and quantises activations on the fly: about 4x less memory for them and faster
matmuls on CPUs with VNNI/AVX-512. The decoder blocks' own layers stay fp32 (accuracy:
see `int8_layer_names`). The token embedding stays fp32 for the lookup, but the
decoder's output projection (the same matrix, 51,865 wide, about half of every decoder
step on CPU) gets an int8 copy quantised row by row, `decoder.int8_output_projection`,
which `engine.decoding.fast_decode` uses; `whisper.decode` (sampling fallbacks) still uses the fp32 matrix.
With the linear layers int8, the encoder's self-attention is most of the encoder; on CPUs
with AMX it runs in bf16 (`engine.models.cpu_attention`).

On CUDA, PyTorch has no int8 matmul for this; bitsandbytes' `Linear8bitLt` (LLM.int8)
does, when that library is installed. The rest of the model runs in fp16 there. Without
bitsandbytes the engine refuses `precision: int8` on a GPU at start-up (engine.device.cuda).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from whisper import model as whisper_model

from engine.models.cpu_attention import use_bf16_encoder_attention

LLM_INT8_THRESHOLD = 6.0  # bitsandbytes' default: activation outliers above this stay in fp16


def _as_plain_linear(module: nn.Module) -> None:
    """whisper subclasses nn.Linear only to cast weights per call; PyTorch's quantiser accepts
    exactly nn.Linear, so swap each for a plain one sharing the same parameters."""
    for name, child in module.named_children():
        if isinstance(child, whisper_model.Linear):
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            plain.weight, plain.bias = child.weight, child.bias
            setattr(module, name, plain)
        else:
            _as_plain_linear(child)


class RowQuantizedLinear(nn.Module):
    """`x @ W^T` in int8, activations quantised with one scale per row, weights with one per
    output channel. PyTorch's dynamic quantisation scales a whole activation tensor at once,
    so in a batch one row's logits would depend on the other rows (real speech decoded other
    tokens alone than in a batch); here each row is quantised on its own, so a window's tokens
    do not depend on what shares its batch. `torch._int_mm` does the int8 matmul, several
    times faster than fp32's (docs/benchmarks.md, "int8 on CPU")."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # one per output channel
        self.register_buffer(
            "weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("weight_scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # one per row
        quantised = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
        out = torch._int_mm(quantised, self.weight_int8.t()).float() * scale * self.weight_scale
        return out.reshape(*x.shape[:-1], -1)


def _attach_output_projection(model: nn.Module) -> None:
    """An int8 copy of the token embedding as the decoder's output projection (logits = x @ E^T)."""
    model.decoder.int8_output_projection = RowQuantizedLinear(model.decoder.token_embedding.weight)


def int8_layer_names(model: nn.Module) -> list[str]:
    """The linear layers that go int8 through dynamic quantisation: the encoder's and the
    decoder's cross-attention keys and values (computed once per window); the output
    projection is int8 too (`RowQuantizedLinear`). The decoder blocks' other
    layers stay fp32. PyTorch quantises activations with one scale per tensor, and the
    decoder's residual stream has outlier features that such a scale crushes: with them int8
    the next token departs from fp32's far more often and the word error rate rises
    (docs/benchmarks.md, "int8 on CPU"). The price is their fp32 size: more host memory and,
    for large models, slower token steps."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return [
        name
        for name in names
        if name.startswith("encoder.") or name.endswith(("cross_attn.key", "cross_attn.value"))
    ]


def quantize_int8(model: nn.Module) -> nn.Module:
    """CPU: the layers `int8_layer_names` picks as dynamically quantised int8 with a scale per
    output channel, the output projection row-quantised (`RowQuantizedLinear`: a scale per
    token row of the embedding, which differ in size, and per activation row), and the
    encoder's self-attention in bf16 where the CPU has AMX. Dynamic quantisation
    scales each activation tensor as a whole, so `engine.decoding.fast_decode` feeds those layers one
    window at a time (the encoder, the cross-attention keys and values): a window's result
    never depends on the others in its batch."""
    _as_plain_linear(model)
    use_bf16_encoder_attention(model)
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the API still works in 2.x.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        layers = {name: per_channel_dynamic_qconfig for name in int8_layer_names(model)}
        model = quantize_dynamic(model, layers, dtype=torch.qint8)
    _attach_output_projection(model)
    return model


def quantize_int8_cuda(model: nn.Module) -> nn.Module:
    """GPU: fp16 model whose linear layers are bitsandbytes int8 layers. The weights are
    quantised when the model is moved to the GPU (`model.to("cuda")`), so the GPU never
    holds them in fp16."""
    import bitsandbytes as bnb

    model = model.half()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                int8 = bnb.nn.Linear8bitLt(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    has_fp16_weights=False,
                    threshold=LLM_INT8_THRESHOLD,
                )
                int8.weight = bnb.nn.Int8Params(
                    child.weight.data, requires_grad=False, has_fp16_weights=False
                )
                if child.bias is not None:
                    int8.bias = child.bias
                setattr(module, name, int8)
            else:
                swap(child)

    swap(model)
    return model
