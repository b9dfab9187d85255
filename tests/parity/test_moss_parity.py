"""MOSS (moss-moon-003) checkpoints, as published (CodeGen's names, fused `qkv_proj` in 4 groups of
q | v | k, MOSS's config.json, a cached causal mask buffer per layer), against transformers'
CodeGen holding the same weights: logits, greedy generation, and a save that writes the
checkpoint back tensor for tensor."""

import json

import torch
from helpers import assert_matches_reference, assert_saves_back
from safetensors.torch import save_file
from transformers import CodeGenConfig, CodeGenForCausalLM

from collie.models.base import CollieModel
from collie.models.moss.config import MossConfig
from collie.models.moss.model import MossForCausalLM

FIELDS = dict(vocab_size=256, n_positions=64, n_ctx=64, n_embd=64, n_layer=2, n_head=8, rotary_dim=4, n_inner=160,
              activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=False)


def test_moss_matches_codegen_and_saves_back(tmp_path):
    torch.manual_seed(0)
    reference = CodeGenForCausalLM(CodeGenConfig(**FIELDS)).eval()
    with torch.no_grad():  # biases and norms away from their init, so a dropped one would show
        for block in reference.transformer.h:  # pre-activations of order 1: GELU's tanh form matters
            block.mlp.fc_in.weight.mul_(30.0)
        for name, param in reference.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.normal_(0, 0.1).add_(1.0 if name.endswith("ln_1.weight") or "ln_f.weight" in name else 0.0)
    weights = {name: t.contiguous() for name, t in reference.state_dict().items()}
    published = dict(weights)
    for i in range(FIELDS["n_layer"]):  # MOSS's code keeps its causal mask as a persistent buffer
        published[f"transformer.h.{i}.attn.causal_mask"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
    (tmp_path / "moss").mkdir()
    save_file(published, tmp_path / "moss" / "model.safetensors", metadata={"format": "pt"})
    config = dict(MossConfig(**FIELDS).to_dict(), architectures=["MossForCausalLM"],
                  auto_map={"AutoConfig": "configuration_moss.MossConfig",
                            "AutoModelForCausalLM": "modeling_moss.MossForCausalLM"})
    (tmp_path / "moss" / "config.json").write_text(json.dumps(config))

    ours = CollieModel.from_pretrained(str(tmp_path / "moss")).eval()
    assert isinstance(ours, MossForCausalLM)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    assert_matches_reference(ours, reference, ids)
    written = assert_saves_back(ours, tmp_path / "saved", weights)
    assert written["model_type"] == "moss" and written["architectures"] == ["MossForCausalLM"]
    assert written["auto_map"] == config["auto_map"] and written["rotary_dim"] == 4

    # Left-padded batched generation equals one prompt at a time (positions count real tokens).
    prompts = [ids[0, :5].tolist(), ids[1, :9].tolist()]
    batch = torch.tensor([[0] * 4 + prompts[0], prompts[1]])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    together = ours.generate(batch, attention_mask=mask, max_new_tokens=6)[:, 9:]
    for row, prompt in enumerate(prompts):
        alone = ours.generate(torch.tensor([prompt]), max_new_tokens=6)[0, len(prompt):]
        assert together[row].tolist() == alone.tolist()
