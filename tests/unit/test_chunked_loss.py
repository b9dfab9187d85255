"""`loss_chunk_tokens`: the loss from the final hidden states a chunk at a time, so the
[tokens × vocab] logits never exist whole — with the plain loss and gradients (float64)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import Losses, save_tiny_hf_model, tiny_llama_config

from collie import CollieConfig, dtypes
from collie.config import ConfigError, Layout, ModelFacts
from collie.data import CollieDatasetForTraining
from collie.distributed.steps import model_computes_loss
from collie.models import LlamaForCausalLM, layers
from collie.models.base import CollieModel
from collie.models.llama.spec import LLAMA
from collie.models.loss import causal_lm_loss, lm_head_loss
from collie.trainer import Trainer


def _ids_and_labels():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (3, 60), generator=g)
    labels = ids.clone()
    labels[0, :6] = -100  # a prompt without loss
    labels[2, 45:] = -100
    return ids, labels


def _largest_saved(model, ids, labels) -> int:
    largest = [0]

    def pack(tensor):
        largest[0] = max(largest[0], tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=labels).loss.backward()
    return largest[0]


def test_chunked_loss_equals_the_plain_loss_and_never_saves_whole_logits():
    torch.manual_seed(0)
    plain = LlamaForCausalLM(tiny_llama_config()).double()
    chunked = copy.deepcopy(plain)
    chunked.loss_chunk_tokens = 7  # 177 positions: chunks of 7, the last one shorter
    ids, labels = _ids_and_labels()
    loss, other = plain(ids, labels=labels).loss, chunked(ids, labels=labels).loss
    assert chunked(ids, labels=labels).logits is None
    assert abs(loss.item() - other.item()) <= 1e-12
    loss.backward()
    other.backward()
    for (name, a), b in zip(plain.named_parameters(), chunked.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-12, name
    whole_logits = 3 * 59 * 256
    fresh_plain, fresh_chunked = copy.deepcopy(plain), copy.deepcopy(chunked)
    assert _largest_saved(fresh_plain, ids, labels) >= whole_logits
    assert _largest_saved(fresh_chunked, ids, labels) < whole_logits


def test_training_with_chunks_has_the_plain_losses(tmp_path):
    model_dir = save_tiny_hf_model(str(tmp_path / "tiny"))
    records = [{"tokens": [(5 * i + 3 * j) % 250 + 1 for j in range(6 + i % 7)]} for i in range(16)]

    def train(*overrides):
        config = CollieConfig.load(None, ["max_steps=4", "logging=[]", "param_dtype=float64", "optimizer.lr=0.01",
                                          "train_micro_batch_size=2", "gradient_accumulation_steps=2", *overrides])
        losses = Losses()
        trainer = Trainer(CollieModel.from_pretrained(model_dir, config=config), config,
                          train_dataset=CollieDatasetForTraining(records), callbacks=[losses])
        trainer.train()
        assert model_computes_loss(trainer.model, trainer.loss_fn)
        return losses.values

    plain, chunked = train(), train("loss_chunk_tokens=5")
    assert max(abs(a - b) for a, b in zip(plain, chunked, strict=True)) <= 1e-9


def test_sequence_parallel_without_chunked_loss_yet_is_one_line():
    config = CollieConfig.load(None, ["tp_size=2", "sequence_parallel=true", "loss_chunk_tokens=64"])
    with pytest.raises(ConfigError, match="loss_chunk_tokens: not available with sequence_parallel yet"):
        Layout.build(config, model=ModelFacts(LLAMA.dims(tiny_llama_config())))


def test_perplexity_evaluation_with_chunks_makes_no_whole_logits():
    from collie.evaluate import EvaluatorForPerplexity, PPLMetric

    torch.manual_seed(0)
    plain = LlamaForCausalLM(tiny_llama_config()).double()
    chunked = copy.deepcopy(plain)
    chunked.loss_chunk_tokens = 7
    records = [{"tokens": [(5 * i + 3 * j) % 250 + 1 for j in range(6 + i % 7)]} for i in range(9)]
    config = CollieConfig.load(None, ["eval_batch_size=4"])
    outputs = []
    chunked.register_forward_hook(lambda module, args, output: outputs.append(output))

    def ppl(model):
        dataset = CollieDatasetForTraining(records)
        return EvaluatorForPerplexity(model, config, dataset, {"ppl": PPLMetric()}).evaluate()["ppl"]

    want, got = ppl(plain), ppl(chunked)
    assert abs(got - want) <= 1e-9 * want
    assert len(outputs) == 3 and all(out.logits is None for out in outputs)


@pytest.mark.parametrize("chunk", [7, 0])
def test_chunked_loss_widens_a_bf16_head_a_block_at_a_time(monkeypatch, chunk):
    """bf16 storage computing in fp32: the loss of the labelled positions, chunked or not, gives
    the plain loss and gradients, and never holds more than a block of rows of the head in fp32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from collie import dtypes

    class LargestUpcast(TorchDispatchMode):
        """The largest fp32 copy made of (part of) the head's weight."""

        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and out.dtype == torch.float32 and \
                    args[0].untyped_storage().data_ptr() == head_storage:
                self.elements = max(self.elements, out.numel())
            return out

    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 64 * 16)
    plain = LlamaForCausalLM.from_config(tiny_llama_config(), seed=0, dtype=torch.bfloat16)
    plain.compute_dtype = torch.float32
    chunked = copy.deepcopy(plain)
    chunked.loss_chunk_tokens = chunk
    head_storage = chunked.lm_head.weight.untyped_storage().data_ptr()
    ids, labels = _ids_and_labels()
    largest = LargestUpcast()
    with largest:
        loss = chunked(ids, labels=labels, skip_logits=True).loss
        loss.backward()
    assert largest.elements == 64 * 16
    want = plain(ids, labels=labels).loss
    want.backward()
    assert abs(loss.item() - want.item()) <= 1e-5
    torch.testing.assert_close(chunked.lm_head.weight.grad, plain.lm_head.weight.grad, atol=1e-6, rtol=1e-2)


def test_plain_loss_makes_no_copy_of_the_logits():
    """The plain loss shifts the labels, not the logits: the only logits-sized tensors made are
    cross entropy's own log-probabilities (and their gradient in backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from collie.models.loss import causal_lm_loss

    class LogitsSized(TorchDispatchMode):
        def __init__(self, elements):
            super().__init__()
            self.elements, self.ops = elements, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() >= self.elements:
                self.ops.append(func.__name__)
            return out

    ids, labels = _ids_and_labels()
    logits = torch.randn(3, 60, 256, dtype=torch.float64, requires_grad=True)
    made = LogitsSized(3 * 59 * 256)
    with made:
        loss = causal_lm_loss(logits, labels)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1))
    assert abs(loss.item() - want.item()) <= 1e-12
    assert [op for op in made.ops if not op.startswith(("view", "_unsafe_view", "detach"))] == ["_log_softmax.default"]


def test_the_head_loss_makes_logits_a_block_of_vocabulary_rows_at_a_time(monkeypatch):
    """One product of a vocabulary-sized weight makes MKL keep a packing buffer its size for the
    rest of the process: the loss's forward multiplies by blocks of the head's rows."""
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 16 * 8)
    widths = []
    linear = F.linear
    monkeypatch.setattr(layers.F, "linear", lambda x, w, b=None: widths.append(w.shape[0]) or linear(x, w, b))
    hidden = torch.randn(1, 6, 8, dtype=torch.float64)
    head = torch.nn.Linear(8, 40, bias=False).double()
    labels = torch.randint(0, 40, (1, 6))
    loss = lm_head_loss(hidden, head, labels)
    assert widths == [16, 16, 8]
    torch.testing.assert_close(loss, causal_lm_loss(head(hidden), labels), atol=1e-12, rtol=0)
