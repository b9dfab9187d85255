"""The decoder network, single device, plain PyTorch: LLaMA 1/2/3, Qwen2, Mistral (sliding
window), InternLM 1/2 and ChatGLM 2/3 / GLM checkpoints all load into it, each family reading its
config.json through its spec's `args`.

Knows nothing about parallelism: tensor/pipeline/data parallel are applied from outside
(`collie.distributed`). Layers live in a `ModuleDict` keyed by index so a pipeline stage
can drop the layers it does not own and keep checkpoint names stable; a stage without
`embed_tokens` takes hidden states, one without `lm_head` returns them (`hidden_states`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from collie.models.base import CausalLMOutput, CollieModel, spec_for
from collie.models.common.args import DecoderArgs
from collie.models.common.attention import Attention, attention_bias_mask, default_position_ids, is_packed
from collie.models.common.attention_layout import CacheLayout
from collie.models.common.mlp import GatedMLP
from collie.models.common.packed_attention import PackedDocuments
from collie.models.common.rope import dynamic_ntk_frequencies, inverse_frequencies, rope_cos_sin, scaling_kind
from collie.models.init import init_tensor
from collie.models.kv_cache import KVCache
from collie.models.layers import Linear, RMSNorm
from collie.models.loss import causal_lm_loss, lm_head_loss


class DecoderLayer(nn.Module):
    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden, args.rms_eps)
        self.self_attn = Attention(args, layer_idx)
        self.post_attention_layernorm = RMSNorm(args.hidden, args.rms_eps)
        self.mlp = GatedMLP(args)

    def forward(self, h, cos, sin, mask=None, kv_cache=None):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, kv_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaForCausalLM(CollieModel):
    """Decoder-only LLaMA. `forward(input_ids, attention_mask, labels, position_ids, kv_cache,
    inputs_embeds, logits_to_keep)`.

    Networks that differ only in their blocks and norms (MOSS, ChatGLM v1) subclass it and set
    the class attributes below; the forward pass, positions, masks and KV cache are shared."""

    block_cls: type = DecoderLayer  # (args, layer index) -> a block
    norm_cls: type = RMSNorm  # (dim, eps) -> the final norm
    head_bias = False

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.args = args = spec_for(config).args(config)  # the family's reader
        self.embed_tokens = nn.Embedding(args.vocab, args.hidden)
        self.layers = nn.ModuleDict({str(i): self.block_cls(args, i) for i in range(args.layers)})
        self.norm = self.norm_cls(args.hidden, args.rms_eps)
        self.lm_head = Linear(args.hidden, args.vocab, bias=self.head_bias)
        if args.tied_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # A plain attribute, not a buffer: it is recomputed cheaply, never checkpointed,
        # and survives meta-device construction.
        self._inv_freq = inverse_frequencies(args.rotary_dim, args.rope_theta, args.rope_scaling)

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None, inputs_embeds: Optional[torch.Tensor] = None,
                logits_to_keep: Optional[torch.Tensor] = None, skip_logits: bool = False) -> CausalLMOutput:
        """`inputs_embeds` [batch, seq, hidden] (as in transformers) replaces `input_ids` and the
        embedding lookup; positions then come from `attention_mask` or `position_ids`.
        `logits_to_keep` (indices along the sequence, as in transformers): the only positions
        whose logits are made — a server needs each sequence's last, not a whole prompt's.
        `skip_logits` (with `labels`, as in Liger-Kernel): only the loss is wanted, so logits are
        made only at the positions that predict a label and none are returned (always so under
        `loss_chunk_tokens`)."""
        # Sizes from the input, not from h: under sequence parallel h holds a slice of the sequence.
        tokens = input_ids if inputs_embeds is None else inputs_embeds
        seq = tokens.shape[1]
        if inputs_embeds is not None:
            h = inputs_embeds
        else:
            h = self.embed_tokens(input_ids) if self.embed_tokens is not None else input_ids
        if (self.embed_tokens is not None or inputs_embeds is not None) and self.compute_dtype is not None:
            h = h.to(self.compute_dtype)  # activations carry the compute dtype from here on
        cos, sin, mask = self.rotary_and_mask(tokens, attention_mask, position_ids, kv_cache, h.dtype)
        for layer in self.layers.values():
            h = layer(h, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        # Under sequence parallel h holds a slice of the sequence: the head gathers it, then select.
        select_now = logits_to_keep is not None and self.lm_head is not None and h.shape[1] == seq
        if select_now:
            h = h.index_select(1, logits_to_keep)
        if self.norm is not None:
            h = self.norm(h)
        if self.lm_head is None:
            return CausalLMOutput(logits=None, hidden_states=h, kv_cache=kv_cache)
        if labels is not None and (skip_logits or self.loss_chunk_tokens > 0):
            return CausalLMOutput(logits=None, loss=lm_head_loss(h, self.lm_head, labels, self.loss_chunk_tokens),
                                  kv_cache=kv_cache)
        logits = self.lm_head(h)
        if logits_to_keep is not None and not select_now:
            logits = logits.index_select(1, logits_to_keep)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(logits=logits, loss=loss, kv_cache=kv_cache)

    def rotary_and_mask(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                        position_ids: Optional[torch.Tensor], kv_cache: Optional[KVCache], dtype: torch.dtype):
        """The rotary tables (cos, sin) and the attention mask of this forward. `input_ids` gives
        the sizes only (a later pipeline stage receives hidden states in its place)."""
        batch, seq = input_ids.shape[:2]
        past = kv_cache.length if kv_cache is not None else 0
        if isinstance(kv_cache, CacheLayout):
            if position_ids is None:
                raise ValueError("a KV cache that lays out attention itself needs position_ids")
            cos, sin = rope_cos_sin(self._frequencies(position_ids), position_ids, dtype)
            kv_cache.use_window(self.args.sliding_window)
            return cos, sin, None
        if position_ids is None:
            position_ids = default_position_ids(batch, seq, past, attention_mask, input_ids.device)
        cos, sin = rope_cos_sin(self._frequencies(position_ids), position_ids, dtype)
        if past == 0 and attention_mask is not None and is_packed(attention_mask):
            documents = PackedDocuments(attention_mask)
            if documents.fits_window(self.args.sliding_window):
                return cos, sin, documents  # attention computed per document
        return cos, sin, attention_bias_mask(attention_mask, seq, past, input_ids.device, self.args.sliding_window)

    def _frequencies(self, position_ids: torch.Tensor) -> torch.Tensor:
        if self._inv_freq.device != position_ids.device:
            self._inv_freq = self._inv_freq.to(position_ids.device)
        args = self.args
        if scaling_kind(args.rope_scaling) == "dynamic":
            needed = int(position_ids.max()) + 1  # a host sync, only for dynamic scaling
            if needed > args.max_positions:
                return dynamic_ntk_frequencies(args.rotary_dim, args.rope_theta, float(args.rope_scaling["factor"]),
                                               args.max_positions, needed).to(position_ids.device)
        return self._inv_freq

    def new_kv_cache(self, max_len: int) -> KVCache:
        return KVCache(max_len)

    def reset_parameters(self, init_method: str = "normal", seed: int = 0) -> None:
        std = float(getattr(self.config, "initializer_range", 0.02))  # HF's default
        with torch.no_grad():
            for name, param in self.named_parameters():
                if param.dtype == torch.float32 and param.is_contiguous():
                    # Filled in place: a copy would briefly hold the largest tensor twice (the
                    # embedding: 0.25 GB at 1B, then the peak of building the whole model).
                    init_tensor(name, tuple(param.shape), seed, std, init_method, out=param)
                else:
                    param.copy_(init_tensor(name, tuple(param.shape), seed, std, init_method))
