"""Rotary position embeddings of the decoder network (default, linear, llama3 and dynamic-NTK
scaling).

The frequencies follow transformers' formulas exactly, so logits match HF to fp32 rounding.
"""

from __future__ import annotations

import math

import torch


def rope_settings(hf_config) -> tuple[float, dict]:
    """(theta, scaling dict) from an HF config of transformers 4.x (`rope_theta`,
    `rope_scaling`) or 5.x (`rope_parameters`)."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = dict(getattr(hf_config, "rope_scaling", None) or {}) or params
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return float(theta), scaling


def inverse_frequencies(head_dim: int, theta: float, scaling: dict) -> torch.Tensor:
    """Per-pair inverse frequencies, shape [head_dim // 2], float32."""
    # Always on the CPU, even inside a meta-device context: the table is tiny and real.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(torch.float) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    kind = scaling_kind(scaling)
    if kind in ("default", "dynamic"):  # dynamic: unchanged up to the trained context (see below)
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        return _llama3(inv_freq, scaling)
    raise ValueError(f"rope_scaling: type {kind!r} is not supported (supported: default, linear, llama3, dynamic)")


def _llama3(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def scaling_kind(scaling: dict) -> str:
    return scaling.get("rope_type", scaling.get("type", "default"))


def dynamic_ntk_frequencies(head_dim: int, theta: float, factor: float, trained_positions: int,
                            needed_positions: int) -> torch.Tensor:
    """Dynamic NTK scaling: past the trained context the base grows with the sequence, so
    positions beyond it are interpolated instead of extrapolated (transformers' formula)."""
    grown = theta * ((factor * needed_positions / trained_positions) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return inverse_frequencies(head_dim, grown, {})


def rope_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos and sin of shape [batch, seq, rotary dims] for the given positions."""
    freqs = position_ids[..., None].float() * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]. The first `cos.shape[-1]` dims of each head rotate (all
    of them unless the rotary is partial, as in ChatGLM), the rest pass through. Rotate-half
    pairs dim i with i + rotary/2 (LLaMA's HF layout, no permutation); `interleaved` pairs
    2i with 2i + 1 (GLM)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary], x[..., rotary:]
    if interleaved:
        cos = cos[..., :rotary // 2].repeat_interleave(2, dim=-1)
        sin = sin[..., :rotary // 2].repeat_interleave(2, dim=-1)
        rotated = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
    else:
        half = rotary // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + rotated * sin
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out
