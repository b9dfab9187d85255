"""ChatGLM-6B (v1) against an independent plain-tensor implementation of its published
architecture (no native transformers class exists): LayerNorm, GELU, residuals on the scaled
normalised input (alpha = sqrt(2·layers)), per-head fused q/k/v, 2-D rotary positions, and a
prefix-LM mask over the prompt. The checkpoint is written in ChatGLM-6B's own names and
config.json; logits (float64), greedy generation, left-padded batches and the save are compared."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_saves_back
from safetensors.torch import save_file

from collie.models.base import CollieModel
from collie.models.chatglm.model import ChatGLMForCausalLM

VOCAB, HIDDEN, HEADS, LAYERS, INNER = 128, 64, 4, 2, 160
MASK, GMASK, BOS, EOS, PAD = 120, 121, 122, 123, 3
CONFIG = {"architectures": ["ChatGLMModel"], "model_type": "chatglm", "vocab_size": VOCAB, "hidden_size": HIDDEN,
          "num_layers": LAYERS, "num_attention_heads": HEADS, "inner_hidden_size": INNER, "layernorm_epsilon": 1e-5,
          "max_sequence_length": 256, "position_encoding_2d": True, "bos_token_id": BOS, "eos_token_id": EOS,
          "mask_token_id": MASK, "gmask_token_id": GMASK, "pad_token_id": PAD, "use_cache": True,
          "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                       "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"}}


def _checkpoint() -> dict:
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=0.1, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).contiguous()

    state = {"transformer.word_embeddings.weight": rand(VOCAB, HIDDEN, scale=1.0),
             "transformer.final_layernorm.weight": rand(HIDDEN, shift=1.0),
             "transformer.final_layernorm.bias": rand(HIDDEN), "lm_head.weight": rand(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"transformer.layers.{i}."
        state.update({p + "input_layernorm.weight": rand(HIDDEN, shift=1.0), p + "input_layernorm.bias": rand(HIDDEN),
                      p + "attention.query_key_value.weight": rand(3 * HIDDEN, HIDDEN, scale=0.3),
                      p + "attention.query_key_value.bias": rand(3 * HIDDEN),
                      p + "attention.dense.weight": rand(HIDDEN, HIDDEN), p + "attention.dense.bias": rand(HIDDEN),
                      p + "post_attention_layernorm.weight": rand(HIDDEN, shift=1.0),
                      p + "post_attention_layernorm.bias": rand(HIDDEN),
                      p + "mlp.dense_h_to_4h.weight": rand(INNER, HIDDEN, scale=0.5),
                      p + "mlp.dense_h_to_4h.bias": rand(INNER), p + "mlp.dense_4h_to_h.weight": rand(HIDDEN, INNER),
                      p + "mlp.dense_4h_to_h.bias": rand(HIDDEN)})
    return state


def reference_logits(state: dict, ids: list[int]) -> torch.Tensor:
    """ChatGLM-6B's forward for one unpadded sequence, written from the published architecture."""
    seq, d = len(ids), HIDDEN // HEADS
    context = ids.index(BOS)
    mask_position = ids.index(GMASK if GMASK in ids else MASK)
    position = torch.tensor(list(range(context)) + [mask_position] * (seq - context), dtype=torch.float64)
    block = torch.tensor([0] * context + list(range(1, seq - context + 1)), dtype=torch.float64)
    i, j = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    allowed = (j <= i) | (j < context)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d // 2, 2, dtype=torch.float64) / (d // 2)))

    def rotary(x, pos):  # x: [seq, heads, d/2], rotate-half within it
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
        x1, x2 = x[..., :d // 4], x[..., d // 4:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def norm(x, name):
        return F.layer_norm(x, (HIDDEN,), state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    alpha = math.sqrt(2 * LAYERS)
    h = state["transformer.word_embeddings.weight"][ids]
    for layer in range(LAYERS):
        p = f"transformer.layers.{layer}."
        x = norm(h, p + "input_layernorm")
        qkv = (x @ state[p + "attention.query_key_value.weight"].T + state[p + "attention.query_key_value.bias"])
        q, k, v = qkv.view(seq, HEADS, 3 * d).split(d, dim=-1)
        q = torch.cat([rotary(q[..., :d // 2], position), rotary(q[..., d // 2:], block)], dim=-1)
        k = torch.cat([rotary(k[..., :d // 2], position), rotary(k[..., d // 2:], block)], dim=-1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        probs = scores.masked_fill(~allowed, -10000.0).softmax(-1)
        context_layer = torch.einsum("hqk,khd->qhd", probs, v).reshape(seq, HIDDEN)
        h = x * alpha + context_layer @ state[p + "attention.dense.weight"].T + state[p + "attention.dense.bias"]
        x = norm(h, p + "post_attention_layernorm")
        hidden = F.gelu(x @ state[p + "mlp.dense_h_to_4h.weight"].T + state[p + "mlp.dense_h_to_4h.bias"],
                        approximate="tanh")
        h = x * alpha + hidden @ state[p + "mlp.dense_4h_to_h.weight"].T + state[p + "mlp.dense_4h_to_h.bias"]
    return norm(h, "transformer.final_layernorm") @ state["lm_head.weight"].T


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    path = tmp_path_factory.mktemp("chatglm6b")
    state = _checkpoint()
    with_buffers = dict(state)
    for i in range(LAYERS):  # ChatGLM-6B's code saves its rotary table as a buffer
        with_buffers[f"transformer.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(HIDDEN // HEADS // 4)
    save_file(with_buffers, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(CONFIG))
    return path, state


# Float64 weights; the rotary tables are computed in float32 (as transformers does for every
# family), which alone leaves ~1e-7 here.
TOLERANCE = 1e-6
PROMPTS = [[5, 9, 17, 30, GMASK, BOS, 33, 41, 7], [11, 12, MASK, 13, 14, BOS, 50], [60, GMASK, 61, 62, BOS, 63, 64, 65]]


def test_logits_generation_and_save_match_the_published_architecture(published, tmp_path):
    path, state = published
    ours = CollieModel.from_pretrained(str(path), dtype=torch.float64).eval()
    assert isinstance(ours, ChatGLMForCausalLM)
    with torch.no_grad():
        for ids in PROMPTS:
            diff = (ours(torch.tensor([ids])).logits[0] - reference_logits(state, ids)).abs().max()
            assert diff <= TOLERANCE, (ids, diff)
        # A left-padded batch equals each sequence alone (positions and the prompt counted over real tokens).
        width = max(map(len, PROMPTS))
        batch = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
        logits = ours(batch, attention_mask=mask).logits
        for row, ids in enumerate(PROMPTS):
            assert (logits[row, width - len(ids):] - reference_logits(state, ids)).abs().max() <= TOLERANCE
    # Greedy generation with the KV cache: the reference recomputes the whole sequence each step.
    for ids in PROMPTS:
        expected = list(ids)
        for _ in range(6):
            expected.append(int(reference_logits(state, expected)[-1].argmax()))
        assert ours.generate(torch.tensor([ids]), max_new_tokens=6).tolist() == [expected]
    written = assert_saves_back(ours, tmp_path / "saved", state)
    assert written["model_type"] == "chatglm" and written["position_encoding_2d"] is True
    assert written["gmask_token_id"] == GMASK and written["auto_map"] == CONFIG["auto_map"]


def test_a_sequence_without_its_answer_start_is_one_line(published):
    ours = CollieModel.from_pretrained(str(published[0])).eval()
    with pytest.raises(ValueError, match=r"every sequence needs the bos token <sop> \(id 122\)"):
        ours(torch.tensor([[5, 9, GMASK, 17]]))
    with pytest.raises(ValueError, match=r"every sequence needs a \[gMASK\] \(id 121\) or \[MASK\] \(id 120\) token"):
        ours(torch.tensor([[5, 9, BOS, 17]]))


def test_chatglm2_configs_still_load_as_chatglm2(tmp_path):
    from collie.models import ChatGLM2ForCausalLM
    from collie.models.chatglm2.config import ChatGLMConfig

    config = ChatGLMConfig(num_layers=1, padded_vocab_size=64, hidden_size=32, ffn_hidden_size=64, kv_channels=8,
                           num_attention_heads=4, multi_query_group_num=2)
    CollieModel.from_config(config, seed=0).save_pretrained(str(tmp_path))
    assert type(CollieModel.from_pretrained(str(tmp_path))) is ChatGLM2ForCausalLM
