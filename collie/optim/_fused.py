"""Shared machinery of the optimizers that update parameters inside backward (LOMO family).

The point of LOMO/AdaLomo is memory: a parameter is updated as soon as its gradient
is complete and the gradient is freed right away, so the full set of gradients never
exists at once. This module holds everything that is not specific to one update
rule: hook registration, the two-pass global-norm clipping, gradient accumulation,
fp16 dynamic loss scaling and name-keyed checkpointing.
"""

from __future__ import annotations

import collections
import enum
import functools
import logging
import weakref
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from collie import dtypes
from collie.distributed.clip import total_norm
from collie.dtypes import at_least_fp32, row_blocks
from collie.optim._loss_scaler import DynamicLossScaler
from collie.row_gradients import GradientRows, Takers, take_rows
from collie.tensors import local_tensor

logger = logging.getLogger(__name__)


class _Mode(enum.Enum):
    """What the per-parameter hook does while a backward pass runs."""

    ACCUMULATE = "accumulate"  # nothing: plain autograd, gradients stay in ``.grad``
    NORM = "norm"  # record the gradient's norm, free it
    UPDATE = "update"  # update the parameter from its gradient, free it


def update_in_row_blocks(p: torch.Tensor, grad_rows: Callable[[slice], torch.Tensor],
                         update: Callable[[torch.Tensor, torch.Tensor], None], blocks: list | None = None) -> None:
    """Run `update(work, grad_rows(rows))` over blocks of rows of the local storage of `p`
    (`blocks`, else `row_blocks`).

    `work` is at least fp32: the parameter's own rows when it already is (updated in place),
    otherwise an upcast copy of the block written back afterwards. So a bf16 parameter is never
    copied whole into fp32: for a 7B model's embedding that copy alone would be 0.5 GB."""
    local_p = local_tensor(p.detach())
    for rows in row_blocks(local_p) if blocks is None else blocks:
        stored = local_p[rows]
        work = stored.to(at_least_fp32(stored.dtype))
        update(work, grad_rows(rows))
        if work is not stored:
            stored.copy_(work)


class RowGradient:
    """A parameter's gradient that its backward makes on demand, a block of rows at a time
    (`collie.row_gradients`): `rows(index)` is a fresh at-least-fp32 block, so an update rule
    may work in it; it can be asked for more than once. Its `blocks` are a quarter of the usual
    (4 MiB in fp32): each is a transient at the step's peak, beside the recomputed activations."""

    def __init__(self, param: torch.Tensor, rows: GradientRows, blocks: list | None = None) -> None:
        self.shape, self.device = param.shape, param.device
        self.rows = rows
        self.blocks = row_blocks(param, dtypes.UPCAST_BLOCK_ELEMENTS // 4) if blocks is None else blocks

    def whole(self, dtype: torch.dtype) -> torch.Tensor:
        """The whole gradient in `dtype`, made a block at a time (no wide copy of a narrow one)."""
        grad = torch.empty(self.shape, dtype=dtype, device=self.device)
        for index in self.blocks:
            grad[index] = self.rows(index)
        return grad


def blocks_of(grad: torch.Tensor | RowGradient) -> list | None:
    """The blocks of rows an update of `grad` walks: a `RowGradient`'s own (the ones its maker
    was sized for), else None (`update_in_row_blocks` then uses `row_blocks`)."""
    return grad.blocks if isinstance(grad, RowGradient) else None


def rows_of(grad: torch.Tensor | RowGradient) -> Callable[[slice], torch.Tensor]:
    """Blocks of rows of this rank's part of `grad`, dense (see `dense_rows`)."""
    if isinstance(grad, RowGradient):
        return grad.rows
    local_grad = local_tensor(grad)
    return lambda rows: dense_rows(local_grad, rows)


def _sums_sparse(weight: torch.Tensor) -> bool:
    """Whether sparse gradients of `weight` can be accumulated: PyTorch's CPU kernels add
    sparse fp16 tensors not at all."""
    return not (weight.dtype == torch.float16 and weight.device.type == "cpu")


def dense_rows(grad: torch.Tensor, rows) -> torch.Tensor:
    """`grad[rows]`; of a sparse gradient (an embedding's), those rows made dense."""
    if not grad.is_sparse:
        return grad[rows]
    start, stop, _ = rows.indices(grad.shape[0])
    return grad.narrow_copy(0, start, stop - start).to_dense()


class FusedBackwardOptimizer(Optimizer):
    """Base class of :class:`~collie.optim.Lomo` and :class:`~collie.optim.AdaLomo`.

    Subclasses implement :meth:`_update_param` (the update rule) and say when fp16
    loss scaling is wanted. The whole model is one parameter group (only its
    trainable parameters); ``param_groups[0]["lr"]`` is what LR schedulers change.

    Trainer protocol: ``updates_in_backward = True`` makes the Trainer run it through its
    in-backward step strategy (``collie.trainer.step_strategy.StepInBackward``), which calls
    :meth:`backward` once per micro-batch instead of ``loss.backward()`` + :meth:`step`;
    :meth:`step` and :meth:`zero_grad` are harmless no-ops.
    """

    updates_in_backward = True

    def __init__(
        self,
        model: nn.Module,
        defaults: dict[str, Any],
        clip_grad_norm: float | None,
        clip_grad_value: float | None,
    ) -> None:
        if clip_grad_norm is not None and clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm should be positive, got {clip_grad_norm}.")
        self._named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self._named_params:
            raise ValueError("The model has no trainable parameters.")
        super().__init__([p for _, p in self._named_params], defaults)
        self.model = model
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.loss_scaler: DynamicLossScaler | None = None
        self._scaler_decided = False  # decided lazily: the model may be cast after construction
        self._mode = _Mode.ACCUMULATE
        self._grad_norms: list[torch.Tensor] = []
        self._prepass_done = False  # grad_norm() ran for the pending update
        self._clip_coef: torch.Tensor | None = None
        self._skip_step = False  # the pending update overflowed
        self._lr: float = defaults["lr"]
        self._step_count = 0
        self._dp_group: dist.ProcessGroup | None = None
        self._pp_group: dist.ProcessGroup | None = None
        self._update_after_backward = False
        self._sparse_embeddings: list[nn.Embedding] = []
        self._register_hooks()
        self._choose_sparse_embedding_grads()
        self._choose_row_gradients()

    def _register_hooks(self) -> None:
        # Held weakly: autograd's hook registry is not seen by the garbage collector, so a bound
        # method there would keep this optimizer, and through it the model, alive for good.
        method = weakref.WeakMethod(self._on_grad_ready)

        def on_grad_ready(p: torch.Tensor) -> None:
            bound = method()
            if bound is not None:
                bound(p)

        for _, p in self._named_params:
            p.register_post_accumulate_grad_hook(on_grad_ready)

    def configure_parallel(self, model: nn.Module, dp_group: dist.ProcessGroup | None = None,
                           update_after_backward: bool = False, pp_group: dist.ProcessGroup | None = None) -> None:
        """Adapt to how the Trainer parallelized `model` (called by the Trainer).

        Parallelization may have replaced the parameters (tensor parallel and FSDP put
        DTensors in their place), so they are collected again and hooked. With replicated
        data parallel (`dp_group`), each gradient is averaged over the replicas inside its
        hook, before the update. With FSDP (`update_after_backward`), gradients reach the sharded
        parameters by reduce-scatter after backward, where no hook sees them; the update
        then runs right after backward from those local shards, so this mode keeps one
        1/dp-sized set of gradients until the end of backward. Under pipeline parallel
        (`pp_group`) the schedule runs backward itself, so the Trainer calls
        :meth:`step_from_grads` after it; the gradient norm is then summed over all stages.
        """
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if [id(p) for _, p in named] != [id(p) for _, p in self._named_params]:
            if self.state:
                raise ValueError("configure_parallel: the optimizer already has state for the old parameters")
            self._named_params = named
            self.param_groups[0]["params"] = [p for _, p in named]
            self._register_hooks()
        self.model = model
        self._dp_group = dp_group if dp_group is not None and dist.get_world_size(dp_group) > 1 else None
        self._pp_group = pp_group
        self._update_after_backward = update_after_backward
        self._choose_sparse_embedding_grads()
        self._choose_row_gradients()

    def _choose_sparse_embedding_grads(self) -> None:
        """Let embeddings make sparse gradients (only the rows of the batch's tokens) where this
        optimizer sees them whole in its hook: the dense gradient of a 7B model's embedding is
        as large as its weight (0.25 GB in bf16). Not where the gradient goes through a
        collective first (replicated data parallel, FSDP), is a shard (tensor parallel), waits
        for the end of backward (pipeline), is shared with a tied head, or could not be summed
        over micro-batches (fp16 on CPUs has no sparse addition)."""
        for module in self._sparse_embeddings:
            module.sparse = False
        shared = collections.Counter(id(p) for _, p in self.model.named_parameters(remove_duplicate=False))
        eligible = self._dp_group is None and not self._update_after_backward
        self._sparse_embeddings = [
            m for m in self.model.modules()
            if eligible and isinstance(m, nn.Embedding) and not m.sparse and m.weight.requires_grad
            and not isinstance(m.weight, DTensor) and shared[id(m.weight)] == 1 and _sums_sparse(m.weight)]
        for module in self._sparse_embeddings:
            module.sparse = True

    def _choose_row_gradients(self) -> None:
        """Take by rows the gradients of the matrices whose backward can offer them that way (the
        LM head's loss): where this optimizer sees a gradient whole in its hook, i.e. on the
        conditions of the sparse embedding gradients (a tied head is read twice, so its rows
        would not be its whole gradient). Registered on every such matrix; used where offered."""
        shared = collections.Counter(id(p) for _, p in self.model.named_parameters(remove_duplicate=False))
        eligible = self._dp_group is None and not self._update_after_backward
        for _, p in self._named_params:
            takes = eligible and p.dim() == 2 and not isinstance(p, DTensor) and shared[id(p)] == 1
            take_rows(p, self._takers_for if takes else None, by_blocks=self._update_blocks_alone(p))

    # ------------------------------------------------------------------ public API

    def backward(self, loss: torch.Tensor, last_microbatch: bool = True) -> None:
        """Backward for one micro-batch, updating the parameters on the last one.

        Non-final micro-batches (``last_microbatch=False``) only accumulate into
        ``.grad``, so gradient accumulation keeps one full set of gradients for the
        window (the memory LOMO otherwise saves). On the final micro-batch, if
        gradients were accumulated, a plain backward completes them and the update
        is applied from ``.grad`` (clipping uses the global norm of the accumulated
        gradient); otherwise the update is fused into backward
        (:meth:`fused_backward`, with a preceding :meth:`grad_norm` pass when
        clipping or loss scaling needs one). The learning rate is read from
        ``param_groups[0]["lr"]`` so LR schedulers drive it.
        """
        self._decide_loss_scaler()
        if not last_microbatch:
            self._run_backward(loss, _Mode.ACCUMULATE)
        elif self._update_after_backward or any(p.grad is not None for _, p in self._named_params):
            self._run_backward(loss, _Mode.ACCUMULATE)
            self._apply_accumulated_grads(self.param_groups[0]["lr"])
        else:
            self.fused_backward(loss, self.param_groups[0]["lr"])

    def step_from_grads(self) -> None:
        """Update from the gradients backward left in ``.grad`` (pipeline schedules run
        backward themselves), then free them."""
        self._decide_loss_scaler()
        self._apply_accumulated_grads(self.param_groups[0]["lr"])

    def grad_norm(self, loss: torch.Tensor) -> None:
        """First pass of global-norm clipping: backward that only measures the gradients.

        A parameter cannot be clipped by the global norm before all gradients are
        known, but keeping them all would defeat LOMO; so, like the reference, the
        cost is a second backward pass: this pass records each gradient's norm and
        frees it, then :meth:`fused_backward` reruns backward (the graph is retained
        here) and applies the update scaled by the clipping coefficient. With fp16
        loss scaling this pass also detects overflow, so the whole step can be
        skipped before any parameter changes.
        """
        self._decide_loss_scaler()
        self._grad_norms = []
        self._run_backward(loss, _Mode.NORM, retain_graph=True)
        self._finish_norm_pass()

    def fused_backward(self, loss: torch.Tensor, lr: float) -> None:
        """Backward that updates every parameter as soon as its gradient is complete.

        Runs :meth:`grad_norm` first if clipping or loss scaling needs it and the
        caller has not, and skips the update if that pass found an overflow.
        """
        self._decide_loss_scaler()
        if self._needs_prepass() and not self._prepass_done:
            self.grad_norm(loss)
        if not self._skip_step:
            self._lr = lr
            self._step_count += 1
            self._run_backward(loss, _Mode.UPDATE)
        self._finish_step()

    def step(self, closure: Any = None) -> None:
        """No-op: parameters are updated inside :meth:`backward`; kept so generic loops work."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """No-op: the optimizer frees gradients itself, and clearing them between
        micro-batches would destroy gradient accumulation."""

    def state_dict(self) -> dict[str, Any]:
        """Resumable state, keyed by parameter name so it loads into a fresh model copy."""
        names = {p: n for n, p in self._named_params}
        return {
            "state": {names[p]: dict(s) for p, s in self.state.items() if s},
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
            "step_count": self._step_count,
            "loss_scaler": None if self.loss_scaler is None else self.loss_scaler.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; state tensors keep their dtype."""
        params = dict(self._named_params)
        unknown = set(state_dict["state"]) - set(params)
        if unknown:
            raise ValueError(f"Optimizer state for unknown parameters: {sorted(unknown)}")
        self.state.clear()
        for name, saved in state_dict["state"].items():
            p = params[name]
            self.state[p] = {
                k: v.detach().to(device=p.device, copy=True) if isinstance(v, torch.Tensor) else v
                for k, v in saved.items()
            }
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update(saved)
        self._step_count = state_dict["step_count"]
        if state_dict["loss_scaler"] is not None:
            self.loss_scaler = self._new_loss_scaler()
            self.loss_scaler.load_state_dict(state_dict["loss_scaler"])
            self._scaler_decided = True

    def state_template(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-parameter state to load a checkpoint into: the current state, or fresh
        (zero) state where a parameter has none yet."""
        return {name: dict(self.state[p]) if self.state.get(p) else self._init_state(p)
                for name, p in self._named_params}

    # --------------------------------------------------------- subclass interface

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fresh per-parameter state (none for plain LOMO)."""
        return {}

    def _update_param(self, p: torch.Tensor, grad: torch.Tensor | RowGradient, lr: float) -> None:
        """Apply the update rule to ``p`` given its gradient, reduced over replicas but still
        scaled and unclipped: the rule passes it, whole or a block at a time, through
        :meth:`_prepared`. A :class:`RowGradient` is only ever read by blocks of rows."""
        raise NotImplementedError

    def _wants_loss_scaler(self) -> bool:
        """Whether dynamic loss scaling is used (decided at the first backward)."""
        raise NotImplementedError

    def _new_loss_scaler(self) -> DynamicLossScaler:
        raise NotImplementedError

    def _has_fp16_params(self) -> bool:
        return any(p.dtype == torch.float16 for _, p in self._named_params)

    # ------------------------------------------------------------------ internals

    def _reduce_grad(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Gradient as the update should see it: laid out like its parameter (tensor parallel
        can hand back e.g. a partial-sum gradient for a sharded embedding) and averaged over
        data-parallel replicas."""
        if isinstance(grad, DTensor) and grad.placements != p.placements:
            grad = grad.redistribute(p.device_mesh, p.placements)
        if self._dp_group is not None:
            # SUM then divide: gloo has no AVG.
            local = local_tensor(grad)
            dist.all_reduce(local, group=self._dp_group)
            local.div_(dist.get_world_size(self._dp_group))
        return grad

    def _grad_norm_of(self, grad: torch.Tensor) -> torch.Tensor:
        """The whole gradient's L2 norm, also when only a shard of it lives here."""
        norm = torch.linalg.vector_norm(grad.coalesce().values() if grad.is_sparse else grad)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def _global_grad_norm(self, norms: list[torch.Tensor]) -> torch.Tensor:
        """L2 norm of all gradients from the per-parameter norms (a global reduction)."""
        return total_norm(norms, self._pp_group, device=local_tensor(self._named_params[0][1]).device)

    def _takers_for(self, p: torch.Tensor) -> Takers | None:
        """How this backward takes `p`'s gradient, if it does: by rows in the passes that measure
        or apply it at once, unless an accumulated gradient waits in ``.grad``; also a block at a
        time as it is made where each block is used on its own (the norm pass; rules that
        :meth:`_update_blocks_alone`)."""
        if self._mode is _Mode.ACCUMULATE or p.grad is not None:
            return None
        by_blocks = self._mode is _Mode.NORM or self._update_blocks_alone(p)
        return Takers(functools.partial(self._on_grad_rows, p),
                      functools.partial(self._on_grad_block, p) if by_blocks else None)

    def _on_grad_rows(self, p: torch.Tensor, rows: GradientRows, blocks: list | None = None) -> None:
        """`p`'s whole gradient, offered a block of rows at a time inside backward: measured, or
        applied as :meth:`_on_grad_ready` does with a whole one — by rows where the rule
        :meth:`_updates_by_rows`, else from the whole gradient made here (then only one exists
        at a time, even where one autograd node offers several)."""
        grad = RowGradient(p, rows, blocks)
        with torch.no_grad():
            if self._mode is _Mode.NORM:
                squares = sum(torch.linalg.vector_norm(self._unscaled_grad(rows(index))).square()
                              for index in grad.blocks)
                self._grad_norms.append(squares.sqrt())
            elif self._updates_by_rows(p):
                self._update_param(p, grad, self._lr)
            else:
                self._update_param(p, grad.whole(p.dtype), self._lr)

    def _on_grad_block(self, p: torch.Tensor, index: tuple, block: torch.Tensor) -> None:
        """One block `p[index]` of `p`'s gradient, handed over as backward makes it: measured (its
        share of the global norm) or applied, on its own."""
        self._on_grad_rows(p, lambda _: block, [index])

    def _update_blocks_alone(self, p: torch.Tensor) -> bool:
        """Whether the rule's update of a block of `p` depends on that block of the gradient only
        (elementwise rules): then it takes blocks as backward makes them."""
        return False

    def _updates_by_rows(self, p: torch.Tensor) -> bool:
        """Whether the rule updates `p` from its gradient's rows, never whole (LOMO's SGD reads each
        block once, so it always does)."""
        return True

    def _on_grad_ready(self, p: torch.Tensor) -> None:
        """Post-accumulate-grad hook: ``p.grad`` is complete for this backward pass (None where
        backward handed it over by rows instead)."""
        if self._mode is _Mode.ACCUMULATE or p.grad is None:
            return
        with torch.no_grad():
            grad = self._reduce_grad(p, p.grad)
            if grad.is_sparse:
                grad = grad.coalesce()  # duplicate token rows summed
            p.grad = None
            if self._mode is _Mode.NORM:
                self._grad_norms.append(self._grad_norm_of(self._unscaled_grad(grad)))
            else:
                self._update_param(p, grad, self._lr)

    def _apply_accumulated_grads(self, lr: float) -> None:
        """Update from gradients accumulated in ``.grad`` (end of an accumulation window)."""
        params = [p for _, p in self._named_params if p.grad is not None]
        with torch.no_grad():
            for p in params:
                p.grad = self._reduce_grad(p, p.grad)
            if self._needs_prepass():
                self._grad_norms = [self._grad_norm_of(self._unscaled_grad(p.grad)) for p in params]
                self._finish_norm_pass()
            if not self._skip_step:
                self._step_count += 1
                for p in params:
                    grad, p.grad = p.grad, None
                    self._update_param(p, grad.coalesce() if grad.is_sparse else grad, lr)
        self._finish_step()

    def _needs_prepass(self) -> bool:
        return self.clip_grad_norm is not None or self.loss_scaler is not None

    def _decide_loss_scaler(self) -> None:
        if not self._scaler_decided:
            self._scaler_decided = True
            if self._wants_loss_scaler():
                self.loss_scaler = self._new_loss_scaler()

    def _run_backward(self, loss: torch.Tensor, mode: _Mode, retain_graph: bool = False) -> None:
        if self.loss_scaler is not None:
            loss = loss * self.loss_scaler.loss_scale
        self._mode = mode
        try:
            loss.backward(retain_graph=retain_graph)
        finally:
            self._mode = _Mode.ACCUMULATE

    def _unscaled_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """At-least-fp32 gradient with the loss scale removed; aliases ``grad`` when nothing changes."""
        grad = grad.to(at_least_fp32(grad.dtype))
        if self.loss_scaler is not None:
            grad = grad / self.loss_scaler.loss_scale
        return grad

    def _prepared(self, grad: torch.Tensor) -> torch.Tensor:
        """The at-least-fp32 gradient the update rule uses: loss scale removed, clipped. Made in
        ``grad``'s own buffer when it already is at least fp32, so call it once per element.
        A sparse gradient must be coalesced; it stays sparse."""
        if grad.is_sparse:
            return torch.sparse_coo_tensor(grad.indices(), self._prepared(grad.values()), grad.shape,
                                           is_coalesced=True, check_invariants=False)
        return self._clip(self._unscaled_grad(grad))

    def _clip(self, grad: torch.Tensor) -> torch.Tensor:
        """Clip by value, then scale by the global-norm coefficient (in place)."""
        if self.clip_grad_value is not None and self.clip_grad_value > 0:
            grad.clamp_(min=-self.clip_grad_value, max=self.clip_grad_value)
        if self._clip_coef is not None:
            # DTensors take a Python number, not a plain 0-d tensor.
            grad.mul_(float(self._clip_coef) if isinstance(grad, DTensor) else self._clip_coef)
        return grad

    def _finish_norm_pass(self) -> None:
        """Turn recorded norms into a clipping coefficient, or flag an overflow."""
        total = self._global_grad_norm(self._grad_norms)
        self._grad_norms = []
        self._prepass_done = True
        if self.loss_scaler is not None and not torch.isfinite(total):
            self.loss_scaler.update_scale(overflow=True)
            self._skip_step = True
            for _, p in self._named_params:
                p.grad = None
        elif self.clip_grad_norm is not None:
            self._clip_coef = torch.clamp(self.clip_grad_norm / (total + 1e-6), max=1.0)

    def _finish_step(self) -> None:
        if self.loss_scaler is not None and not self._skip_step:
            self.loss_scaler.update_scale(overflow=False)
        self._prepass_done = False
        self._skip_step = False
        self._clip_coef = None
