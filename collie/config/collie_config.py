"""`CollieConfig`: every knob of a training run, as plain data.

The schema is a dataclass; OmegaConf does the YAML parsing, the merging of
`key=value` overrides and the type checking, so a typo or a wrong type fails with
the name of the offending key. Model architecture is not duplicated here: it comes
from the HF `config.json` (`model_config`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from collie.config.errors import ConfigError
from collie.config.layout import Layout
from collie.config.peft_settings import PromptSettings, peft_settings
from collie.config.quantization import quant_settings
from collie.dtypes import DTYPES

OPTIMIZERS = ("adamw", "adam", "sgd", "lomo", "adalomo", "adan", "lion", "sophiag")
SCHEDULERS = ("constant", "linear", "cosine")
ZERO_STAGES = (0, 1, 2, 3)
PP_PARTITION_METHODS = ("uniform", "parameters")
PP_SCHEDULES = ("gpipe", "1f1b", "interleaved1f1b")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPE_CHOICES = ("auto", *DTYPES)
SINKS = ("console", "csv", "tensorboard", "plot", "wandb")
PADDING_SIDES = ("left", "right")
INIT_METHODS = ("normal", "xavier_normal", "kaiming_normal", "none")
# Fields that hold live objects (an HF config, a peft config) rather than YAML data.
_OBJECT_FIELDS = ("model_config", "peft_config", "quantization_config")


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.0
    clip_grad_norm: Optional[float] = None
    clip_grad_value: Optional[float] = None


@dataclass
class SchedulerConfig:
    name: str = "constant"
    warmup_steps: int = 0
    # Used when warmup_steps is 0: a fraction of the total number of steps.
    warmup_ratio: float = 0.0
    # Cosine/linear decay ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.0


@dataclass
class DataConfig:
    train_file: Optional[str] = None
    eval_file: Optional[str] = None
    max_length: int = 512
    # How many eval records (input/output format) also become generation samples.
    generation_samples: int = 0
    max_new_tokens: int = 32
    padding_side: str = "right"
    # Pack short training samples into rows of max_length (per-document attention and positions).
    packing: bool = False
    # A new random order of the training samples every epoch (seeded by `seed`); false keeps the
    # dataset's own order (curricula, data already shuffled offline, side-by-side comparisons).
    shuffle: bool = True


@dataclass
class ServeSection:
    """The OpenAI endpoint (and a Gradio page) answering from the weights being trained; requests
    are taken between steps. Off unless `port` is set."""
    port: Optional[int] = None
    host: str = "127.0.0.1"
    max_batch_size: int = 8
    max_queue: int = 64
    # A local Gradio page (prompt box, settings, answer, the step it came from) on this port.
    gradio_port: Optional[int] = None


@dataclass
class PeftSection:
    """Parameter-efficient fine-tuning from YAML (`peft.type=lora peft.r=8`); `peft_config`
    takes the same as a `peft` library config object."""

    # none | lora | prompt_tuning
    type: str = "none"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Module names (ours or the checkpoint's, e.g. q_proj or wqkv), a regular expression, or
    # "all-linear"; None: the attention query and value projections.
    target_modules: Optional[Any] = None
    # Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r.
    rslora: bool = False
    # Prompt tuning: trained input embeddings put before every sequence; initialised from the
    # embeddings of this text's tokens (repeated to length), or randomly when it is None.
    num_virtual_tokens: int = 20
    prompt_init_text: Optional[str] = None
    # An existing peft adapter directory to continue training from.
    adapter: Optional[str] = None


PEFT_TYPES = ("none", "lora", "prompt_tuning")


@dataclass
class CollieConfig:
    # -- model --------------------------------------------------------------
    model: Optional[str] = None
    # Random initialisation of a named LLaMA shape when `model` is not given.
    init_shape: Optional[str] = None
    tokenizer: Optional[str] = None
    # -- CoLLiE's table -----------------------------------------------------
    seed: int = 42
    dp_size: Optional[int] = None
    tp_size: int = 1
    pp_size: int = 1
    pp_partition_method: str = "uniform"
    train_epochs: int = 1
    eval_per_n_steps: int = 0
    eval_per_n_epochs: int = 0
    train_micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 1
    # Activation checkpointing: "none"; "full" recomputes whole blocks in backward; "selective"
    # keeps the matmul and attention outputs and recomputes only the cheap ops between them
    # (norms, activations, rotary, casts). true / false mean full / none.
    checkpointing: Any = "none"
    # With full or selective: checkpoint only every n-th block (1: all of them).
    checkpointing_every: int = 1
    # GPUs: what forward keeps for backward (with checkpointing, the blocks' inputs) waits in
    # pinned host memory instead of GPU memory, at the cost of the copies.
    activation_offload: bool = False
    use_flash: bool = True
    # torch.compile each decoder block (regional compilation: one compiled graph per block, so
    # it starts fast; parameter names are unchanged). Mostly a GPU speed-up.
    compile: bool = False
    dropout: float = 0.0
    init_method: str = "normal"
    low_cpu_mem_usage: bool = True
    model_config: Any = None
    peft_config: Any = None
    quantization_config: Any = None
    # -- what a modern trainer needs ----------------------------------------
    # > 0: train exactly this many optimizer steps, however many epochs that takes.
    max_steps: int = 0
    zero_stage: int = 0
    cpu_offload: bool = False
    sequence_parallel: bool = False
    # Tensor parallel: keep logits sharded by vocabulary and compute the loss on the shards
    # (never gathering batch × seq × vocab logits on one rank).
    loss_parallel: bool = False
    # > 0: the training loss is computed from the final hidden states this many tokens at a time:
    # each chunk's logits are made, reduced and dropped, and backward recomputes them one chunk at
    # a time, so [tokens × vocab] logits never exist whole. 0: from whole logits.
    loss_chunk_tokens: int = 0
    pp_schedule: str = "1f1b"
    # Pipeline stages per rank (interleaved1f1b needs >= 2: rank r runs stages r, r+pp, ...).
    pp_virtual_stages: int = 1
    mixed_precision: str = "no"
    # Storage dtype of the parameters ("auto" = float32). bfloat16 without fp32 master copies
    # is LOMO's memory mode.
    param_dtype: str = "auto"
    # Compute dtype ("auto": float32 on CPU for bf16/fp16 storage, since bf16 matmuls are slow
    # there, each layer upcasting its own weights; the storage dtype otherwise).
    compute_dtype: str = "auto"
    output_dir: Optional[str] = None
    checkpoint_every_n_steps: int = 0
    max_to_keep: int = 0
    # A checkpoint that cannot be written (full disk, no permission): "stop" training, or
    # "warn" and try again at the next checkpoint. Either way `latest` stays on a complete one.
    checkpoint_errors: str = "stop"
    # Stage checkpoints in host memory and write them in the background (training stalls only
    # for the staging); `latest` moves once a write has completed.
    checkpoint_async: bool = False
    # What a NaN/inf loss does: "stop" training, or "skip" that step's update.
    nan_policy: str = "stop"
    # Seconds a collective may wait for its peers before it fails (None: PyTorch's default, 10
    # minutes for gloo/NCCL): a dead or stalled rank then becomes an error naming the step, and
    # torchrun --max-restarts restarts the job.
    dist_timeout_s: Optional[float] = None
    # Tokenizers/configs that ship their own Python code run it only when this is set.
    trust_remote_code: bool = False
    log_every_n_steps: int = 1
    # console, csv (metrics.csv), tensorboard, plot (loss.png), wandb (optional package).
    logging: list[str] = field(default_factory=lambda: ["console", "csv", "tensorboard", "plot"])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    peft: PeftSection = field(default_factory=PeftSection)
    serve: ServeSection = field(default_factory=ServeSection)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, **overrides: Any) -> "CollieConfig":
        """A config whose `model_config` is the HF `config.json` found in `path`."""
        from transformers import AutoConfig

        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"model: no config.json in {path!r} (expected a Hugging Face model directory)")
        config = cls(model=path, **overrides)
        config.model_config = AutoConfig.from_pretrained(path, local_files_only=True)
        return config

    @classmethod
    def load(cls, yaml_path: Optional[str] = None, overrides: Optional[list[str]] = None) -> "CollieConfig":
        """Read a YAML file (optional) and apply `key=value` overrides (dotted keys for nesting)."""
        layers = [OmegaConf.structured(cls)]
        try:
            if yaml_path is not None:
                if not os.path.isfile(yaml_path):
                    raise ConfigError(f"config file not found: {yaml_path}")
                with open(yaml_path) as f:
                    data = yaml.safe_load(f) or {}
                if not isinstance(data, dict):
                    raise ConfigError(f"{yaml_path}: expected a mapping of config keys at the top level")
                layers.append(OmegaConf.create(data))
            for item in overrides or []:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form key=value")
            if overrides:
                layers.append(OmegaConf.from_dotlist(list(overrides)))
            merged = OmegaConf.merge(*layers)
            config = OmegaConf.to_object(merged)
        except OmegaConfBaseException as e:
            raise ConfigError(_one_line(e)) from None
        return config

    def apply_overrides(self, overrides: list[str]) -> "CollieConfig":
        """A copy of this config with `key=value` overrides applied (live objects are kept)."""
        base = OmegaConf.structured(self._plain())
        try:
            merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
            new = OmegaConf.to_object(merged)
        except OmegaConfBaseException as e:
            raise ConfigError(_one_line(e)) from None
        for name in _OBJECT_FIELDS:
            setattr(new, name, getattr(self, name))
        return new

    def to_dict(self) -> dict:
        """Plain data (no live objects): what `save` writes."""
        return dataclasses.asdict(self._plain())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(self.to_yaml())

    def _plain(self) -> "CollieConfig":
        return dataclasses.replace(self, **{name: None for name in _OBJECT_FIELDS})

    # -- validation ---------------------------------------------------------
    def validate(self, world_size: Optional[int] = None) -> None:
        """Raise `ConfigError` naming the first offending field."""
        _choice("optimizer.name", self.optimizer.name, OPTIMIZERS)
        _choice("scheduler.name", self.scheduler.name, SCHEDULERS)
        _choice("zero_stage", self.zero_stage, ZERO_STAGES)
        _choice("pp_partition_method", self.pp_partition_method, PP_PARTITION_METHODS)
        _choice("pp_schedule", self.pp_schedule, PP_SCHEDULES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("param_dtype", self.param_dtype, DTYPE_CHOICES)
        _choice("compute_dtype", self.compute_dtype, DTYPE_CHOICES)
        _choice("data.padding_side", self.data.padding_side, PADDING_SIDES)
        _choice("init_method", self.init_method, INIT_METHODS)
        _choice("nan_policy", self.nan_policy, ("stop", "skip"))
        _choice("checkpoint_errors", self.checkpoint_errors, ("stop", "warn"))
        for sink in self.logging:
            _choice("logging", sink, SINKS)
        for name in ("tp_size", "pp_size", "pp_virtual_stages", "train_micro_batch_size", "gradient_accumulation_steps",
                     "eval_batch_size", "train_epochs", "log_every_n_steps"):
            _at_least(name, getattr(self, name), 1)
        for name in ("max_steps", "eval_per_n_steps", "eval_per_n_epochs", "checkpoint_every_n_steps",
                     "max_to_keep"):
            _at_least(name, getattr(self, name), 0)
        if self.dp_size is not None:
            _at_least("dp_size", self.dp_size, 1)
        if self.dist_timeout_s is not None and self.dist_timeout_s <= 0:
            raise ConfigError(f"dist_timeout_s: must be > 0 seconds, got {self.dist_timeout_s}")
        _at_least("data.max_length", self.data.max_length, 2)
        _choice("checkpointing", checkpointing_mode(self.checkpointing), CHECKPOINTING)
        _at_least("checkpointing_every", self.checkpointing_every, 1)
        _at_least("loss_chunk_tokens", self.loss_chunk_tokens, 0)
        _at_least("serve.max_batch_size", self.serve.max_batch_size, 1)
        _at_least("serve.max_queue", self.serve.max_queue, 1)
        if self.serve.gradio_port is not None and self.serve.port is None:
            raise ConfigError("serve.gradio_port: the Gradio page talks to the OpenAI endpoint; set serve.port too")
        _at_least("scheduler.warmup_steps", self.scheduler.warmup_steps, 0)
        if not 0.0 <= self.scheduler.warmup_ratio < 1.0:
            raise ConfigError(f"scheduler.warmup_ratio: must be in [0, 1), got {self.scheduler.warmup_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.optimizer.lr <= 0:
            raise ConfigError(f"optimizer.lr: must be > 0, got {self.optimizer.lr}")
        if len(self.optimizer.betas) not in (2, 3):
            raise ConfigError(f"optimizer.betas: expected 2 values (3 for adan), got {list(self.optimizer.betas)}")
        prompt_tuning = self._validate_peft()
        quantized = quant_settings(self.quantization_config) is not None
        if quantized and self.peft.type != "lora" and self.peft_config is None:
            raise ConfigError("quantization_config: a 4-bit base trains through LoRA adapters; set peft.type=lora")
        if self.model is not None and self.init_shape is not None:
            raise ConfigError("model and init_shape: give one of them, not both")
        Layout.build(self, world_size, prompt_tuning=prompt_tuning, quantized=quantized)

    def _validate_peft(self) -> bool:
        """The PEFT fields; whether the run tunes a prompt (which limits the layout)."""
        peft = self.peft
        _choice("peft.type", peft.type, PEFT_TYPES)
        if self.peft_config is not None and peft.type != "none":
            raise ConfigError("peft_config and peft.type: give the adapter settings once, as a peft config object "
                              "or as the `peft:` section")
        _at_least("peft.r", peft.r, 1)
        if not 0.0 <= peft.dropout < 1.0:
            raise ConfigError(f"peft.dropout: must be in [0, 1), got {peft.dropout}")
        if peft.alpha <= 0:
            raise ConfigError(f"peft.alpha: must be > 0, got {peft.alpha}")
        _at_least("peft.num_virtual_tokens", peft.num_virtual_tokens, 1)
        # A peft object collie cannot honour fails here, by name.
        return isinstance(peft_settings(self), PromptSettings)

    def resolve_dp_size(self, world_size: int) -> int:
        """The data-parallel size for `world_size` processes; infers it when unset."""
        return Layout.build(self, world_size).dp


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}")


CHECKPOINTING = ("none", "full", "selective")


def checkpointing_mode(value: Any) -> str:
    """none / full / selective, from the config value (true and false mean full and none)."""
    if value is True:
        return "full"
    if value is False or value is None:
        return "none"
    return str(value).lower()


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name}: must be >= {low}, got {value}")


def _one_line(error: OmegaConfBaseException) -> str:
    """OmegaConf's messages span lines (message, full_key, object_type): fold them."""
    message = str(error).splitlines()[0].strip() if str(error) else type(error).__name__
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key else message
