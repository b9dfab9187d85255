"""The decoder blocks' MLPs: LLaMA's gated SiLU one, and the GELU (tanh) one with biases of
CodeGen/MOSS and ChatGLM v1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from collie.models.common.args import DecoderArgs
from collie.models.layers import Linear
from collie.models.swiglu import swiglu_mlp


class GatedMLP(nn.Module):
    def __init__(self, args: DecoderArgs) -> None:
        super().__init__()
        self.gate_proj = Linear(args.hidden, args.intermediate, bias=args.mlp_bias)
        self.up_proj = Linear(args.hidden, args.intermediate, bias=args.mlp_bias)
        self.down_proj = Linear(args.intermediate, args.hidden, bias=args.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fusable(x):
            return swiglu_mlp(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def _fusable(self, x: torch.Tensor) -> bool:
        """Whether the three projections are collie's own plain linear layers (not adapters or
        quantized layers, no bias, no hooks, weights held whole) outside autocast: then one node
        computes the MLP (`collie.models.swiglu`)."""
        linears = (self.gate_proj, self.up_proj, self.down_proj)
        return (all(type(m) is Linear and m.bias is None and not isinstance(m.weight, DTensor)
                    and not (m._forward_hooks or m._forward_pre_hooks) for m in linears)
                and not isinstance(x, DTensor) and not torch.is_autocast_enabled(x.device.type))



class GeluMLP(nn.Module):
    def __init__(self, args: DecoderArgs) -> None:
        super().__init__()
        self.fc_in = Linear(args.hidden, args.intermediate, bias=True)
        self.fc_out = Linear(args.intermediate, args.hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))
