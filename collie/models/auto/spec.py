"""Any other Hugging Face causal LM, run through transformers' own class (`AutoModelForCausalLM`).

collie has no model of its own for it, so only what needs no knowledge of its internals is
offered: data parallel and ZeRO (FSDP2 per decoder block), activation checkpointing, every
optimizer including LOMO/AdaLomo, LoRA on its linear layers, checkpoints and export. Tensor and
pipeline parallel need a collie family (a model split by plan): asking for them fails with one
line. The decoder blocks are found by shape: the ModuleList with one entry per hidden layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from collie.models.hf_adapter import HFAdapter
from collie.models.spec import ModelDims, ModelSpec


class IdentityAdapter(HFAdapter):
    """transformers' own class: our names are the checkpoint's (no tables)."""


def auto_dims(config) -> ModelDims:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    return ModelDims(layers=config.num_hidden_layers, heads=heads,
                     kv_heads=getattr(config, "num_key_value_heads", None) or heads, hidden=config.hidden_size,
                     vocab=config.vocab_size, tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                     max_positions=_max_positions(config))


def _max_positions(config) -> Optional[int]:
    """transformers' configs name their context in several ways."""
    for name in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def build_auto(hf_config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(hf_config)


def _no_tp_plan(model, sequence_parallel: bool, loss_parallel: bool) -> dict:
    raise AssertionError("check_layout refuses tensor parallel for transformers' own classes")


@dataclass(frozen=True)
class AutoSpec(ModelSpec):
    def dims(self, hf_config) -> ModelDims:
        return auto_dims(hf_config)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        layers = auto_dims(model.config).layers
        for module in model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == layers:
                return module
        raise ValueError(f"{type(model).__name__}: no list of {layers} decoder blocks found")

    def edge(self, model: nn.Module, which: str) -> Optional[nn.Module]:
        if which == "embedding":
            return model.get_input_embeddings()
        if which == "head":
            return model.get_output_embeddings()
        return None


AUTO = AutoSpec(name="auto", model_types=(), model=build_auto, adapter=IdentityAdapter(), tp_plan=_no_tp_plan,
                supports_model_parallel=False)


def is_causal_lm_type(model_type: Optional[str]) -> bool:
    """Whether transformers has a causal-LM class for `model_type` (no remote code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def load_auto(path: str, dtype: torch.dtype) -> nn.Module:
    """transformers' model from an HF directory, in `dtype`, never running remote code."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForCausalLM

    # transformers 4.56 renamed `torch_dtype` to `dtype`.
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    model, info = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                       output_loading_info=True, **{key: dtype})
    # transformers only warns about weights that do not fit; a training run must not start from them.
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = sorted(str(n) for n in info.get(what) or [])
        if names:
            raise ValueError(f"{path}: {what.replace('_', ' ')} for a {model.config.model_type!r} model: "
                             f"{', '.join(names[:5])}")
    model.config.use_cache = False  # training: no KV cache (generation turns it on by itself)
    return model
