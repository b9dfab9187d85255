"""Two things CoLLiE's examples lean on: an optimizer built on the base model before the Trainer
puts PEFT on it trains the PEFT parameters (CoLLiE attached peft in `from_pretrained`, so its
scripts build the optimizer after), and the generation evaluator makes its data-parallel ranks
stop decoding together (tests/distributed/test_generation_stops_together.py: why, and that they do)."""

from types import SimpleNamespace

import pytest
import torch
from helpers import save_tiny_hf_model
from peft import LoraConfig, PromptTuningConfig

from collie import CollieConfig
from collie.config import ConfigError
from collie.data import CollieDatasetForTraining
from collie.evaluate.generation_evaluator import EvaluatorForGeneration
from collie.generation import GenerationMixin
from collie.models.base import CollieModel
from collie.trainer import Trainer

RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]} for i in range(8)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_hf_model(str(tmp_path_factory.mktemp("peft_optimizer") / "base"))


def _trainer(base, peft_config, make_optimizer):
    config = CollieConfig(train_micro_batch_size=4, logging=[], seed=1, max_steps=2)
    config.peft_config = peft_config
    model = CollieModel.from_pretrained(base, config=config)
    optimizer = make_optimizer(model)
    return Trainer(model, config, optimizer=optimizer, train_dataset=CollieDatasetForTraining(RECORDS)), optimizer


@pytest.mark.parametrize("peft_config", [PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                                         LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])],
                         ids=["prompt", "lora"])
def test_an_optimizer_built_before_peft_trains_the_peft_parameters_with_its_settings(base, peft_config):
    trainer, optimizer = _trainer(base, peft_config, lambda model: torch.optim.Adam(
        filter(lambda p: p.requires_grad, model.parameters()), lr=0.05, betas=(0.8, 0.9)))
    assert trainer.optimizer is optimizer
    held = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert len(held) == len(trainable) > 0 and all(a is b for a, b in zip(held, trainable))
    assert optimizer.param_groups[0]["lr"] == 0.05 and optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    before = [p.detach().clone() for p in trainable]
    trainer.train()
    assert all(not torch.equal(p, b) for p, b in zip(trainable, before))


def test_an_optimizer_with_several_groups_built_before_peft_is_refused(base):
    def two_groups(model):
        params = list(model.parameters())
        return torch.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], lr=0.01)

    with pytest.raises(ConfigError, match="optimizer: built before the Trainer added the PEFT parameters, with 2 "
                                          "parameter groups"):
        _trainer(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), two_groups)


class _Recorder(GenerationMixin, torch.nn.Module):
    def generate(self, input_ids, attention_mask=None, **kwargs):
        self.kwargs = kwargs
        return input_ids


def test_the_generation_evaluator_decodes_in_step_over_its_data_parallel_group(bundled_tokenizer):
    evaluator = EvaluatorForGeneration(_Recorder(), None, [{"text": "a", "target": "b"}], tokenizer=bundled_tokenizer)
    batch = {"input_ids": torch.ones(1, 2, dtype=torch.long), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    evaluator.runtime = SimpleNamespace(dp_group="the dp group", device=torch.device("cpu"))
    evaluator.eval_batch(batch)
    assert evaluator.model.kwargs["stop_group"] == "the dp group"
    evaluator.runtime = SimpleNamespace(dp_group=None, device=torch.device("cpu"))  # one replica: nothing to wait for
    evaluator.eval_batch(batch)
    assert "stop_group" not in evaluator.model.kwargs
