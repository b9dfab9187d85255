"""Padding never changes a result: left- and right-padded batches train to the same losses and
evaluate to the same perplexity, and a batch of prompts of different lengths generates what
each prompt generates alone (float64, so equality is exact up to reduction order)."""

import torch
from helpers import tiny_llama_config

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining
from collie.evaluate import EvaluatorForPerplexity, PPLMetric
from collie.trainer import Callback, Trainer

# Lengths 5..11 in every batch of 4: plenty of padding, on whichever side.
RECORDS = [{"tokens": [(11 * i + 5 * j) % 240 + 1 for j in range(5 + (3 * i) % 7)]} for i in range(16)]


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def _train(padding_side: str) -> tuple[list[float], float]:
    config = CollieConfig(model_config=tiny_llama_config(), train_micro_batch_size=2, gradient_accumulation_steps=2,
                          max_steps=4, logging=[], seed=3, param_dtype="float64")
    config.data.padding_side = padding_side
    config.optimizer.lr = 1e-2
    model = LlamaForCausalLM.from_config(config, seed=0, dtype=torch.float64)
    dataset = CollieDatasetForTraining(RECORDS)
    losses = Losses()
    evaluator = EvaluatorForPerplexity(model, config, dataset[:7], {"ppl": PPLMetric()})
    config.eval_batch_size = 4
    trainer = Trainer(model, config, train_dataset=dataset, callbacks=[losses], evaluators=[evaluator])
    trainer.train()
    assert evaluator.collate_fn.padding_side == padding_side
    return losses.values, trainer.evaluate()["ppl"]


def test_left_and_right_padding_train_and_evaluate_alike():
    right_losses, right_ppl = _train("right")
    left_losses, left_ppl = _train("left")
    assert len(left_losses) == len(right_losses) == 4
    assert max(abs(a - b) for a, b in zip(left_losses, right_losses)) <= 1e-9, (left_losses, right_losses)
    assert abs(left_ppl - right_ppl) <= 1e-9 * right_ppl


def test_batched_generation_equals_one_prompt_at_a_time():
    model = LlamaForCausalLM.from_config(tiny_llama_config(), seed=0, dtype=torch.float64).eval()
    prompts = [[5, 17, 42, 9, 77, 3, 120], [8, 1], [200, 31, 64, 12]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=10)[:, width:]
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=10)[0, len(prompt):]
        assert batched[row].tolist() == alone.tolist(), row
