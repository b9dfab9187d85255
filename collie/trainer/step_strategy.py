"""How a step's gradients become an update: the one interface the Trainer and the checkpointer
use, with two implementations — the optimizer steps after backward (AdamW, SGD, …), or the
update happens inside backward (LOMO, AdaLomo). Neither caller asks which one runs."""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from collie.config import OptimizerConfig
from collie.distributed.clip import clip_grad_norm, clip_grad_value
from collie.distributed.steps import refresh_hessian


class StepStrategy:
    updates_in_backward = False

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def backward(self, loss: torch.Tensor, is_last: bool) -> None:
        """Backward of one micro-batch's loss contribution."""
        raise NotImplementedError

    def update(self, step: int, micro_batches: list[dict]) -> None:
        """Complete the update of optimizer step `step` (1-based) once every micro-batch ran."""
        raise NotImplementedError

    def applied_in_backward(self) -> bool:
        """Whether the parameters were already updated when backward returned (a NaN loss can
        then no longer be skipped)."""
        return False

    def drop_gradients(self) -> None:
        """Forget this step's gradients (a skipped step); not `zero_grad`, which in-backward
        optimizers make a no-op."""
        for p in self.model.parameters():
            p.grad = None

    # -- checkpoints -------------------------------------------------------------
    def tensor_state(self, loading: bool = False) -> dict:
        """The optimizer's tensors, keyed for DCP (`loading`: the template to load into)."""
        raise NotImplementedError

    def load_tensor_state(self, state: dict, extra: dict) -> None:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """What the checkpoint keeps besides tensors (JSON)."""
        return {}

    @property
    def partial_load(self) -> bool:
        """Whether a checkpoint may lack state this optimizer has (state made on first update)."""
        return False


class StepAfterBackward(StepStrategy):
    """backward → clip → step → zero_grad (any `torch.optim.Optimizer`)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: OptimizerConfig,
                 pp_group=None) -> None:
        super().__init__(model, optimizer)
        self.settings, self.pp_group = settings, pp_group

    def backward(self, loss: torch.Tensor, is_last: bool) -> None:
        loss.backward()

    def update(self, step: int, micro_batches: list[dict]) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.settings.clip_grad_value:
            clip_grad_value(params, self.settings.clip_grad_value)
        if self.settings.clip_grad_norm:
            clip_grad_norm(params, self.settings.clip_grad_norm, self.pp_group)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        interval = getattr(self.optimizer, "hessian_update_interval", 0)
        if interval and step % interval == 0:
            refresh_hessian(self.model, self.optimizer, micro_batches[0])

    def tensor_state(self, loading: bool = False) -> dict:
        return {"optim": get_optimizer_state_dict(self.model, self.optimizer)}

    def load_tensor_state(self, state: dict, extra: dict) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"])


class StepInBackward(StepStrategy):
    """LOMO/AdaLomo: each parameter is updated as its gradient completes (or, when FSDP or a
    pipeline schedule owns the gradients, right after backward)."""

    updates_in_backward = True

    def __init__(self, optimizer, parallel) -> None:
        super().__init__(parallel.module, optimizer)
        self.pipelined = parallel.pipeline is not None
        # The optimizer hooks the parameters the layout put in place and learns who owns the
        # gradients: itself (averaging replicas), FSDP or the pipeline schedule.
        optimizer.configure_parallel(parallel.module, dp_group=parallel.replica_group,
                                     update_after_backward=parallel.update_after_backward,
                                     pp_group=parallel.runtime.pp_group)

    def backward(self, loss: torch.Tensor, is_last: bool) -> None:
        self.optimizer.backward(loss, last_microbatch=is_last)

    def update(self, step: int, micro_batches: list[dict]) -> None:
        if self.pipelined:
            self.optimizer.step_from_grads()  # the schedule ran backward itself
        # Parameters are updated; this no-op step keeps LR schedulers' step-order bookkeeping right.
        self.optimizer.step()

    def applied_in_backward(self) -> bool:
        return not self.pipelined

    def tensor_state(self, loading: bool = False) -> dict:
        # Name-keyed tensors through DCP (any layout loads them); the rest is `extra_state`.
        return {"optim_in_backward": self.optimizer.state_template() if loading
                else self.optimizer.state_dict()["state"]}

    def load_tensor_state(self, state: dict, extra: dict) -> None:
        self.optimizer.load_state_dict({"state": state["optim_in_backward"], **extra})

    def extra_state(self) -> dict:
        return {k: v for k, v in self.optimizer.state_dict().items() if k != "state"}

    @property
    def partial_load(self) -> bool:
        # Parameters saved before their first update have no state in the checkpoint: they keep
        # the fresh state they were given.
        return True


def updates_in_backward(optimizer) -> bool:
    """Whether an optimizer (or optimizer class) updates parameters inside backward (LOMO,
    AdaLomo: `updates_in_backward = True`). Asked once, while a run is assembled: such optimizers
    average data-parallel gradients themselves, so the layout must know before it is applied."""
    return bool(getattr(optimizer, "updates_in_backward", False))


def step_strategy(optimizer, settings: OptimizerConfig, parallel) -> StepStrategy:
    """The strategy of `optimizer` on the parallelized model (`ParallelModel`)."""
    if updates_in_backward(optimizer):
        return StepInBackward(optimizer, parallel)
    return StepAfterBackward(parallel.module, optimizer, settings, parallel.runtime.pp_group)
