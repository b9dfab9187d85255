"""MOSS (moss-moon-003), single device: CodeGen's network — one LayerNorm per block feeding
attention and MLP in parallel, partial interleaved (GPT-J) rotary, a GELU-tanh MLP with biases,
an LM head with a bias. It reuses the LLaMA network's attention and forward pass (embedding,
positions, masks, KV cache, pipeline edges) with these blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from collie.models.layers import LayerNorm, Linear
from collie.models.llama.args import LlamaArgs
from collie.models.llama.model import Attention, LlamaForCausalLM

# CodeGen computes q/k/v in this many model-parallel groups (fixed in its code): see hf_adapter.
MP_GROUPS = 4


def moss_args(config) -> LlamaArgs:
    act = getattr(config, "activation_function", "gelu_new")
    if act != "gelu_new":
        raise ValueError(f"activation_function: {act!r} is not supported by MOSS (expected 'gelu_new')")
    heads, hidden = config.n_head, config.n_embd
    if heads % MP_GROUPS:
        raise ValueError(f"n_head: MOSS splits its heads into {MP_GROUPS} groups, so n_head must be a multiple of "
                         f"{MP_GROUPS}, got {heads}")
    return LlamaArgs(hidden=hidden, layers=config.n_layer, heads=heads, kv_heads=heads, head_dim=hidden // heads,
                     intermediate=config.n_inner or 4 * hidden, vocab=config.vocab_size,
                     rms_eps=config.layer_norm_epsilon, qkv_bias=False, o_bias=False, mlp_bias=True,
                     tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)), rope_theta=10000.0,
                     rope_scaling={}, rotary_dim=config.rotary_dim or hidden // heads, rope_interleaved=True,
                     max_positions=config.n_positions, sliding_window=None, dropout=float(config.attn_pdrop or 0.0))


class GeluMLP(nn.Module):
    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.fc_in = Linear(args.hidden, args.intermediate, bias=True)
        self.fc_out = Linear(args.intermediate, args.hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))


class ParallelBlock(nn.Module):
    """Attention and MLP both read the block's normalised input; both outputs join the residual."""

    def __init__(self, args: LlamaArgs, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = LayerNorm(args.hidden, args.rms_eps)
        self.self_attn = Attention(args, layer_idx)
        self.mlp = GeluMLP(args)

    def forward(self, h, cos, sin, mask=None, kv_cache=None):
        x = self.input_layernorm(h)
        return h + self.self_attn(x, cos, sin, mask, kv_cache) + self.mlp(x)


class MossForCausalLM(LlamaForCausalLM):
    read_args = staticmethod(moss_args)
    block_cls = ParallelBlock
    norm_cls = LayerNorm
    head_bias = True
