"""Logits only where the loss reads them: a forward given labels and `skip_logits` (the
Trainer's own step) runs the head on the positions that predict a label, with the loss and
gradients of whole logits (float64)."""

import copy

import pytest
import torch
from helpers import Losses, save_tiny_hf_model, tiny_llama_config

from collie import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.models import LlamaForCausalLM
from collie.models.base import CollieModel
from collie.models.loss import GPTLMLoss, count_loss_tokens
from collie.trainer import Trainer


def _head_rows(model) -> list[int]:
    """Records how many positions each call of the model's head computes logits for."""
    rows: list[int] = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].reshape(-1, 64).shape[0]))
    return rows


@pytest.mark.parametrize("chunk", [0, 7])
def test_skip_logits_gives_the_loss_and_gradients_of_whole_logits(chunk):
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
    rows = _head_rows(skipping)
    whole = plain(ids, labels=labels)
    out = skipping(ids, labels=labels, skip_logits=True)
    assert out.logits is None and whole.logits.shape == (3, 40, 256)
    assert abs(whole.loss.item() - out.loss.item()) <= 1e-12
    whole.loss.backward()
    out.loss.backward()
    for (name, a), b in zip(plain.named_parameters(), skipping.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-12, name
    if not chunk:  # a chunked plain head computes its logits itself, outside the module
        assert rows == [count_loss_tokens(labels)]


def test_the_trainers_step_makes_logits_only_for_labelled_positions(tmp_path):
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
        rows = _head_rows(model)
        Trainer(model, config, train_dataset=CollieDatasetForTraining(records), callbacks=[losses],
                loss_fn=loss_fn).train()
        return losses.values, rows

    (ours, our_rows), (theirs, their_rows) = train(None), train(UsersLoss())
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-9
    assert sum(our_rows) == sum(len(r["tokens"]) - 4 for r in records)  # 4 steps of 2 x 2 records: all of them
    assert sum(their_rows) >= sum(len(r["tokens"]) for r in records)
