"""Encoder self-attention in bf16 on CPUs with AMX (`precision: int8`).

On CPU the int8 model's linear layers are cheap; what is left of the encoder is its
self-attention over 1500 frames, which PyTorch's CPU SDPA kernel runs in fp32 (in bf16 it
is no faster). Plain bf16 matmuls can be: on the machine this was written on, a (1500 x 64) by
(64 x 1500) product ran about 2.3x as fast in bf16 as in fp32. So the attention is computed
as two bf16 matmuls around a softmax, a block of query rows at a time so that the block's
scores stay in cache instead of making a round trip through memory.

The encoder's output stays as close to the fp32 encoder's as the int8 encoder's already was
(tests/test_int8.py): the int8 linear layers, not bf16 attention, set the precision of this
mode. fp32 keeps whisper's own attention (its tokens are held to whisper's exactly).

Only AMX makes it pay: with AVX-512 BF16 alone the bf16 product is no faster than fp32's and
the blocks lose to PyTorch's fused fp32 kernel, so such CPUs, and those without bf16, keep
whisper's attention (docs/benchmarks.md, "CPU attention in bf16", has the figures).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from whisper.model import MultiHeadAttention

QUERY_ROWS = 100  # query rows per block: 12 heads x 100 x 1500 bf16 scores = 3.6 MB, cache-sized


def fast_bf16() -> bool:
    """Whether this CPU has AMX tiles, where bf16 matmuls outrun fp32 ones; private in
    torch.cpu, hence the care: a PyTorch without the check simply keeps fp32."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


class Bf16SelfAttention(MultiHeadAttention):
    """whisper's MultiHeadAttention with `qkv_attention` in bf16; same parameters, same forward."""

    def qkv_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        if mask is not None:  # causal (decoder) attention is not what this is for
            return super().qkv_attention(q, k, v, mask)
        batch, ctx, state = q.shape
        dtype = q.dtype
        heads, head_dim = self.n_head, state // self.n_head
        # (batch, ctx, state) -> (batch * heads, ctx, head_dim); keys transposed for the matmul
        q = (q * head_dim**-0.5).bfloat16().view(batch, ctx, heads, head_dim).transpose(1, 2).flatten(0, 1)
        k = k.bfloat16().view(batch, ctx, heads, head_dim).permute(0, 2, 3, 1).flatten(0, 1)
        v = v.bfloat16().view(batch, ctx, heads, head_dim).transpose(1, 2).flatten(0, 1)
        out = torch.empty(batch * heads, ctx, head_dim, dtype=torch.bfloat16)
        for row in range(0, ctx, QUERY_ROWS):
            scores = torch.bmm(q[:, row : row + QUERY_ROWS], k)
            out[:, row : row + QUERY_ROWS] = torch.bmm(torch.softmax(scores, dim=-1), v)
        out = out.view(batch, heads, ctx, head_dim).transpose(1, 2).reshape(batch, ctx, state)
        return out.to(dtype), None


def use_bf16_encoder_attention(model: nn.Module) -> bool:
    """Switch the encoder's self-attention to bf16 where the CPU has AMX.
    Returns whether it did. The modules keep their parameters; only the class changes."""
    if not fast_bf16():
        return False
    for block in model.encoder.blocks:
        block.attn.__class__ = Bf16SelfAttention
    return True
