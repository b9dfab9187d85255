"""Packing: samples sharing a row compute exactly what they compute alone (float64, 1e-9) —
loss and gradients — while the padding disappears."""

import pytest
import torch
from helpers import tiny_llama_config

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining, ColliePadder
from collie.data.packing import PackedDataset
from collie.models.common.packed_attention import PackedDocuments
from collie.models.loss import causal_lm_loss

RECORDS = [{"tokens": [1 + (5 * i + 7 * j) % 250 for j in range(3 + (i * 5) % 9)]} for i in range(10)]


def _model(**overrides):
    config = CollieConfig(model_config=tiny_llama_config(**overrides), param_dtype="float64")
    return LlamaForCausalLM.from_config(config, seed=3)


def _loss_and_grads(model, batch):
    model.zero_grad()
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = causal_lm_loss(logits, batch["labels"])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("window", [None, 4])
def test_packed_rows_equal_the_unpacked_batch(window):
    """Without a window attention runs per document; a window shorter than a document keeps the
    block-diagonal mask. Either way: what the documents compute alone."""
    dataset = CollieDatasetForTraining(RECORDS)
    packed = PackedDataset(dataset, max_length=16)
    assert len(packed) < len(dataset)
    assert [t for row in packed for t in row["input_ids"]] == [t for item in dataset for t in item["input_ids"]]
    for side in ("right", "left"):
        model = _model(sliding_window=window)
        padder = ColliePadder(0, side)
        plain = padder([dataset[i] for i in range(len(dataset))])
        together = padder([packed[i] for i in range(len(packed))])
        assert together["input_ids"].numel() < plain["input_ids"].numel()  # less padding
        loss, grads = _loss_and_grads(model, plain)
        packed_loss, packed_grads = _loss_and_grads(model, together)
        assert abs(loss - packed_loss) <= 1e-9, side
        assert all((grads[n] - packed_grads[n]).abs().max() <= 1e-9 for n in grads), side


def test_positions_restart_and_documents_do_not_see_each_other():
    from collie.models.common.attention import attention_bias_mask, default_position_ids

    mask = torch.tensor([[1, 1, 1, 2, 2, 0], [0, 1, 2, 2, 3, 3]])
    positions = default_position_ids(2, 6, 0, mask, torch.device("cpu"))
    assert positions[0, :5].tolist() == [0, 1, 2, 0, 1] and positions[1, 1:].tolist() == [0, 0, 1, 0, 1]
    allowed = attention_bias_mask(mask, 6, 0, torch.device("cpu"))[0, 0]
    assert allowed[4].tolist() == [False, False, False, True, True, False]  # doc 2 sees only doc 2
    assert allowed[2].tolist() == [True, True, True, False, False, False]


def test_documents_are_found_once_per_forward():
    mask = torch.tensor([[1] * 10 + [2] * 2 + [3] * 2 + [0] * 2, [1] * 3 + [2] * 9 + [0] * 4])
    documents = PackedDocuments(mask)
    assert documents.runs == [(10, True), (2, True), (2, True), (2, False), (3, True), (9, True), (4, False)]
    assert documents.fits_window(None) and documents.fits_window(10) and not documents.fits_window(9)
    q = torch.randn(2, 3, 16, 4, dtype=torch.float64)
    out = documents.attend(q, q, q)
    assert out[0, :, 14:].abs().max() == 0 and out[1, :, 12:].abs().max() == 0  # padding gets zeros


def test_documents_attend_as_the_block_diagonal_mask():
    """Every document's output and gradients are what the block-diagonal mask gives; padding
    tokens get zeros."""
    from collie.models.common.attention import attention_bias_mask

    mask = torch.tensor([[1] * 7 + [2] * 2 + [3] * 5 + [0] * 2, [1] * 3 + [2] * 12 + [0], [1] * 16])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 16, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    out = PackedDocuments(mask).attend(q, k, v)
    reference = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attention_bias_mask(mask, 16, 0, torch.device("cpu")))
    real = (mask > 0)[:, None, :, None]
    assert (out * ~real).abs().max() == 0
    torch.testing.assert_close(out * real, reference * real, atol=1e-12, rtol=0)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=g) * real
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
