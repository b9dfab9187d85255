"""InternLM2's checkpoint names ↔ ours (the LLaMA network's).

InternLM2 stores q, k and v of a layer in one `attention.wqkv` matrix, grouped by key/value
head: viewed as (kv_heads, q_per_kv + 2, head_dim, hidden), each group holds its q_per_kv
query heads, then its key head, then its value head. Loading splits it into q/k/v (so tensor
parallel shards whole heads of each, by construction); saving interleaves them back.
"""

from __future__ import annotations

from typing import Optional

import torch

from collie.models.hf_adapter import HFAdapter

_RENAMES = [("tok_embeddings.", "embed_tokens."), ("attention.wo.", "self_attn.o_proj."),
            ("feed_forward.w1.", "mlp.gate_proj."), ("feed_forward.w3.", "mlp.up_proj."),
            ("feed_forward.w2.", "mlp.down_proj."), ("attention_norm.", "input_layernorm."),
            ("ffn_norm.", "post_attention_layernorm.")]
_QKV = ("q_proj", "k_proj", "v_proj")


class InternLM2HFAdapter(HFAdapter):
    architecture = "InternLM2ForCausalLM"

    def to_hf_name(self, name: str) -> str:
        if name.startswith("lm_head."):
            return "output." + name[len("lm_head."):]
        for hf, ours in _RENAMES:
            name = name.replace(ours, hf)
        return "model." + name

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        if hf_name.startswith("output."):
            return "lm_head." + hf_name[len("output."):]
        name = hf_name[len("model."):] if hf_name.startswith("model.") else hf_name
        for hf, ours in _RENAMES:
            name = name.replace(hf, ours)
        return name

    def split(self, hf_name: str, tensor: torch.Tensor, hf_config) -> list[tuple[str, torch.Tensor]]:
        if ".attention.wqkv." not in hf_name:
            return super().split(hf_name, tensor, hf_config)
        kv_heads, q_per_kv, head_dim = _grouping(hf_config)
        grouped = tensor.reshape(kv_heads, q_per_kv + 2, head_dim, *tensor.shape[1:])
        parts = (grouped[:, :q_per_kv], grouped[:, q_per_kv:q_per_kv + 1], grouped[:, q_per_kv + 1:])
        prefix = self.from_hf_name(hf_name).replace("attention.wqkv.", "self_attn.{}.")
        return [(prefix.format(proj), part.reshape(-1, *tensor.shape[1:])) for proj, part in zip(_QKV, parts)]

    def hf_layout(self, names, hf_config) -> list[tuple[str, list[str]]]:
        layout = []
        for name in names:
            if ".self_attn.q_proj." in name:
                wqkv = name.replace("self_attn.q_proj.", "attention.wqkv.")
                layout.append(("model." + wqkv, [name.replace("q_proj", proj) for proj in _QKV]))
            elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
                layout.append((self.to_hf_name(name), [name]))
        return layout

    def fuse(self, hf_name: str, parts: list[torch.Tensor], hf_config) -> torch.Tensor:
        if ".attention.wqkv." not in hf_name:
            return super().fuse(hf_name, parts, hf_config)
        kv_heads, q_per_kv, head_dim = _grouping(hf_config)
        rest = parts[0].shape[1:]
        q, k, v = (part.reshape(kv_heads, -1, head_dim, *rest) for part in parts)
        return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _grouping(hf_config) -> tuple[int, int, int]:
    heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    return kv_heads, heads // kv_heads, hf_config.hidden_size // heads
