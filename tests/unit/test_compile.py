"""`compile: true` compiles each decoder block in place (regional compilation): the same losses
and generations as eager, the same parameter names (checkpoints and exports do not change)."""

import torch
from helpers import Losses, tiny_llama_config

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining
from collie.models.llama.spec import LLAMA
from collie.trainer import Trainer

RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(12)]} for i in range(8)]


def _train(*overrides):
    # float64 and SGD: eager and compiled kernels may round differently, and Adam would amplify that.
    config = CollieConfig.load(None, ["max_steps=3", "train_micro_batch_size=2", "logging=[]", "optimizer.name=sgd",
                                      "optimizer.lr=0.1", "param_dtype=float64", "checkpointing=full", *overrides])
    config.model_config = tiny_llama_config()
    model = LlamaForCausalLM.from_config(config, seed=0)
    losses = Losses()
    trainer = Trainer(model, config, train_dataset=CollieDatasetForTraining(RECORDS), callbacks=[losses])
    trainer.train()
    return trainer, losses.values


def test_compiled_blocks_train_like_eager_ones():
    torch._dynamo.reset()
    eager, eager_losses = _train()
    compiled, compiled_losses = _train("compile=true")
    blocks = LLAMA.blocks(compiled.model).values()
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert all(block._compiled_call_impl is None for block in LLAMA.blocks(eager.model).values())
    assert max(abs(a - b) for a, b in zip(eager_losses, compiled_losses, strict=True)) <= 1e-9
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    # Generation through compiled blocks (KV cache, one token at a time) gives the eager tokens.
    ids = torch.tensor([[5, 6, 7, 8]])
    want = eager.model.generate(ids, max_new_tokens=6)
    assert compiled.model.generate(ids, max_new_tokens=6).tolist() == want.tolist()


def test_compile_reaches_the_blocks_of_a_model_without_a_family():
    """A model type collie runs as transformers' own class keeps its blocks in a ModuleList."""
    import copy

    from transformers import Phi3Config, Phi3ForCausalLM

    from collie.distributed.parallelize import compile_blocks
    from collie.models.registry import spec_for

    config = Phi3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    torch.manual_seed(0)
    eager = Phi3ForCausalLM(config).eval()
    compiled = copy.deepcopy(eager)
    spec = spec_for(config)
    compile_blocks(spec, compiled)
    assert all(block._compiled_call_impl is not None for _, block in spec.block_items(compiled))
    ids = torch.tensor([[3, 9, 27, 81]])
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).logits, eager(ids).logits, atol=1e-5, rtol=1e-5)
