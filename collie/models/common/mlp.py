"""The decoder blocks' MLPs: LLaMA's gated SiLU one, and the GELU (tanh) one with biases of
CodeGen/MOSS and ChatGLM v1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from collie.models.common.args import DecoderArgs
from collie.models.layers import Linear


class GatedMLP(nn.Module):
    def __init__(self, args: DecoderArgs) -> None:
        super().__init__()
        self.gate_proj = Linear(args.hidden, args.intermediate, bias=args.mlp_bias)
        self.up_proj = Linear(args.hidden, args.intermediate, bias=args.mlp_bias)
        self.down_proj = Linear(args.intermediate, args.hidden, bias=args.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))



class GeluMLP(nn.Module):
    def __init__(self, args: DecoderArgs) -> None:
        super().__init__()
        self.fc_in = Linear(args.hidden, args.intermediate, bias=True)
        self.fc_out = Linear(args.intermediate, args.hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))
