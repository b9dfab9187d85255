"""What `parallelize` returns: this rank's share of the model and how the layout runs it."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

import torch
from torch.distributed.tensor.parallel import loss_parallel

from collie.data.collate import ColliePadder
from collie.distributed.pipeline import PipelinedModel, PipelineRunner, save_pipelined
from collie.distributed.steps import PipelineObjective, StepResult, run_micro_batches, run_pipeline_step
from collie.forward_context import forward_context
from collie.tensors import full_tensor


class ParallelModel:
    """The parallelized model (`module`: a whole model or this rank's pipeline stages, with
    DTensor/FSDP parameters) and what the Trainer does with it: a training step (plain, or
    through the pipeline schedule), the model evaluation and generation call (`eval_model`:
    a stage-to-stage forward under pipeline parallel), the padding the layout needs, and HF
    export. The Trainer never asks which layout it is."""

    def __init__(self, module: torch.nn.Module, spec, config, runtime) -> None:
        self.module, self.spec, self.config, self.runtime = module, spec, config, runtime
        self.layout = runtime.layout
        self.pipeline: Optional[PipelineRunner] = None
        self.eval_model: torch.nn.Module = module
        if self.layout.pipelined:
            self.pipeline = PipelineRunner(module, spec, runtime, config.gradient_accumulation_steps,
                                           forward_context=self.forward_context)
            self.eval_model = PipelinedModel(module, spec, runtime)

    def forward_context(self) -> ContextManager:
        return forward_context(self.config, self.runtime.device)

    # -- what the layout asks of the rest -------------------------------------
    def padder(self, pad_token_id: int, padding_side: str, max_length: int) -> ColliePadder:
        # Pipeline stages exchange fixed-shape activations: every batch is padded to max_length there.
        return ColliePadder(pad_token_id, padding_side, max_length=max_length,
                            pad_to=max_length if self.pipeline is not None else None,
                            multiple_of=self.layout.sequence_multiple)

    @property
    def update_after_backward(self) -> bool:
        """Whether an optimizer that updates inside backward must wait for backward to end: FSDP
        hands gradients to the sharded parameters by reduce-scatter (no per-parameter hook sees
        them), and a pipeline schedule runs backward itself."""
        return self.layout.uses_fsdp or self.pipeline is not None

    @property
    def replica_group(self):
        """The group an in-backward optimizer averages gradients over itself (replicated data
        parallel without FSDP), or None."""
        return None if self.layout.uses_fsdp else self.runtime.dp_group

    def loss_context(self) -> ContextManager:
        """loss_parallel: the loss and its backward run on vocabulary-sharded logits."""
        return loss_parallel() if self.layout.uses_loss_parallel else contextlib.nullcontext()

    # -- running it ------------------------------------------------------------
    def train_step(self, micro_batches: list[dict], loss_of: Callable[[dict], torch.Tensor],
                   backward: Callable[[torch.Tensor, bool], None], ignore_index: int,
                   pipeline_loss: Optional[Callable] = None, objective: Optional[PipelineObjective] = None) -> StepResult:
        """Forward and backward over the step's micro-batches (the pipeline schedule runs its own
        backward, with `pipeline_loss(logits, labels)` on the last stage, None for collie's
        next-token loss); the loss is the mean over the global batch's trainable tokens (or over
        `objective`'s units, a preference step's pairs)."""
        rt = self.runtime
        if self.pipeline is not None:
            return run_pipeline_step(self.pipeline, micro_batches, rt.dp_sum, rt.pp_sum, rt.dp_size, ignore_index,
                                     pipeline_loss, objective)
        with self.loss_context():
            return run_micro_batches(self.module, micro_batches, loss_of, backward, rt.dp_sum, rt.dp_size,
                                     ignore_index, objective)

    def load_hf(self, path: str) -> None:
        """Weights in HF format (what `export` writes) into this rank's share of the model."""
        self.module.load_hf_weights(path, partial=self.pipeline is not None)

    def export(self, path: str, tokenizer=None) -> None:
        """The model (and tokenizer) in HF format, from any layout; every rank calls it."""
        if self.pipeline is not None:
            save_pipelined(self.module, self.spec, path, self.runtime, tokenizer)
        elif self.spec.supports_model_parallel:
            self.module.save_pretrained(path, tokenizer=tokenizer)
        else:
            _save_transformers_model(self.module, path, self.runtime, tokenizer)
        self.runtime.barrier()


def _save_transformers_model(module: torch.nn.Module, path: str, runtime, tokenizer) -> None:
    """transformers' own class (collie.models.auto): its whole state gathered (every rank takes
    part), written by rank 0 with transformers' save_pretrained."""
    state = {name: full_tensor(tensor) for name, tensor in module.state_dict().items()}
    if runtime.env.rank == 0:
        module.save_pretrained(path, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
