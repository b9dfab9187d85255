"""Logits only where the loss reads them: a forward given labels and `skip_logits` (the
Trainer's own step, perplexity evaluation) runs the head on the positions that predict a
label, with the loss and gradients of whole logits (float64)."""

import copy
import math

import pytest
import torch
from helpers import Losses, save_tiny_hf_model, tiny_llama_config

from collie import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.evaluate import EvaluatorForPerplexity, PPLMetric
from collie.models import LlamaForCausalLM
from collie.models import loss as loss_module
from collie.models.base import CollieModel
from collie.models.loss import GPTLMLoss, causal_lm_loss, count_loss_tokens
from collie.trainer import Trainer


def _head_rows(model, monkeypatch) -> list[int]:
    """Records how many positions the model's head computes logits for at each forward: called
    as a module, or by the loss itself with the head's weight."""
    rows: list[int] = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].reshape(-1, 64).shape[0]))
    made_by_loss = loss_module.upcast_linear

    def upcast_linear(x, weight, bias, **kwargs):
        if torch.is_grad_enabled() is False and weight is model.lm_head.weight:  # the loss's own forward
            rows.append(x.shape[0])
        return made_by_loss(x, weight, bias, **kwargs)

    monkeypatch.setattr(loss_module, "upcast_linear", upcast_linear)
    return rows


@pytest.mark.parametrize("chunk", [0, 7])
def test_skip_logits_gives_the_loss_and_gradients_of_whole_logits(chunk, monkeypatch):
    torch.manual_seed(0)
    plain = LlamaForCausalLM(tiny_llama_config()).double()
    skipping = copy.deepcopy(plain)
    skipping.loss_chunk_tokens = chunk
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (3, 40), generator=g)
    labels = ids.clone()
    labels[0, :12] = -100  # prompts without loss, and padding at the end
    labels[1, :30] = -100
    labels[2, 33:] = -100
    rows = _head_rows(skipping, monkeypatch)
    whole = plain(ids, labels=labels)
    out = skipping(ids, labels=labels, skip_logits=True)
    assert out.logits is None and whole.logits.shape == (3, 40, 256)
    assert abs(whole.loss.item() - out.loss.item()) <= 1e-12
    whole.loss.backward()
    out.loss.backward()
    for (name, a), b in zip(plain.named_parameters(), skipping.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-12, name
    labelled = count_loss_tokens(labels)
    chunks = [min(7, labelled - start) for start in range(0, labelled, 7)]
    assert rows == ([labelled] if not chunk else 2 * chunks)  # a chunked loss makes them again in backward


def test_the_trainers_step_makes_logits_only_for_labelled_positions(tmp_path, monkeypatch):
    model_dir = save_tiny_hf_model(str(tmp_path / "tiny"))
    # The first 4 tokens of each record are a prompt without loss.
    records = [{"tokens": [(5 * i + 3 * j) % 250 + 1 for j in range(6 + i % 7)]} for i in range(16)]
    for record in records:
        record["labels"] = [-100] * 4 + record["tokens"][4:]

    class UsersLoss(GPTLMLoss):  # not collie's own loss object: the step makes whole logits for it
        pass

    def train(loss_fn):
        config = CollieConfig.load(None, ["max_steps=4", "logging=[]", "param_dtype=float64", "optimizer.lr=0.01",
                                          "train_micro_batch_size=2", "gradient_accumulation_steps=2"])
        losses = Losses()
        model = CollieModel.from_pretrained(model_dir, config=config)
        rows = _head_rows(model, monkeypatch)
        Trainer(model, config, train_dataset=CollieDatasetForTraining(records), callbacks=[losses],
                loss_fn=loss_fn).train()
        return losses.values, rows

    (ours, our_rows), (theirs, their_rows) = train(None), train(UsersLoss())
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-9
    assert sum(our_rows) == sum(len(r["tokens"]) - 4 for r in records)  # 4 steps of 2 x 2 records: all of them
    assert sum(their_rows) >= sum(len(r["tokens"]) for r in records)


def test_a_retained_loss_backward_twice_adds_the_same_gradient_and_a_frozen_head_gets_none():
    # LOMO's clipping runs backward twice on a retained graph; LoRA freezes the head.
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).double()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    model(ids, labels=ids, skip_logits=True).loss.backward()
    once = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = model(ids, labels=ids, skip_logits=True).loss
    loss.backward(retain_graph=True)
    loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 2 * once[name], atol=1e-12), name
    model.zero_grad(set_to_none=True)
    model.lm_head.weight.requires_grad_(False)
    model(ids, labels=ids, skip_logits=True).loss.backward()
    assert model.lm_head.weight.grad is None
    assert torch.allclose(model.norm.weight.grad, once["norm.weight"], atol=1e-12)


def test_perplexity_evaluation_makes_logits_only_for_labelled_positions(monkeypatch):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).double()
    records = [{"tokens": [(5 * i + 3 * j) % 250 + 1 for j in range(6 + i % 7)]} for i in range(9)]
    for record in records:
        record["labels"] = [-100] * 3 + record["tokens"][3:]
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for record in records:  # whole logits, one record at a time
            ids, labels = torch.tensor([record["tokens"]]), torch.tensor([record["labels"]])
            nll += causal_lm_loss(model(ids).logits, labels, reduction="sum").item()
            tokens += count_loss_tokens(labels)
    rows = _head_rows(model, monkeypatch)
    config = CollieConfig.load(None, ["eval_batch_size=4"])
    got = EvaluatorForPerplexity(model, config, CollieDatasetForTraining(records), {"ppl": PPLMetric()}).evaluate()
    assert abs(got["ppl"] - math.exp(nll / tokens)) <= 1e-9 * got["ppl"]
    assert sum(rows) == tokens
