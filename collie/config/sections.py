"""The sections of a `CollieConfig`, each a typed dataclass handed to the code that needs it,
and the table of CoLLiE's flat names (`tp_size`, `output_dir`, …) → where they live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class SourceSection:
    """Where the model and tokenizer come from."""
    # An HF model directory (or its URL).
    model: Optional[str] = None
    # Random initialisation of a named shape when `model` is not given.
    init_shape: Optional[str] = None
    tokenizer: Optional[str] = None
    init_method: str = "normal"
    # Build on the meta device and copy each checkpoint tensor into place (peak ≈ one model).
    low_cpu_mem_usage: bool = True
    # Tokenizers/configs that ship their own Python code run it only when this is set.
    trust_remote_code: bool = False
    # Attention dropout while training (never written into an export).
    dropout: float = 0.0


@dataclass
class ParallelSection:
    """The layout: `dp_size * tp_size * pp_size == world size` (dp inferred when unset)."""
    dp_size: Optional[int] = None
    tp_size: int = 1
    pp_size: int = 1
    pp_partition_method: str = "uniform"
    pp_schedule: str = "1f1b"
    # Pipeline stages per rank (interleaved1f1b needs >= 2: rank r runs stages r, r+pp, ...).
    pp_virtual_stages: int = 1
    zero_stage: int = 0
    cpu_offload: bool = False
    sequence_parallel: bool = False
    # Tensor parallel: keep logits sharded by vocabulary and compute the loss on the shards
    # (never gathering batch × seq × vocab logits on one rank).
    loss_parallel: bool = False
    # Seconds a collective may wait for its peers before it fails (None: PyTorch's default, 10
    # minutes for gloo/NCCL): a dead or stalled rank then becomes an error naming the step, and
    # torchrun --max-restarts restarts the job.
    dist_timeout_s: Optional[float] = None


@dataclass
class ComputeSection:
    """Dtypes, kernels and compilation."""
    # Storage dtype of the parameters ("auto" = float32). bfloat16 without fp32 master copies
    # is LOMO's memory mode.
    param_dtype: str = "auto"
    # Compute dtype ("auto": float32 on CPU for bf16/fp16 storage, since bf16 matmuls are slow
    # there, each layer upcasting its own weights; the storage dtype otherwise).
    compute_dtype: str = "auto"
    mixed_precision: str = "no"
    use_flash: bool = True
    # torch.compile each decoder block (regional compilation: one compiled graph per block, so
    # it starts fast; parameter names are unchanged). Mostly a GPU speed-up.
    compile: bool = False


@dataclass
class MemorySection:
    """What is kept for backward and how the loss is computed."""
    # Activation checkpointing: "none"; "full" recomputes whole blocks in backward; "selective"
    # keeps the matmul and attention outputs and recomputes only the cheap ops between them
    # (norms, activations, rotary, casts). true / false mean full / none.
    checkpointing: Any = "none"
    # With full or selective: checkpoint only every n-th block (1: all of them).
    checkpointing_every: int = 1
    # GPUs: what forward keeps for backward (with checkpointing, the blocks' inputs) waits in
    # pinned host memory instead of GPU memory, at the cost of the copies.
    activation_offload: bool = False
    # > 0: the training loss is computed from the final hidden states this many tokens at a time:
    # each chunk's logits are made, reduced and dropped, and backward recomputes them one chunk at
    # a time, so [tokens × vocab] logits never exist whole. 0: from whole logits.
    loss_chunk_tokens: int = 0


@dataclass
class TrainSection:
    """The loop: batches, steps, evaluation, where the run writes."""
    seed: int = 42
    output_dir: Optional[str] = None
    train_epochs: int = 1
    # Set: train exactly this many optimizer steps, however many epochs that takes (None: train_epochs).
    max_steps: Optional[int] = None
    train_micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 1
    eval_per_n_steps: int = 0
    eval_per_n_epochs: int = 0
    # What a NaN/inf loss does: "stop" training, or "skip" that step's update.
    nan_policy: str = "stop"


@dataclass
class CheckpointSection:
    every_n_steps: int = 0
    max_to_keep: int = 0
    # A checkpoint that cannot be written (full disk, no permission): "stop" training, or
    # "warn" and try again at the next checkpoint. Either way `latest` stays on a complete one.
    errors: str = "stop"
    # Stage checkpoints in host memory and write them in the background (training stalls only
    # for the staging); `latest` moves once a write has completed.
    background: bool = False


@dataclass
class MonitorSection:
    # console, csv (metrics.csv), tensorboard, plot (loss.png), wandb (optional package).
    sinks: list[str] = field(default_factory=lambda: ["console", "csv", "tensorboard", "plot"])
    log_every_n_steps: int = 1
    # Where metrics.csv, tensorboard/ and loss.png go (None: output_dir). CoLLiE's
    # ds_config.monitor_config sets it to its output_path/<job name>.
    dir: Optional[str] = None
    # W&B's project (None: $WANDB_PROJECT or "collie"), team and group.
    wandb_project: Optional[str] = None
    wandb_entity: Optional[str] = None
    wandb_group: Optional[str] = None


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
    # CoLLiE's `dataloader_num_workers`: collie reads samples in the training process (0 only).
    num_workers: int = 0


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


@dataclass
class PreferenceSection:
    """Preference training: setting `loss` makes `collie train` read {"prompt", "chosen",
    "rejected"} records and train on pairs (`collie.preference`)."""

    # dpo | ipo | hinge | simpo | orpo (None: ordinary next-token training).
    loss: Optional[str] = None
    # DPO/IPO/hinge/SimPO temperature (IPO's tau).
    beta: float = 0.1
    # cDPO's conservative label smoothing (dpo and simpo).
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    # precomputed (one pass of the initial model before step 1, cached in output_dir), model (a
    # frozen copy; under LoRA the base with adapters off), none (simpo, orpo). None: precomputed
    # for the losses that need a reference, none for the others.
    reference: Optional[str] = None


# CoLLiE's flat names (and collie's YAML keys before sections) → (section, field). They work as
# attributes (`config.tp_size = 2`), constructor arguments, YAML keys and `key=value` overrides.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{name: ("source", name) for name in ("model", "init_shape", "tokenizer", "init_method", "low_cpu_mem_usage",
                                          "trust_remote_code", "dropout")},
    **{name: ("parallel", name) for name in ("dp_size", "tp_size", "pp_size", "pp_partition_method", "pp_schedule",
                                            "pp_virtual_stages", "zero_stage", "cpu_offload", "sequence_parallel",
                                            "loss_parallel", "dist_timeout_s")},
    **{name: ("compute", name) for name in ("param_dtype", "compute_dtype", "mixed_precision", "use_flash",
                                           "compile")},
    **{name: ("memory", name) for name in ("checkpointing", "checkpointing_every", "activation_offload",
                                          "loss_chunk_tokens")},
    **{name: ("train", name) for name in ("seed", "output_dir", "train_epochs", "max_steps", "train_micro_batch_size",
                                         "gradient_accumulation_steps", "eval_batch_size", "eval_per_n_steps",
                                         "eval_per_n_epochs", "nan_policy")},
    "checkpoint_every_n_steps": ("checkpoint", "every_n_steps"),
    "max_to_keep": ("checkpoint", "max_to_keep"),
    "checkpoint_errors": ("checkpoint", "errors"),
    "checkpoint_async": ("checkpoint", "background"),
    "logging": ("monitor", "sinks"),
    "log_every_n_steps": ("monitor", "log_every_n_steps"),
    "dataloader_num_workers": ("data", "num_workers"),
}
