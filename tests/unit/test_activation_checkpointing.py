"""`checkpointing: none | full | selective` (and `checkpointing_every`): the same loss and gradients
(float64, exactly), and what each recomputes in backward — full recomputes every matmul of the
checkpointed blocks, selective none of them (it keeps their outputs and recomputes only the
cheap ops between them)."""

import copy

import pytest
import torch
from helpers import tiny_llama_config
from torch.utils._python_dispatch import TorchDispatchMode

from collie import CollieConfig
from collie.config import ConfigError
from collie.distributed.parallelize import apply_activation_checkpointing
from collie.models import LlamaForCausalLM
from collie.models.llama.spec import LLAMA

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in MATMULS
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4)).double()


def _step(base, mode: str, every: int = 1):
    model = copy.deepcopy(base)
    if mode != "none":
        apply_activation_checkpointing(LLAMA, model, selective=mode == "selective", every=every)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    loss = model(ids, labels=ids).loss
    with CountMatmuls() as backward:
        loss.backward()
    return loss.item(), [p.grad for p in model.parameters()], backward.count


def test_every_mode_gives_the_same_loss_and_gradients(base):
    loss, grads, _ = _step(base, "none")
    for mode, every in (("full", 1), ("selective", 1), ("full", 2), ("selective", 3)):
        other_loss, other_grads, _ = _step(base, mode, every)
        assert other_loss == loss and all(torch.equal(a, b) for a, b in zip(other_grads, grads)), (mode, every)


def test_selective_recomputes_no_matmul_and_full_recomputes_them_all(base):
    plain = _step(base, "none")[2]
    assert _step(base, "selective")[2] == plain
    # (How many of a block's 7 projections full recomputes depends on PyTorch stopping the
    # recomputation once backward has what it needs; each block recomputes the same number.)
    every_block, every_other = _step(base, "full")[2] - plain, _step(base, "full", every=2)[2] - plain
    assert every_block >= 4 * 5 and every_block == 2 * every_other  # 4 blocks; blocks 0 and 2


def test_config_values(tmp_path):
    assert CollieConfig.load(None, ["checkpointing=true"]).checkpointing is True
    for value in ("true", "false", "full", "selective", "none"):
        CollieConfig.load(None, [f"checkpointing={value}"]).validate()
    with pytest.raises(ConfigError, match="checkpointing: 'some' is not one of none, full, selective"):
        CollieConfig.load(None, ["checkpointing=some"]).validate()
    with pytest.raises(ConfigError, match="checkpointing_every: must be >= 1, got 0"):
        CollieConfig.load(None, ["checkpointing_every=0"]).validate()
