"""What the engine knows about a model family: one declarative `ModelSpec` each.

`collie.distributed`, `collie.trainer` and `collie.monitors` read a model only through its
spec: where its decoder blocks and edge modules (embedding, final norm, head) live, how to
split it for tensor parallel, its sizes, its FLOPs per token, its HF adapter and the shapes
`collie init-model` writes. Adding a family means writing a model, an adapter, a TP plan and
one of these, then listing it in `collie.models.registry.FAMILIES`.

A spec names its model class by import path ("package.module:Class") rather than holding the
class: the specs sit below `collie.models.base` (which looks them up), the model classes above
it (they subclass `CollieModel`), so the class is imported only when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from torch import nn

if TYPE_CHECKING:
    from collie.models.hf_adapter import HFAdapter

EDGES = ("embedding", "final_norm", "head")


@dataclass(frozen=True)
class ModelDims:
    """The sizes of an architecture that parallelism and monitors need, read from its HF config."""

    layers: int
    heads: int
    kv_heads: int
    hidden: int
    vocab: int
    tied_embeddings: bool = False
    # The positions the model was built for (None: its config does not say).
    max_positions: Optional[int] = None

    @classmethod
    def of(cls, args: Any) -> "ModelDims":
        """The dims of a family's network settings (any object with these fields: `DecoderArgs`)."""
        return cls(layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, hidden=args.hidden,
                   vocab=args.vocab, tied_embeddings=args.tied_embeddings, max_positions=args.max_positions)


def dense_flops_per_token(dims: ModelDims, seq_len: int, trainable_params: float) -> float:
    """Training FLOPs per token of a dense decoder: 6 per parameter (forward and backward
    matmuls) plus the attention score/value matmuls, which grow with the sequence."""
    return 6.0 * trainable_params + 12.0 * dims.layers * dims.hidden * seq_len


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # HF `model_type` values this family loads.
    model_types: tuple[str, ...]
    # The model class as "package.module:Class" (imported when first built), or a factory
    # (hf_config) -> model.
    model: Union[str, Callable[[Any], nn.Module]]
    adapter: "HFAdapter"
    # (model or pipeline stage, sequence_parallel, loss_parallel) -> {module name: DTensor style}
    tp_plan: Callable[[nn.Module, bool, bool], dict]
    # hf_config -> the network's settings (`collie.models.common.args.DecoderArgs`): the one place
    # a family reads its config.json; its model and its dims both come from it.
    args: Optional[Callable[[Any], Any]] = None
    # (dims, sequence length, trainable parameters) -> training FLOPs per token
    flops_per_token: Callable[[ModelDims, int, float], float] = dense_flops_per_token
    # `collie init-model` shapes: name -> HF config fields (vocab_size None: the tokenizer's size)
    shapes: dict[str, dict] = field(default_factory=dict)
    # (shape fields, tokenizer) -> an HF config of this family
    shape_config: Optional[Callable[[dict, Any], Any]] = None
    # The config class of a family transformers does not ship (None: transformers' AutoConfig).
    config_cls: Optional[type] = None
    # Attribute names of the decoder blocks (an nn.ModuleDict keyed by index) and of the edges.
    blocks_attr: str = "layers"
    edge_attrs: dict[str, str] = field(default_factory=lambda: {"embedding": "embed_tokens",
                                                                "final_norm": "norm", "head": "lm_head"})
    # Whether the family can be split by tensor and pipeline parallel (collie's own models can).
    supports_model_parallel: bool = True
    # Families sharing a `model_type` (ChatGLM v1 and 2/3): whether a config (config.json's dict
    # or a config object) is this family's. None: every config of its model types.
    accepts: Optional[Callable[[Any], bool]] = None
    # (input_ids, attention_mask, hf_config, kv_cache) -> position_ids, for a family whose positions
    # depend on the tokens (ChatGLM v1): computed where the ids are and handed to every pipeline
    # stage. None: positions follow from the attention mask alone.
    position_ids: Optional[Callable[..., Any]] = None

    @property
    def model_cls(self) -> Callable[[Any], nn.Module]:
        """The model class (or factory): `spec.model_cls(hf_config)` builds the model."""
        if not isinstance(self.model, str):
            return self.model
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)

    def dims(self, hf_config) -> ModelDims:
        """The sizes parallelism and monitors need, read from an HF config."""
        return ModelDims.of(self.args(hf_config))

    # -- accessors the engine uses ---------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleDict:
        return getattr(model, self.blocks_attr)

    def block_items(self, model: nn.Module) -> list[tuple[Any, nn.Module]]:
        """(key, block) pairs; `self.blocks(model)[key] = new` replaces a block (a ModuleDict
        keyed by index for collie's models, a ModuleList for transformers' own)."""
        blocks = self.blocks(model)
        return list(blocks.items()) if isinstance(blocks, nn.ModuleDict) else list(enumerate(blocks))

    def edge(self, model: nn.Module, which: str) -> Optional[nn.Module]:
        """The embedding, final norm or head (None on a pipeline stage without it)."""
        return getattr(model, self.edge_attrs[which])

    def set_edge(self, model: nn.Module, which: str, module: Optional[nn.Module]) -> None:
        setattr(model, self.edge_attrs[which], module)

    def edge_name(self, which: str) -> str:
        return self.edge_attrs[which]

    def present_edges(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in (self.edge(model, which) for which in EDGES) if m is not None]
