"""Our LLaMA against transformers' on random tiny configs: logits, both load directions, greedy
generation."""

import math

import pytest
import torch
from helpers import tiny_llama_config
from transformers import AutoModelForCausalLM, GlmConfig, MistralConfig, Qwen2Config

from collie import LlamaForCausalLM
from collie.models.base import CollieModel
from collie.models.common.rope import inverse_frequencies, rope_settings

# head_dim 64 with theta 5e5 gives wavelengths from 6 to ~2e6 positions: with an original context
# of 1024 some fall in each of llama3's three bands (kept, smoothed, divided by the factor);
# test_llama3_rope_hits_every_band checks that, so no band's formula goes untested.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024}
VARIANTS = {
    "mha": tiny_llama_config(num_key_value_heads=4),
    "gqa": tiny_llama_config(),
    "tied": tiny_llama_config(tie_word_embeddings=True),
    "llama3_rope": tiny_llama_config(rope_scaling=LLAMA3_ROPE, rope_theta=500000.0, head_dim=64),
    "bias": tiny_llama_config(attention_bias=True, mlp_bias=True),
    "qwen2": Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=256, max_position_embeddings=256),
    # A window far shorter than the 48-token test sequences, so it shapes every later token.
    "mistral": MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128, vocab_size=256, max_position_embeddings=256, sliding_window=8),
    # transformers' GLM: half of each head rotates, in interleaved pairs; gate and up stacked.
    "glm": GlmConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     intermediate_size=128, vocab_size=256, max_position_embeddings=256, pad_token_id=0,
                     eos_token_id=1),
    # Dynamic NTK: past max_position_embeddings (32 < 48) the rotary base grows with the sequence.
    "dynamic_rope": tiny_llama_config(max_position_embeddings=32, rope_scaling={"rope_type": "dynamic",
                                                                                 "factor": 2.0}),
}


def _hf_model(config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    # Random biases (HF initialises them to zero), so a bias mapped wrongly cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_generation_match_transformers(variant, tmp_path):
    hf = _hf_model(VARIANTS[variant])
    hf.save_pretrained(tmp_path / "hf")
    ours = CollieModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert isinstance(ours, LlamaForCausalLM)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        assert (hf(ids).logits - ours(ids).logits).abs().max() <= 1e-5
        # Left padding: positions and masks must agree with HF on the real tokens.
        mask = torch.ones_like(ids)
        mask[0, :7] = 0
        diff = (hf(ids, attention_mask=mask).logits - ours(ids, attention_mask=mask).logits)[mask.bool()]
        assert diff.abs().max() <= 1e-5

    # Our save → HF load.
    ours.save_pretrained(str(tmp_path / "ours"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (reloaded(ids).logits - ours(ids).logits).abs().max() <= 1e-5

    prompt, prompt_mask = ids[:, :10], mask[:, :10]
    expected = hf.generate(prompt, attention_mask=prompt_mask, max_new_tokens=12, do_sample=False,
                           pad_token_id=0)
    got = ours.generate(prompt, attention_mask=prompt_mask, max_new_tokens=12)
    assert got.tolist() == expected.tolist()


def test_sharded_save_writes_an_index_transformers_reads(tmp_path):
    hf = _hf_model(VARIANTS["gqa"])
    hf.save_pretrained(tmp_path / "hf")
    ours = CollieModel.from_pretrained(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ours"), max_shard_bytes=64 * 1024)
    assert (tmp_path / "ours" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "ours").glob("model-*-of-*.safetensors"))) > 2
    reloaded = CollieModel.from_pretrained(str(tmp_path / "ours"))
    for (name, a), b in zip(ours.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_dtype_is_honoured(tmp_path):
    _hf_model(VARIANTS["gqa"]).save_pretrained(tmp_path / "hf")
    ours = CollieModel.from_pretrained(str(tmp_path / "hf"), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    ours.save_pretrained(str(tmp_path / "bf16"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").config.dtype == torch.bfloat16


def test_checkpoint_of_another_shape_names_the_tensor(tmp_path):
    _hf_model(VARIANTS["gqa"]).save_pretrained(tmp_path / "hf")
    model = LlamaForCausalLM(tiny_llama_config(intermediate_size=96))
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight has shape"):
        model.load_hf_weights(str(tmp_path / "hf"))


def test_llama3_rope_hits_every_band():
    config = VARIANTS["llama3_rope"]
    head_dim = config.head_dim
    theta, scaling = rope_settings(config)
    assert theta == 500000.0
    plain = inverse_frequencies(head_dim, theta, {})
    wavelengths = 2 * math.pi / plain
    context = LLAMA3_ROPE["original_max_position_embeddings"]
    high = wavelengths < context / LLAMA3_ROPE["high_freq_factor"]
    low = wavelengths > context / LLAMA3_ROPE["low_freq_factor"]
    medium = ~high & ~low
    assert high.sum() >= 2 and medium.sum() >= 2 and low.sum() >= 2, (high.sum(), medium.sum(), low.sum())
    scaled = inverse_frequencies(head_dim, theta, scaling)
    assert torch.equal(scaled[high], plain[high])
    assert torch.equal(scaled[low], plain[low] / LLAMA3_ROPE["factor"])
    # Smoothed: strictly between the two, and large enough to move positions within the test's 58.
    assert ((scaled[medium] < plain[medium]) & (scaled[medium] > plain[medium] / LLAMA3_ROPE["factor"])).all()
    assert (58 * (plain[medium] - scaled[medium])).max() > 1e-2
