"""Pipeline parallel with `torch.distributed.pipelining`.

The model is cut into contiguous stages of decoder layers (the first stage keeps the
embedding, the last the final norm and LM head); each stage then gets the same tensor
parallel / checkpointing / FSDP treatment as a whole model. Training runs a schedule
(GPipe or 1F1B) over the step's micro-batches; evaluation and generation run a plain
stage-to-stage forward (`PipelinedModel`) so evaluators and `generate` work unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, ContextManager, Optional

import torch
import torch.distributed as dist
from torch import nn

from collie.generation import GenerationMixin
from collie.models.base import CausalLMOutput
from collie.models.hf_writer import write_hf_model
from collie.models.loss import IGNORE_INDEX, causal_lm_loss, count_loss_tokens, lm_head_loss
from collie.tensors import full_tensor, whole

log = logging.getLogger("collie")

def stage_layer_ranges(model: nn.Module, spec, num_stages: int, method: str) -> list[range]:
    """Contiguous block ranges, one per stage: equal block counts (`uniform`) or balanced
    parameter counts (`parameters`, the embedding counted on the first stage and the final
    norm and head on the last). Computed from the architecture (a meta copy), so a rank that
    has already dropped other stages' blocks gets the same answer."""
    with torch.device("meta"):
        model = type(model)(model.config)
    blocks = spec.blocks(model)
    num_blocks = len(blocks)
    if method == "uniform":
        bounds = [round(i * num_blocks / num_stages) for i in range(num_stages + 1)]
        return [range(bounds[i], bounds[i + 1]) for i in range(num_stages)]

    def size(module: Optional[nn.Module]) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    weights = [size(block) for block in blocks.values()]
    weights[0] += size(spec.edge(model, "embedding"))
    weights[-1] += size(spec.edge(model, "final_norm")) + size(spec.edge(model, "head"))
    total, ranges, start, acc = sum(weights), [], 0, 0
    for stage in range(num_stages - 1):
        target = total * (stage + 1) / num_stages
        end = start + 1
        acc += weights[start]
        # Leave at least one block for each remaining stage.
        while end < num_blocks - (num_stages - stage - 1) and acc + weights[end] / 2 <= target:
            acc += weights[end]
            end += 1
        ranges.append(range(start, end))
        start = end
    ranges.append(range(start, num_blocks))
    return ranges


def local_stages(pp_rank: int, pp_size: int, num_stages: int) -> list[int]:
    """The stages a rank runs: r, r + pp, r + 2·pp, … (the looped order interleaving expects)."""
    return list(range(pp_rank, num_stages, pp_size))


def split_for_stages(model: nn.Module, spec, stages: list[int], ranges: list[range]) -> None:
    """Keep only the blocks of this rank's stages (names unchanged, so checkpoints stay
    layout-free); the embedding stays with stage 0, the final norm and head with the last."""
    keep = {str(i) for stage in stages for i in ranges[stage]}
    blocks = spec.blocks(model)
    for name in [name for name in blocks if name not in keep]:
        del blocks[name]
    if 0 not in stages:
        spec.set_edge(model, "embedding", None)
    if len(ranges) - 1 not in stages:
        spec.set_edge(model, "final_norm", None)
        spec.set_edge(model, "head", None)


def stage_view(model: nn.Module, spec, blocks: range, first: bool, last: bool,
               head: Optional[bool] = None) -> nn.Module:
    """One stage of a rank that holds several (virtual stages): a model of the same class
    assembled from the rank's (already parallelized) submodules, with only that stage's
    blocks; the rank's model itself when it holds just this stage. `head=False` leaves the
    last stage's head out (it then returns the final hidden states)."""
    head = last if head is None else head
    own = spec.blocks(model)
    if len(own) == len(blocks) and (spec.edge(model, "embedding") is not None) == first and \
            (spec.edge(model, "final_norm") is not None) == last and (spec.edge(model, "head") is not None) == head:
        return model
    with torch.device("meta"):
        view = type(model)(model.config)
    setattr(view, spec.blocks_attr, nn.ModuleDict({str(i): own[str(i)] for i in blocks}))
    spec.set_edge(view, "embedding", spec.edge(model, "embedding") if first else None)
    spec.set_edge(view, "final_norm", spec.edge(model, "final_norm") if last else None)
    spec.set_edge(view, "head", spec.edge(model, "head") if head else None)
    view.compute_dtype, view.loss_chunk_tokens = model.compute_dtype, model.loss_chunk_tokens
    return view


def stage_views(model: nn.Module, spec, runtime, head: bool = True) -> list[tuple[int, nn.Module]]:
    layout = runtime.layout
    ranges = stage_layer_ranges(model, spec, layout.stages, layout.pp_partition)
    last = layout.stages - 1
    return [(s, stage_view(model, spec, ranges[s], s == 0, s == last, head and s == last))
            for s in local_stages(runtime.pp_rank, layout.pp, layout.stages)]


def stage_output(output: CausalLMOutput) -> torch.Tensor:
    """Logits from the last stage, hidden states from the others."""
    return output.logits if output.logits is not None else output.hidden_states


class _StageForward(nn.Module):
    """What a PipelineStage runs: tensor in, tensor out (logits or hidden states). The
    attention mask is a keyword argument: schedules hand keyword arguments to every stage
    (split into micro-batches like the input), while positional ones reach only the first.

    With a chunked loss (`head` given, on the last stage) the stage computes the micro-batch's
    summed loss itself from the final hidden states, so whole logits never exist; the labels
    come as a keyword argument, and the output is the loss as a 1-element tensor (the schedule
    concatenates the last stage's outputs)."""

    def __init__(self, model: nn.Module, head: Optional[nn.Module] = None, chunk_tokens: int = 0) -> None:
        super().__init__()
        self.model, self.head, self.chunk_tokens = model, head, chunk_tokens

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        output = self.model(x, attention_mask=attention_mask, position_ids=position_ids)
        if self.head is None:
            return stage_output(output)
        return lm_head_loss(output.hidden_states, self.head, labels, self.chunk_tokens, reduction="sum").reshape(1)


class PipelineRunner:
    """Runs one training step's micro-batches through the schedule."""

    def __init__(self, model: nn.Module, spec, runtime, micro: int,
                 forward_context: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        """`micro` micro-batches per step; `forward_context` gives the context the schedule runs
        in (bf16 autocast on GPUs, attention kernels)."""
        # Imported here, not at the top: torch.distributed.pipelining brings torch._dynamo (28 MB
        # resident, half a second), which only pipelined runs need.
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

        self.forward_context = forward_context
        layout = runtime.layout
        schedule = layout.schedule_for(micro)
        if schedule != layout.pp_schedule:
            log.info("pp_schedule %s: %d micro-batch(es) on %d stages is GPipe's order; running %s",
                     layout.pp_schedule, micro, layout.pp, schedule)
        self.runtime = runtime
        self.spec, self.hf_config = spec, model.config
        self.chunk_tokens = model.loss_chunk_tokens
        views = stage_views(model, spec, runtime, head=not self.chunk_tokens)
        num_stages = layout.stages
        self.is_first = views[0][0] == 0
        self.is_last = views[-1][0] == num_stages - 1
        chunked_head = spec.edge(model, "head") if self.chunk_tokens else None
        self.stages = [PipelineStage(_StageForward(view, chunked_head if index == num_stages - 1 else None,
                                                   self.chunk_tokens),
                                     index, num_stages, runtime.device, group=runtime.pp_group)
                       for index, view in views]
        self.loss_weight = 1.0
        # The step's loss function (None: collie's next-token loss) and the label it ignores; or
        # an objective's summed loss of a micro-batch's logits and target.
        self.loss_fn: Optional[Callable] = None
        self.summed_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
        self.ignore_index = IGNORE_INDEX
        if schedule == "interleaved1f1b":
            self.schedule = ScheduleInterleaved1F1B(self.stages, n_microbatches=micro, loss_fn=self._loss,
                                                    scale_grads=False)
        else:  # one stage per rank
            one_stage = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
            self.schedule = one_stage(self.stages[0], n_microbatches=micro, loss_fn=self._loss, scale_grads=False)

    def _loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Summed per micro-batch and weighted by the global token count: the step's loss is the
        # mean over all trainable tokens of the global batch, as without pipelining. A chunked
        # loss arrives already summed from the last stage. A user's loss function is a token mean
        # (as `run_micro_batches` takes it too), so its sum is the mean times the tokens.
        if self.summed_loss is not None:
            summed = self.summed_loss(output, labels)
        elif self.chunk_tokens:
            summed = output.sum()
        elif self.loss_fn is None:
            summed = causal_lm_loss(output, labels, self.ignore_index, reduction="sum")
        else:
            summed = self.loss_fn(output, labels) * count_loss_tokens(labels, self.ignore_index)
        return summed * self.loss_weight

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
             loss_weight: float, loss_fn: Optional[Callable] = None, ignore_index: int = IGNORE_INDEX,
             summed_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> float:
        """Forward and backward of every micro-batch; returns Σ loss contributions on the rank
        holding the last stage (0 elsewhere). `loss_fn(logits, labels)`: a token-mean loss of the
        user's (None: collie's next-token loss); `summed_loss(logits, labels)`, when given, is a
        micro-batch's summed loss instead (`labels` then being an objective's target)."""
        self.loss_weight, self.loss_fn, self.ignore_index = loss_weight, loss_fn, ignore_index
        self.summed_loss = summed_loss
        losses: list[torch.Tensor] = []
        # Keyword arguments reach every stage (split into micro-batches like the input).
        kwargs = {"attention_mask": attention_mask}
        if self.chunk_tokens:
            kwargs["labels"] = labels
        if self.spec.position_ids is not None:  # positions that depend on the tokens: every rank has them
            kwargs["position_ids"] = self.spec.position_ids(input_ids, attention_mask, self.hf_config)
        with self.forward_context():
            if self.is_first:
                self.schedule.step(input_ids, target=labels if self.is_last else None, losses=losses, **kwargs)
            elif self.is_last:
                self.schedule.step(target=labels, losses=losses, **kwargs)
            else:
                self.schedule.step(**kwargs)
        return float(sum(loss.detach() for loss in losses)) if losses else 0.0


class PipelinedModel(GenerationMixin, nn.Module):
    """The whole model seen from any rank: a plain stage-to-stage forward (activations sent
    to the rank of the next stage, virtual stages included), logits broadcast to every rank,
    for evaluation and KV-cache generation."""

    def __init__(self, stage_model: nn.Module, spec, runtime) -> None:
        super().__init__()
        self.stage_model = stage_model
        self.config = stage_model.config
        self.dims = spec.dims(self.config)
        self.runtime = runtime
        self.views = dict(stage_views(stage_model, spec, runtime))
        self.num_stages = runtime.layout.stages
        self.spec = spec

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                kv_cache=None, logits_to_keep: Optional[torch.Tensor] = None,
                skip_logits: bool = False) -> CausalLMOutput:
        """The model's forward (`skip_logits` with labels: the loss alone is returned; the logits
        still travel unless the last stage computes a chunked loss)."""
        rt, group = self.runtime, self.runtime.pp_group
        batch, seq = input_ids.shape
        chunked = labels is not None and kv_cache is None and self.loss_chunk_tokens > 0
        if position_ids is None and self.spec.position_ids is not None:
            position_ids = self.spec.position_ids(input_ids, attention_mask, self.config, kv_cache)
        x = None
        # Each stage's forward advances the cache; with several stages on this rank they must
        # all start from the same position.
        start = kv_cache.length if kv_cache is not None else 0
        for stage in range(self.num_stages):
            owner, prev_owner = stage % rt.pp_size, (stage - 1) % rt.pp_size
            if owner != rt.pp_rank:
                continue
            if stage == 0:
                x = input_ids
            elif prev_owner != rt.pp_rank:
                x = torch.empty((batch, seq, self.dims.hidden), dtype=self._dtype(), device=rt.device)
                dist.recv(x, src=dist.get_global_rank(group, prev_owner), group=group)
            if kv_cache is not None:
                kv_cache.length = start
            if chunked and stage == self.num_stages - 1:
                x = whole(self.views[stage](x, attention_mask=attention_mask, position_ids=position_ids,
                                            labels=labels).loss).to(torch.float64)
                continue
            # Sent and broadcast in one agreed dtype: under autocast a stage's output dtype is
            # autocast's choice, which the receiving buffer could not know.
            x = stage_output(self.views[stage](x, attention_mask=attention_mask, position_ids=position_ids,
                                               kv_cache=kv_cache, logits_to_keep=logits_to_keep)).to(self._dtype())
            next_owner = (stage + 1) % rt.pp_size
            if stage < self.num_stages - 1 and next_owner != rt.pp_rank:
                dist.send(x.contiguous(), dst=dist.get_global_rank(group, next_owner), group=group)
        if kv_cache is not None:
            kv_cache.length = start + seq
        last_owner = (self.num_stages - 1) % rt.pp_size
        if chunked:  # the last stage made the loss without whole logits: only the loss travels
            loss = x if rt.pp_rank == last_owner else torch.empty((), dtype=torch.float64, device=rt.device)
            dist.broadcast(loss, src=dist.get_global_rank(group, last_owner), group=group)
            return CausalLMOutput(logits=None, loss=loss, kv_cache=kv_cache)
        if rt.pp_rank != last_owner:
            kept = seq if logits_to_keep is None else len(logits_to_keep)
            x = torch.empty(batch, kept, self.dims.vocab, dtype=self._dtype(), device=rt.device)
        dist.broadcast(x, src=dist.get_global_rank(group, last_owner), group=group)
        loss = causal_lm_loss(x, labels) if labels is not None else None
        return CausalLMOutput(logits=None if skip_logits and loss is not None else x, loss=loss, kv_cache=kv_cache)

    @property
    def loss_chunk_tokens(self) -> int:
        return self.stage_model.loss_chunk_tokens

    def _dtype(self) -> torch.dtype:
        """What activations travel in: the compute dtype (the storage dtype under autocast)."""
        return self.stage_model.compute_dtype or next(self.stage_model.parameters()).dtype

    def new_kv_cache(self, max_len: int):
        return self.stage_model.new_kv_cache(max_len)


def save_pipelined(stage_model: nn.Module, spec, path: str, runtime, tokenizer=None) -> None:
    """HF export when each stage holds part of the model: tensor by tensor, the owning stage
    gathers its shards, its first rank sends the tensor to global rank 0, which writes."""
    hf_config = stage_model.config
    with torch.device("meta"):
        skeleton = type(stage_model)(hf_config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    state = stage_model.state_dict()
    local = stage_model.hf_state_names()
    owners_by_stage: list = [None] * runtime.pp_size
    dist.all_gather_object(owners_by_stage, sorted(local), group=runtime.pp_group)
    owner = {name: stage for stage, names in enumerate(owners_by_stage) for name in names}
    group = runtime.pp_group
    first_of_stage = runtime.dp_rank == 0 and runtime.tp_rank == 0
    dtype = next(stage_model.parameters()).dtype

    def fetch(name: str) -> Optional[torch.Tensor]:
        tensor = full_tensor(state[name]) if owner[name] == runtime.pp_rank else None
        if owner[name] != 0 and first_of_stage:
            if runtime.pp_rank == owner[name]:
                dist.send(tensor.contiguous(), dst=dist.get_global_rank(group, 0), group=group)
            elif runtime.pp_rank == 0:
                tensor = torch.empty(shapes[name], dtype=dtype)
                dist.recv(tensor, src=dist.get_global_rank(group, owner[name]), group=group)
        return tensor

    write_hf_model(path, stage_model.export_config or hf_config, spec, skeleton.hf_state_names(), fetch, dtype,
                   is_writer=runtime.env.rank == 0, tokenizer=tokenizer)
