"""Causal language-modelling loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from collie import dtypes
from collie.dtypes import at_least_fp32
from collie.models.layers import (
    Linear,
    hand_over_weight_grad,
    linear_weight_grad,
    upcast_linear,
    upcast_linear_input_grad,
)
from collie.row_gradients import block_taker, takes_blocks

IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of token t+1 given tokens ≤ t; labels are aligned with input_ids."""
    flat = logits.reshape(-1, logits.shape[-1])
    flat = flat.to(at_least_fp32(flat.dtype))
    # The labels are shifted, not the logits (the last position has nothing to predict and is
    # ignored): slicing the logits would copy all [tokens × vocab] of them.
    shifted = F.pad(labels[..., 1:], (0, 1), value=ignore_index).reshape(-1).to(flat.device)
    return F.cross_entropy(flat, shifted, ignore_index=ignore_index, reduction=reduction)


def lm_head_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk_tokens: int = 0,
                 ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """`causal_lm_loss(head(hidden), labels, reduction=reduction)` ("mean" or "sum") with logits
    made only where they are used: at the positions that predict a label (instruction data
    masks its prompts, often half the tokens, and the head is the widest matmul of a small
    model), and with `chunk_tokens` > 0 that many positions at a time — each chunk's logits are
    summed into the loss and dropped, and backward makes them again one chunk at a time.

    A head held whole goes through `_LinearCrossEntropy` (the logits turned into their gradient
    in place; chunks accumulate the weight's gradient in place), or, where an optimizer takes its
    gradient a block at a time as it is made (LOMO), `_VocabularyBlockedCrossEntropy` (no logits
    kept); a sharded one (tensor parallel,
    FSDP) is called as a module, checkpointed per chunk — under loss_parallel its chunks'
    logits are vocabulary shards. Under sequence parallel, `hidden` holds a slice of the
    sequence, which the head gathers: every position is kept."""
    if isinstance(hidden, DTensor) or hidden.shape[:2] != labels.shape[:2]:
        if not chunk_tokens:
            return causal_lm_loss(head(hidden), labels, ignore_index, reduction)
    if chunk_tokens and not _plain_head(head, hidden):
        # Every position: each chunk is a call of the head, and under FSDP every rank must make
        # as many calls (each gathers the weight) whatever its labels.
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        y = labels[..., 1:].reshape(-1).to(h.device)
        total = _checkpointed_chunks(h, head, y, chunk_tokens, ignore_index)
    else:
        h, y = _labelled_positions(hidden, labels, ignore_index)
        plain = _plain_head(head, hidden)
        if plain and not chunk_tokens and takes_blocks(head.weight):
            total = _VocabularyBlockedCrossEntropy.apply(h, head.weight, head.bias, y)
        elif plain:
            total = _LinearCrossEntropy.apply(h, head.weight, head.bias, y, chunk_tokens)
        else:
            logits = head(h)
            total = F.cross_entropy(logits.to(at_least_fp32(logits.dtype)), y, ignore_index=ignore_index,
                                    reduction="sum")
    return total if reduction == "sum" else total / (y != ignore_index).sum()


def _labelled_positions(hidden: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states [n, hidden] of the positions whose next token is a label, and those labels."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    shifted = F.pad(labels[..., 1:], (0, 1), value=ignore_index).reshape(-1).to(flat.device)
    kept = (shifted != ignore_index).nonzero().squeeze(-1)
    return flat.index_select(0, kept), shifted.index_select(0, kept)


def _checkpointed_chunks(h: torch.Tensor, head: nn.Module, y: torch.Tensor, chunk_tokens: int,
                         ignore_index: int) -> torch.Tensor:
    """Σ cross entropy of a head called as a module, one checkpointed chunk of rows at a time."""
    from torch.utils.checkpoint import checkpoint

    def chunk_sum(h_chunk: torch.Tensor, y_chunk: torch.Tensor) -> torch.Tensor:
        logits = head(h_chunk)
        return F.cross_entropy(logits.to(at_least_fp32(logits.dtype)), y_chunk, ignore_index=ignore_index,
                               reduction="sum")

    total = None
    for start in range(0, h.shape[0], chunk_tokens):
        part = checkpoint(chunk_sum, h[start:start + chunk_tokens], y[start:start + chunk_tokens],
                          use_reentrant=False, preserve_rng_state=False)
        total = part if total is None else total + part
    return total


def _plain_head(head: nn.Module, hidden: torch.Tensor) -> bool:
    """A head whose weight this process holds whole (no tensor parallel, no FSDP shard, no
    adapters), outside autocast: its gradient can be accumulated in place, chunk by chunk."""
    return (type(head) in (Linear, nn.Linear) and not isinstance(head.weight, DTensor)
            and not isinstance(hidden, DTensor) and not torch.is_autocast_enabled(hidden.device.type))


class _LinearCrossEntropy(torch.autograd.Function):
    """Σ cross_entropy(h W^T + b, y) over rows that all have a label, with its own backward, in
    at least fp32 (a half-precision weight is widened a block of rows at a time).

    `chunk` = 0: the logits are made once and turned in place into their gradient (softmax minus
    one-hot) during forward, which backward then uses: one [rows × vocab] buffer and its passes,
    where log_softmax and nll_loss make and fill three. Where an optimizer takes the weight's
    gradient by rows or blocks (`collie.row_gradients`: AdaLomo, LOMO), each block is made from
    that buffer, and the whole gradient never exists. `chunk` > 0: chunks of rows, each chunk's
    logits made again in backward and its weight gradient accumulated into one buffer — so
    neither whole logits nor one weight-sized gradient per chunk ever exists."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, chunk):
        ctx.chunk = chunk
        acc = at_least_fp32(h.dtype)
        if not chunk:
            grad = upcast_linear(h, weight, bias, by_blocks=True).to(acc)
            total = _into_gradient_(grad, y)
            ctx.save_for_backward(h, weight, bias, grad)
            ctx.param = weight  # to find who takes its gradient by rows (see `linear_weight_grad`)
            return total
        ctx.save_for_backward(h, weight, bias, y)
        total = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], chunk):
            logits = upcast_linear(h[start:start + chunk], weight, bias, by_blocks=True).to(total.dtype)
            total += F.cross_entropy(logits, y[start:start + chunk], reduction="sum")
        return total

    @staticmethod
    def backward(ctx, grad_total):
        h, weight, bias, saved = ctx.saved_tensors
        acc = at_least_fp32(h.dtype)
        # The incoming gradient scales the narrow products, not the [rows × vocab] one: forward's
        # is kept as it is (a retained graph may run backward again).
        scale = grad_total.to(acc)
        needs = ctx.needs_input_grad
        if not ctx.chunk:
            # The input's gradient first: a taker of the weight's rows may update it in place.
            grad_h = upcast_linear_input_grad(saved.to(h.dtype), weight) * scale.to(h.dtype) if needs[0] else None
            grad_b = (saved.sum(0) * scale).to(bias.dtype) if bias is not None and needs[2] else None
            grad_w = linear_weight_grad(weight, saved, h.to(acc) * scale, ctx.param) if needs[1] else None
            return grad_h, grad_w, grad_b, None, None
        grad_h = torch.empty_like(h) if needs[0] else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if needs[1] else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if bias is not None and needs[2] \
            else None
        chunk = ctx.chunk
        for start in range(0, h.shape[0], chunk):
            h_c = h[start:start + chunk]
            grad = upcast_linear(h_c, weight, bias, by_blocks=True).to(acc)
            _into_gradient_(grad, saved[start:start + chunk])
            if grad_h is not None:
                grad_h[start:start + chunk] = upcast_linear_input_grad(grad.to(h.dtype), weight) * scale.to(h.dtype)
            if grad_w is not None:
                grad_w.addmm_(grad.t(), h_c.to(acc) * scale)
            if grad_b is not None:
                grad_b += grad.sum(0) * scale
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None)


class _VocabularyBlockedCrossEntropy(torch.autograd.Function):
    """Σ cross_entropy(h W^T + b, y) over rows that all have a label, for a head whose gradient an
    optimizer takes a block at a time as it is made (`collie.row_gradients.takes_blocks`: LOMO).
    Forward goes over blocks of vocabulary rows, keeping a running log-sum-exp and the labels'
    logits; backward makes each block's logits again, turns them into their gradient, adds their
    share of the input's gradient and hands the weight's rows over. No [rows × vocab] tensor and
    no weight-sized gradient exists: one head matmul more than `_LinearCrossEntropy`, and 250 MB
    less at a 32k vocabulary (seq 512, hidden 2048). The products run in the activations' dtype,
    the softmax and the sums in at least fp32, as in `_LinearCrossEntropy`; no host sync."""

    @staticmethod
    def forward(ctx, h, weight, bias, y):
        acc = at_least_fp32(h.dtype)
        top = torch.full((h.shape[0],), -torch.inf, dtype=acc, device=h.device)
        sums = torch.zeros_like(top)
        picked = torch.zeros_like(top)
        for rows in _vocabulary_blocks(h.shape[0], weight):
            logits = upcast_linear(h, weight[rows], None if bias is None else bias[rows]).to(acc)
            index, inside = _labels_in(y, rows)
            picked += (logits.gather(1, index) * inside).squeeze(1)
            new_top = torch.maximum(top, logits.amax(-1))
            sums.mul_((top - new_top).exp_()).add_(logits.sub_(new_top.unsqueeze(-1)).exp_().sum(-1))
            top = new_top
        normalisers = sums.log_().add_(top)
        ctx.save_for_backward(h, weight, bias, y, normalisers)
        ctx.param = weight  # to find who takes its gradient (see `collie.row_gradients`)
        return (normalisers - picked).sum()

    @staticmethod
    def backward(ctx, grad_total):
        h, weight, bias, y, normalisers = ctx.saved_tensors
        acc = at_least_fp32(h.dtype)
        scale = grad_total.to(acc)
        needs = ctx.needs_input_grad
        take = block_taker(ctx.param) if needs[1] else None
        grad_h = torch.zeros(h.shape, dtype=acc, device=h.device) if needs[0] else None
        grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if needs[1] and not take else None
        grad_b = torch.empty_like(bias) if bias is not None and needs[2] else None
        scaled_h = h.to(acc) * scale
        for rows in _vocabulary_blocks(h.shape[0], weight):
            grad = upcast_linear(h, weight[rows], None if bias is None else bias[rows]).to(acc)
            grad.sub_(normalisers.unsqueeze(-1)).exp_()
            index, inside = _labels_in(y, rows)
            grad.scatter_add_(1, index, -inside.to(acc))  # softmax minus one-hot
            # The input's gradient first: a taker of the weight's rows may update them in place.
            if grad_h is not None:
                grad_h += upcast_linear_input_grad(grad.to(h.dtype), weight[rows])
            if grad_b is not None:
                grad_b[rows] = (grad.sum(0) * scale).to(bias.dtype)
            if take is not None:
                hand_over_weight_grad(take, grad, scaled_h, rows.start)
            elif grad_w is not None:
                grad_w[rows] = grad.t() @ scaled_h
        if grad_h is not None:
            grad_h = grad_h.mul_(scale).to(h.dtype)
        return grad_h, grad_w, grad_b, None


def _vocabulary_blocks(tokens: int, weight: torch.Tensor) -> list[slice]:
    """Blocks of vocabulary rows whose logits [tokens × block] are about `UPCAST_BLOCK_ELEMENTS / 4`
    elements (4 MiB in fp32) and whose weight rows at most `UPCAST_BLOCK_ELEMENTS`, at most
    `dtypes.MAX_WORK_BLOCKS` of them."""
    elements = dtypes.UPCAST_BLOCK_ELEMENTS
    return dtypes.work_blocks(weight.shape[0], min(elements // 4 // max(1, tokens), elements // weight.shape[1]))


def _labels_in(y: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """For the vocabulary block `rows`: each position's label as a column of the block ([n, 1],
    clamped into it) and whether the label is in the block (0/1, [n, 1]) — masks, not indices, so
    no host sync."""
    inside = (y >= rows.start) & (y < rows.stop)
    index = (y - rows.start).clamp_(0, rows.stop - rows.start - 1).unsqueeze(1)
    return index, inside.unsqueeze(1)


def _into_gradient_(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Turn `logits` [rows, vocab] in place into d(Σ cross entropy)/d(logits) = softmax - one-hot;
    returns Σ cross entropy."""
    rows = torch.arange(y.shape[0], device=y.device)
    logits.sub_(logits.amax(-1, keepdim=True))
    picked = logits[rows, y]
    logits.exp_()
    sums = logits.sum(-1)
    total = (sums.log() - picked).sum()
    logits.div_(sums.unsqueeze(-1))
    logits[rows, y] -= 1.0
    return total


def count_loss_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many positions `causal_lm_loss` averages over."""
    return int((labels[..., 1:] != ignore_index).sum())


class GPTLMLoss(nn.Module):
    """CoLLiE's loss object: mean next-token cross entropy over non-ignored labels."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return causal_lm_loss(logits, labels, self.ignore_index)
