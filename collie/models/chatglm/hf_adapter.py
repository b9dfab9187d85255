"""ChatGLM2/3 and GLM checkpoint names ↔ ours (the LLaMA network's).

Both formats stack several of our matrices by rows: ChatGLM's `query_key_value` is [q | k | v]
(weight and bias, grouped-query heads contiguous), and the MLP's `dense_h_to_4h` (ChatGLM) or
`gate_up_proj` (transformers' GLM) is [gate | up]. Loading splits them, saving stacks them.
"""

from __future__ import annotations

from typing import Optional

import torch

from collie.models.hf_adapter import HFAdapter
from collie.models.llama.hf_adapter import LlamaHFAdapter

# (checkpoint, ours): name prefixes, then infixes inside a layer.
_PREFIXES = [("transformer.embedding.word_embeddings.", "embed_tokens."),
             ("transformer.encoder.final_layernorm.", "norm."), ("transformer.output_layer.", "lm_head."),
             ("transformer.encoder.layers.", "layers.")]
_INFIXES = [(".self_attention.query_key_value.", ".self_attn.q_proj."),
            (".self_attention.dense.", ".self_attn.o_proj."), (".mlp.dense_h_to_4h.", ".mlp.gate_proj."),
            (".mlp.dense_4h_to_h.", ".mlp.down_proj.")]


def _rename(name: str, pairs_prefix: list[tuple[str, str]], pairs_infix: list[tuple[str, str]]) -> str:
    for old, new in pairs_prefix:
        if name.startswith(old):
            name = new + name[len(old):]
            break
    for old, new in pairs_infix:
        name = name.replace(old, new)
    return name


class _RowStacks(HFAdapter):
    """An adapter whose checkpoint stacks some of our tensors by rows. Subclasses name the
    stacks: `_stacks()` gives (checkpoint infix, our infixes), `_rows()` their row counts."""

    def _stacks(self) -> list[tuple[str, tuple[str, ...]]]:
        raise NotImplementedError

    def _rows(self, infix: str, hf_config) -> list[int]:
        raise NotImplementedError

    def split(self, hf_name: str, tensor: torch.Tensor, hf_config) -> list[tuple[str, torch.Tensor]]:
        for infix, parts in self._stacks():
            if infix in hf_name:
                name = self.from_hf_name(hf_name)
                pieces = tensor.split(self._rows(infix, hf_config))
                return [(name.replace(parts[0], part), piece) for part, piece in zip(parts, pieces)]
        return super().split(hf_name, tensor, hf_config)

    def hf_layout(self, names, hf_config) -> list[tuple[str, list[str]]]:
        followers = {part for _, parts in self._stacks() for part in parts[1:]}
        layout = []
        for name in names:
            stack = next(((infix, parts) for infix, parts in self._stacks() if parts[0] in name), None)
            if stack is not None:
                layout.append((self.to_hf_name(name), [name.replace(stack[1][0], part) for part in stack[1]]))
            elif not any(part in name for part in followers):
                layout.append((self.to_hf_name(name), [name]))
        return layout

    def fuse(self, hf_name: str, parts: list[torch.Tensor], hf_config) -> torch.Tensor:
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class ChatGLMHFAdapter(_RowStacks):
    architecture = "ChatGLMModel"

    def to_hf_name(self, name: str) -> str:
        return _rename(name, [(b, a) for a, b in _PREFIXES], [(b, a) for a, b in _INFIXES])

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        if hf_name.endswith("rotary_pos_emb.inv_freq"):
            return None
        return _rename(hf_name, _PREFIXES, _INFIXES)

    def _stacks(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(".self_attention.query_key_value.", (".self_attn.q_proj.", ".self_attn.k_proj.",
                                                      ".self_attn.v_proj.")),
                (".mlp.dense_h_to_4h.", (".mlp.gate_proj.", ".mlp.up_proj."))]

    def _rows(self, infix: str, hf_config) -> list[int]:
        if "query_key_value" in infix:
            kv = hf_config.num_key_value_heads * hf_config.kv_channels
            return [hf_config.num_attention_heads * hf_config.kv_channels, kv, kv]
        return [hf_config.ffn_hidden_size] * 2


class GlmHFAdapter(_RowStacks, LlamaHFAdapter):
    """transformers' own GLM format: LLaMA's names with gate and up stacked."""

    architecture = "GlmForCausalLM"

    def to_hf_name(self, name: str) -> str:
        return LlamaHFAdapter.to_hf_name(self, name.replace(".mlp.gate_proj.", ".mlp.gate_up_proj."))

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        name = LlamaHFAdapter.from_hf_name(self, hf_name)
        return name.replace(".mlp.gate_up_proj.", ".mlp.gate_proj.") if name else name

    def _stacks(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(".mlp.gate_up_proj.", (".mlp.gate_proj.", ".mlp.up_proj."))]

    def _rows(self, infix: str, hf_config) -> list[int]:
        return [hf_config.intermediate_size] * 2
