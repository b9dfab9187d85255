"""Pipeline parallel with `torch.distributed.pipelining`.

The model is cut into contiguous stages of decoder layers (the first stage keeps the
embedding, the last the final norm and LM head); each stage then gets the same tensor
parallel / checkpointing / FSDP treatment as a whole model. Training runs a schedule
(GPipe or 1F1B) over the step's micro-batches; evaluation and generation run a plain
stage-to-stage forward (`PipelinedModel`) so evaluators and `generate` work unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from collie.config import ConfigError
from collie.models.base import CausalLMOutput, CollieModel
from collie.models.loss import causal_lm_loss

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def stage_layer_ranges(model: nn.Module, pp_size: int, method: str) -> list[range]:
    """Contiguous layer ranges, one per stage: equal layer counts (`uniform`) or balanced
    parameter counts (`parameters`, the embedding counted on the first stage and the head on
    the last)."""
    num_layers = len(model.layers)
    if method == "uniform":
        bounds = [round(i * num_layers / pp_size) for i in range(pp_size + 1)]
        return [range(bounds[i], bounds[i + 1]) for i in range(pp_size)]
    layer_sizes = [sum(p.numel() for p in layer.parameters()) for layer in model.layers.values()]
    head = sum(p.numel() for m in (model.norm, model.lm_head) for p in m.parameters())
    weights = layer_sizes[:]
    weights[0] += sum(p.numel() for p in model.embed_tokens.parameters())
    weights[-1] += head
    total, ranges, start, acc = sum(weights), [], 0, 0
    for stage in range(pp_size - 1):
        target = total * (stage + 1) / pp_size
        end = start + 1
        acc += weights[start]
        # Leave at least one layer for each remaining stage.
        while end < num_layers - (pp_size - stage - 1) and acc + weights[end] / 2 <= target:
            acc += weights[end]
            end += 1
        ranges.append(range(start, end))
        start = end
    ranges.append(range(start, num_layers))
    return ranges


def split_for_stage(model: nn.Module, stage: int, ranges: list[range]) -> nn.Module:
    """Keep only this stage's layers (names unchanged, so checkpoints stay layout-free)."""
    keep = {str(i) for i in ranges[stage]}
    for name in list(model.layers):
        if name not in keep:
            del model.layers[name]
    if stage > 0:
        model.embed_tokens = None
    if stage < len(ranges) - 1:
        model.norm = None
        model.lm_head = None
    return model


class _StageForward(nn.Module):
    """What a PipelineStage runs: tensor in, tensor out (logits or hidden states)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class PipelineRunner:
    """Runs one training step's micro-batches through the schedule."""

    def __init__(self, model: nn.Module, runtime, config) -> None:
        if config.pp_schedule not in SCHEDULES:
            raise ConfigError(f"pp_schedule: {config.pp_schedule!r} is not available yet (use gpipe or 1f1b)")
        if config.pp_schedule == "1f1b" and config.gradient_accumulation_steps < runtime.pp_size:
            raise ConfigError(f"gradient_accumulation_steps: 1f1b needs at least as many micro-batches as pipeline "
                              f"stages ({runtime.pp_size}), got {config.gradient_accumulation_steps}")
        self.runtime = runtime
        self.stage_index = runtime.pp_rank
        self.is_first = self.stage_index == 0
        self.is_last = self.stage_index == runtime.pp_size - 1
        self.stage = PipelineStage(_StageForward(model), self.stage_index, runtime.pp_size, runtime.device,
                                   group=runtime.pp_group)
        self.loss_weight = 1.0
        self.schedule = SCHEDULES[config.pp_schedule](self.stage, n_microbatches=config.gradient_accumulation_steps,
                                                      loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Summed per micro-batch and weighted by the global token count: the step's loss is the
        # mean over all trainable tokens of the global batch, as without pipelining.
        return causal_lm_loss(logits, labels, reduction="sum") * self.loss_weight

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor, loss_weight: float) -> float:
        """Forward and backward of every micro-batch; returns Σ loss contributions on the last
        stage (0 elsewhere)."""
        self.loss_weight = loss_weight
        losses: list[torch.Tensor] = []
        if self.is_first:
            self.schedule.step(input_ids, target=labels if self.is_last else None, losses=losses)
        elif self.is_last:
            self.schedule.step(target=labels, losses=losses)
        else:
            self.schedule.step()
        return float(sum(loss.detach() for loss in losses)) if losses else 0.0


class PipelinedModel(nn.Module):
    """The whole model seen from any stage: a plain stage-to-stage forward, logits broadcast
    to every stage, for evaluation and KV-cache generation."""

    def __init__(self, stage_model: nn.Module, runtime) -> None:
        super().__init__()
        self.stage_model = stage_model
        self.config = stage_model.config
        self.runtime = runtime

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                kv_cache=None) -> CausalLMOutput:
        rt, group = self.runtime, self.runtime.pp_group
        batch, seq = input_ids.shape
        x = input_ids
        if rt.pp_rank > 0:
            x = torch.empty(batch, seq, self.config.hidden_size, dtype=self._dtype(), device=rt.device)
            dist.recv(x, src=dist.get_global_rank(group, rt.pp_rank - 1), group=group)
        out = self.stage_model(x, attention_mask=attention_mask, position_ids=position_ids, kv_cache=kv_cache).logits
        last = rt.pp_size - 1
        if rt.pp_rank < last:
            dist.send(out.contiguous(), dst=dist.get_global_rank(group, rt.pp_rank + 1), group=group)
            out = torch.empty(batch, seq, self.config.vocab_size, dtype=self._dtype(), device=rt.device)
        dist.broadcast(out, src=dist.get_global_rank(group, last), group=group)
        loss = causal_lm_loss(out, labels) if labels is not None else None
        return CausalLMOutput(logits=out, loss=loss, kv_cache=kv_cache)

    def _dtype(self) -> torch.dtype:
        return next(self.stage_model.parameters()).dtype

    def new_kv_cache(self, max_len: int):
        return self.stage_model.new_kv_cache(max_len)

    generate = CollieModel.generate


def save_pipelined(stage_model: nn.Module, path: str, runtime) -> None:
    """HF export when each stage holds part of the model: tensor by tensor, the owning stage
    gathers its shards, its first rank sends the tensor to global rank 0, which writes."""
    from collie.models.base import family_of, full_tensor, save_hf_config
    from collie.models.hf_io import save_hf_tensors

    hf_config = stage_model.config
    adapter = family_of(hf_config)[1]
    with torch.device("meta"):
        whole = type(stage_model)(hf_config)
    shapes = {name: tuple(t.shape) for name, t in whole._hf_items()}
    local = dict(stage_model._hf_items())
    owners_by_stage: list = [None] * runtime.pp_size
    dist.all_gather_object(owners_by_stage, sorted(local), group=runtime.pp_group)
    owner = {name: stage for stage, names in enumerate(owners_by_stage) for name in names}
    group = runtime.pp_group
    first_of_stage = runtime.dp_rank == 0 and runtime.tp_rank == 0
    dtype = next(stage_model.parameters()).dtype

    def tensors():
        for name, shape in shapes.items():
            tensor = full_tensor(local[name], None) if owner[name] == runtime.pp_rank else None
            if owner[name] != 0 and first_of_stage:
                if runtime.pp_rank == owner[name]:
                    dist.send(tensor.contiguous(), dst=dist.get_global_rank(group, 0), group=group)
                elif runtime.pp_rank == 0:
                    tensor = torch.empty(shape, dtype=dtype)
                    dist.recv(tensor, src=dist.get_global_rank(group, owner[name]), group=group)
            yield adapter.to_hf(name), tensor

    if runtime.env.rank == 0:
        save_hf_tensors(path, tensors())
        save_hf_config(hf_config, path, adapter, dtype)
    else:
        for _ in tensors():  # take part in the gathers and sends, write nothing
            pass
