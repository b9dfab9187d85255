"""The parallel layout of a run: its sizes and every rule a layout must follow, in one place.

A `Layout` is built once from the config, the world size and what is known of the model (its
dims, whether collie has a family for it, the PEFT method); every other room asks it for sizes
and never computes them itself. Each refusal is one line naming the setting to change. Device
meshes and process groups are made from it by `collie.distributed.runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from collie.config.errors import ConfigError


class ModelShape(Protocol):
    """The model dims a layout is checked against (`collie.models.spec.ModelDims` has them)."""
    layers: int
    heads: int
    kv_heads: int
    tied_embeddings: bool


@dataclass(frozen=True)
class ModelFacts:
    """What the layout must know of the model: its shape, and whether collie has a family for it
    (transformers' own classes run data parallel only)."""
    dims: ModelShape
    supports_model_parallel: bool = True
    model_type: str = ""


@dataclass(frozen=True)
class Layout:
    dp: int
    tp: int
    pp: int
    # Pipeline stages per pipeline rank (interleaved schedules run several).
    virtual_stages: int = 1
    zero_stage: int = 0
    sequence_parallel: bool = False
    loss_parallel: bool = False
    loss_chunk_tokens: int = 0
    pp_schedule: str = "1f1b"
    # How blocks are cut into stages: equal counts or balanced parameters.
    pp_partition: str = "uniform"

    # -- sizes ----------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def stages(self) -> int:
        """Pipeline stages in all (ranks × virtual stages)."""
        return self.pp * self.virtual_stages

    @property
    def pipelined(self) -> bool:
        return self.pp > 1

    @property
    def sequence_multiple(self) -> int:
        """Sequence parallel splits every sequence evenly over the tensor-parallel ranks."""
        return self.tp if self.sequence_parallel and self.tp > 1 else 1

    @property
    def uses_loss_parallel(self) -> bool:
        return self.loss_parallel and self.tp > 1

    @property
    def replicates_through_fsdp(self) -> bool:
        """Replicated data parallel (zero_stage 0) that must run as FSDP: DDP does not take
        tensor-parallel DTensor parameters, and hooks the rank's model, while a pipeline stage
        built as a view of it (virtual stages, the last stage computing a chunked loss) runs
        without those hooks."""
        return self.tp > 1 or self.virtual_stages > 1 or (self.pp > 1 and self.loss_chunk_tokens > 0)

    @property
    def uses_fsdp(self) -> bool:
        return self.dp > 1 and (self.zero_stage > 0 or self.replicates_through_fsdp)

    # -- construction ---------------------------------------------------------
    @classmethod
    def build(cls, config, world_size: Optional[int] = None, model: Optional[ModelFacts] = None,
              prompt_tuning: bool = False, quantized: bool = False) -> "Layout":
        """The layout `config` asks for on `world_size` processes (None: not launched yet, the
        data-parallel size is then the configured one or 1), checked against the model and the
        PEFT method where they are known."""
        layout = cls(dp=_dp_size(config, world_size), tp=config.tp_size, pp=config.pp_size,
                     virtual_stages=config.pp_virtual_stages, zero_stage=config.zero_stage,
                     sequence_parallel=config.sequence_parallel, loss_parallel=config.loss_parallel,
                     loss_chunk_tokens=config.loss_chunk_tokens, pp_schedule=config.pp_schedule,
                     pp_partition=config.pp_partition_method)
        layout._check_settings(config.data.max_length)
        if model is not None:
            layout._check_model(model)
        if prompt_tuning:
            layout._check_prompt_tuning()
        if quantized:
            layout._check_quantized()
        return layout

    # -- the rules -------------------------------------------------------------
    def _check_settings(self, max_length: int) -> None:
        interleaved = self.pp_schedule == "interleaved1f1b"
        if interleaved and self.pp > 1 and self.virtual_stages < 2:
            raise ConfigError("pp_virtual_stages: interleaved1f1b needs at least 2 stages per rank")
        if self.pp > 1 and not interleaved and self.virtual_stages > 1:
            raise ConfigError(f"pp_virtual_stages: {self.pp_schedule} runs one stage per rank; use "
                              "pp_schedule=interleaved1f1b")
        if self.sequence_parallel and max_length % self.tp:
            raise ConfigError(f"data.max_length: sequence parallel splits sequences evenly over tp_size "
                              f"({self.tp}) ranks, so it must be a multiple of it, got {max_length}")
        if self.loss_parallel and self.pp > 1:
            raise ConfigError("loss_parallel: not available with pipeline parallel yet (use pp_size=1)")
        if self.loss_chunk_tokens and self.sequence_parallel:
            raise ConfigError("loss_chunk_tokens: not available with sequence_parallel yet (set loss_chunk_tokens=0)")

    def _check_model(self, model: ModelFacts) -> None:
        dims, kind = model.dims, model.model_type or "this model type"
        if not model.supports_model_parallel and (self.tp > 1 or self.pp > 1):
            field = "tp_size" if self.tp > 1 else "pp_size"
            raise ConfigError(f"{field}: collie has no model family for {kind!r}, so it runs as transformers' own "
                              "class: data parallel and ZeRO only (use tp_size=1 and pp_size=1)")
        if dims.heads % self.tp or dims.kv_heads % self.tp:
            raise ConfigError(f"tp_size: {self.tp} must divide the attention heads ({dims.heads}) and "
                              f"key/value heads ({dims.kv_heads})")
        if self.stages > dims.layers:
            virtual = f" ({self.pp} × {self.virtual_stages} virtual)" if self.virtual_stages > 1 else ""
            raise ConfigError(f"pp_size: {self.stages} stages{virtual} but the model has only {dims.layers} layers")
        if self.loss_chunk_tokens and not model.supports_model_parallel:
            raise ConfigError(f"loss_chunk_tokens: {kind!r} runs as transformers' own class, which computes its "
                              "loss from whole logits (set loss_chunk_tokens=0)")
        if (self.tp > 1 or self.pp > 1) and dims.tied_embeddings:
            raise ConfigError("tie_word_embeddings: tied input/output embeddings cannot be split by tensor or "
                              "pipeline parallel yet (use tp_size=1 and pp_size=1 for this model)")

    def _check_prompt_tuning(self) -> None:
        if self.pp > 1:
            raise ConfigError("pp_size: prompt tuning runs with data and tensor parallel only (use pp_size=1)")
        if self.sequence_parallel:
            raise ConfigError("sequence_parallel: prompt tuning needs every rank to see the start of the "
                              "sequence; turn sequence_parallel off")

    def _check_quantized(self) -> None:
        for name, value, allowed in (("tp_size", self.tp, 1), ("pp_size", self.pp, 1),
                                     ("zero_stage", self.zero_stage, 0)):
            if value != allowed:
                raise ConfigError(f"{name}: QLoRA runs on one device or replicated data parallel (zero_stage 0); "
                                  f"4-bit weights cannot be split, got {name}={value}")

    def schedule_for(self, micro_batches: int) -> str:
        """The pipeline schedule a step of `micro_batches` runs. 1f1b with fewer micro-batches
        than stages is GPipe (its warm-up would already run every forward before any backward),
        so it runs as gpipe: CoLLiE's pipelines ran with gradient_accumulation_steps=1."""
        if self.pp_schedule == "interleaved1f1b" and micro_batches % self.pp:
            raise ConfigError(f"gradient_accumulation_steps: interleaved1f1b needs a multiple of pp_size "
                              f"({self.pp}) micro-batches, got {micro_batches}")
        if self.pp_schedule == "1f1b" and micro_batches < self.pp:
            return "gpipe"
        return self.pp_schedule

    def check_custom_step(self) -> None:
        """A user's train_fn runs forward and loss itself, which a pipeline schedule cannot host."""
        if self.pipelined:
            raise ConfigError("pp_size: a custom train_fn cannot run inside a pipeline schedule")

    def check_whole_model_optimizer(self) -> None:
        """An optimizer that runs extra forward/backward passes of its own (SophiaG's Hessian refresh)."""
        if self.pipelined:
            raise ConfigError("optimizer.name: SophiaG's Hessian refresh needs the whole model; use pp_size=1")

    def check_token_by_token(self, what: str) -> None:
        """Decoding one token at a time cannot split the sequence over ranks."""
        if self.sequence_parallel and self.tp > 1:
            raise ConfigError(f"sequence_parallel: {what} decodes token by token, which cannot split the "
                              "sequence over ranks; evaluate it without sequence_parallel")


def _dp_size(config, world_size: Optional[int]) -> int:
    """The configured dp_size when it fits the world; otherwise, as CoLLiE does, what fits:
    world size / (tp_size * pp_size) (`build_runtime` logs the change)."""
    model_parallel = config.tp_size * config.pp_size
    if world_size is None:
        return config.dp_size or 1
    if config.dp_size is not None and config.dp_size * model_parallel == world_size:
        return config.dp_size
    if world_size % model_parallel:
        raise ConfigError(f"tp_size*pp_size: {config.tp_size}*{config.pp_size}={model_parallel} does not divide "
                          f"the world size {world_size}")
    return world_size // model_parallel
