"""MOSS (moss-moon-003), single device: CodeGen's network — one LayerNorm per block feeding
attention and MLP in parallel, partial interleaved (GPT-J) rotary, a GELU-tanh MLP with biases,
an LM head with a bias. The decoder network's attention and forward pass (embedding, positions,
masks, KV cache, pipeline edges) run these blocks; its settings come from `moss_args`.
"""

from __future__ import annotations

from torch import nn

from collie.models.common.args import DecoderArgs
from collie.models.common.attention import Attention
from collie.models.common.decoder import LlamaForCausalLM
from collie.models.common.mlp import GeluMLP
from collie.models.layers import LayerNorm


class ParallelBlock(nn.Module):
    """Attention and MLP both read the block's normalised input; both outputs join the residual."""

    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = LayerNorm(args.hidden, args.rms_eps)
        self.self_attn = Attention(args, layer_idx)
        self.mlp = GeluMLP(args)

    def forward(self, h, cos, sin, mask=None, kv_cache=None):
        x = self.input_layernorm(h)
        return h + self.self_attn(x, cos, sin, mask, kv_cache) + self.mlp(x)


class MossForCausalLM(LlamaForCausalLM):
    block_cls = ParallelBlock
    norm_cls = LayerNorm
    head_bias = True
