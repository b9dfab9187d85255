"""CoLLiE's `collie.module`: its loss, its generation mixin and its Megatron-style layers.

`GPTLMLoss` is collie's loss and `PipelineGenerationMixin` collie's generation, which every
collie model has under every layout. The Megatron layers are not: collie's models are plain
single-device PyTorch and tensor parallelism is applied from outside with DTensor, so building
one raises a line saying so.
"""

from __future__ import annotations

from torch import nn

from collie.generation import GenerationMixin
from collie.models.loss import GPTLMLoss

__all__ = ["ColumnParallelLMHead", "ColumnParallelLinear", "ColumnParallelLinearWithoutBias", "GPTLMLoss",
           "LinearWithHiddenStates", "PipelineGenerationMixin", "RowParallelLinear", "RowParallelLinearWithoutBias",
           "VocabParallelEmbedding"]

# CoLLiE gave pipeline models `generate` through this mixin; collie's models all generate.
PipelineGenerationMixin = GenerationMixin


class _MegatronLayer(nn.Module):
    """A Megatron-style layer CoLLiE's models were built of; building one is refused."""

    instead = "nn.Linear"

    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError(f"{type(self).__name__}: collie applies tensor parallelism from outside with DTensor; "
                                  f"use a plain {self.instead} and set tp_size")


class ColumnParallelLinear(_MegatronLayer):
    """Megatron's linear layer split by output features (refused)."""


class RowParallelLinear(_MegatronLayer):
    """Megatron's linear layer split by input features (refused)."""


class VocabParallelEmbedding(_MegatronLayer):
    """Megatron's embedding split by vocabulary (refused)."""

    instead = "nn.Embedding"


class ColumnParallelLinearWithoutBias(_MegatronLayer):
    """CoLLiE's column-parallel linear returning no bias (refused)."""


class RowParallelLinearWithoutBias(_MegatronLayer):
    """CoLLiE's row-parallel linear returning no bias (refused)."""


class LinearWithHiddenStates(_MegatronLayer):
    """CoLLiE's linear that kept its input for pipeline generation (refused: collie's heads are plain)."""


class ColumnParallelLMHead(_MegatronLayer):
    """CoLLiE's column-parallel LM head (refused)."""
