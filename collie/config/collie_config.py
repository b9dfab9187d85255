"""`CollieConfig`: every knob of a training run, as plain data, in sections.

The schema is a dataclass of section dataclasses (`collie.config.sections`); OmegaConf does
the YAML parsing, the merging of `key=value` overrides and the type checking, so a typo or a
wrong type fails with the name of the offending key. CoLLiE's flat names are moved into their
sections before merging. Model architecture is not duplicated here: it comes from the HF
`config.json` (`model_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from collie.config import sections
from collie.config.deepspeed import apply_ds_config, check_batch_agreement, read_ds_config
from collie.config.errors import ConfigError
from collie.config.layout import Layout
from collie.config.model_path import read_model_config, resolve_model_path
from collie.config.peft_settings import PromptSettings, peft_settings
from collie.config.preference_settings import preference_settings
from collie.config.quantization import quant_settings
from collie.config.sections import FLAT_NAMES
from collie.dtypes import DTYPES
from collie.logs import show_collie_logs

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
# Fields that hold live objects (an HF config, a peft config) rather than YAML data; CoLLiE's
# ds_config is read into the sections when it is set, which are what a saved config holds.
_OBJECT_FIELDS = ("model_config", "peft_config", "quantization_config", "ds_config")
# CoLLiE's spellings of our settings.
_COLLIE_ALIASES = {"initization_method": "init_method"}
# CoLLiE's init_method {"init_func": torch.nn.init.<name>, "init_kwargs": {...}}: its functions,
# and the only kwargs that mean what collie's initialisations do.
_INIT_FUNCTIONS = {"normal_": "normal", "xavier_normal_": "xavier_normal", "kaiming_normal_": "kaiming_normal"}
_INIT_DEFAULT_KWARGS = ({}, {"mean": 0.0, "std": 0.02})
log = logging.getLogger("collie")
PEFT_TYPES = ("none", "lora", "prompt_tuning")


@dataclass(init=False)
class CollieConfig:
    """Every knob of a run, in sections (`config.parallel.tp_size`); CoLLiE's flat names
    (`config.tp_size`, `CollieConfig(tp_size=2)`, `tp_size: 2` in YAML) reach the same fields."""

    source: sections.SourceSection = field(default_factory=sections.SourceSection)
    parallel: sections.ParallelSection = field(default_factory=sections.ParallelSection)
    compute: sections.ComputeSection = field(default_factory=sections.ComputeSection)
    memory: sections.MemorySection = field(default_factory=sections.MemorySection)
    train: sections.TrainSection = field(default_factory=sections.TrainSection)
    checkpoint: sections.CheckpointSection = field(default_factory=sections.CheckpointSection)
    monitor: sections.MonitorSection = field(default_factory=sections.MonitorSection)
    optimizer: sections.OptimizerConfig = field(default_factory=sections.OptimizerConfig)
    scheduler: sections.SchedulerConfig = field(default_factory=sections.SchedulerConfig)
    data: sections.DataConfig = field(default_factory=sections.DataConfig)
    peft: sections.PeftSection = field(default_factory=sections.PeftSection)
    serve: sections.ServeSection = field(default_factory=sections.ServeSection)
    preference: sections.PreferenceSection = field(default_factory=sections.PreferenceSection)
    # Live objects rather than YAML data: the HF config, a peft config, transformers'
    # BitsAndBytesConfig (or a mapping of its fields).
    model_config: Any = None
    peft_config: Any = None
    quantization_config: Any = None
    # CoLLiE's DeepSpeed settings (a dict or a JSON path), translated into the sections above
    # when set (`collie.config.deepspeed`).
    ds_config: Any = None

    def __init__(self, **values: Any) -> None:
        show_collie_logs()
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING
                               else f.default)
        for name, value in values.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        name = _COLLIE_ALIASES.get(name, name)
        if name not in _FIELD_NAMES and name not in FLAT_NAMES:
            raise AttributeError(f"CollieConfig has no setting {name!r}")
        if name == "ds_config":
            value = read_ds_config(value)
            apply_ds_config(self, value)
        elif name == "init_method":
            value = _init_method_name(value)
        elif name == "pp_partition_method" and isinstance(value, str) and value.startswith("type:"):
            # CoLLiE's "type:<Layer>" balances the count of that layer type per stage, which for
            # collie's models (one block type) is the uniform split.
            log.info("pp_partition_method: %s splits the blocks evenly, as collie's 'uniform' does", value)
            value = "uniform"
        object.__setattr__(self, name, value)

    def replace(self, **values: Any) -> "CollieConfig":
        """A copy with `values` set (flat or section names); this config is left as it is."""
        new = copy.copy(self)
        for f in dataclasses.fields(self):
            if f.name not in _OBJECT_FIELDS:
                object.__setattr__(new, f.name, copy.deepcopy(getattr(self, f.name)))
        for name, value in values.items():
            setattr(new, name, value)
        return new

    # -- construction -------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> "CollieConfig":
        """A config whose `model_config` is the HF `config.json` of `name_or_path` (a directory,
        or a hub id in the local Hugging Face cache). As in CoLLiE, keyword arguments that are
        collie settings set them and the others set fields of the model config;
        `trust_remote_code` is accepted, and no checkpoint code is ever run."""
        show_collie_logs()
        if kwargs.pop("trust_remote_code", False):
            log.info("trust_remote_code: collie reads every family with its own code and never runs a "
                     "checkpoint's Python files")
        settings = {k: kwargs.pop(k) for k in list(kwargs) if _COLLIE_ALIASES.get(k, k) in _FIELD_NAMES | set(FLAT_NAMES)}
        path = resolve_model_path(name_or_path)
        config = cls(model=path, **settings)
        model_config = read_model_config(path)
        for name, value in kwargs.items():
            setattr(model_config, name, value)
        config.model_config = model_config
        return config

    @classmethod
    def load(cls, yaml_path: Optional[str] = None, overrides: Optional[list[str]] = None) -> "CollieConfig":
        """Read a YAML file (optional) and apply `key=value` overrides (dotted keys for nesting)."""
        layers = [OmegaConf.structured(cls)]
        try:
            if yaml_path is not None:
                data = _read_yaml(yaml_path)
                if not isinstance(data, dict):
                    raise ConfigError(f"{yaml_path}: expected a mapping of config keys at the top level")
                layers.append(OmegaConf.create(sectioned(data, yaml_path)))
            if overrides:
                layers.append(_override_layer(overrides))
            merged = OmegaConf.merge(*layers)
            config = OmegaConf.to_object(merged)
        except OmegaConfBaseException as e:
            raise ConfigError(_one_line(e)) from None
        return config

    def apply_overrides(self, overrides: list[str]) -> "CollieConfig":
        """A copy of this config with `key=value` overrides applied (live objects are kept)."""
        base = OmegaConf.structured(self._plain())
        try:
            merged = OmegaConf.merge(base, _override_layer(overrides))
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
        for name in ("eval_per_n_steps", "eval_per_n_epochs", "checkpoint_every_n_steps", "max_to_keep"):
            _at_least(name, getattr(self, name), 0)
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1; leave it out to train train_epochs (got {self.max_steps})")
        if self.dp_size is not None:
            _at_least("dp_size", self.dp_size, 1)
        if self.dist_timeout_s is not None and self.dist_timeout_s <= 0:
            raise ConfigError(f"dist_timeout_s: must be > 0 seconds, got {self.dist_timeout_s}")
        _at_least("data.max_length", self.data.max_length, 2)
        if self.data.num_workers:
            raise ConfigError(f"dataloader_num_workers: collie reads samples in the training process; set 0, "
                              f"got {self.data.num_workers}")
        if self.ds_config:
            check_batch_agreement(self, self.ds_config, world_size)
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
        preference_settings(self)
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


def _read_yaml(path: str) -> Any:
    """A YAML file's data; a file that is missing, not UTF-8 or not YAML is one line naming it (and
    the line where parsing stopped)."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: a directory, not a config file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return yaml.safe_load(raw.decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = ": ".join(str(part) for part in (getattr(e, "context", None), getattr(e, "problem", None)) if part)
        raise ConfigError(f"{where}: malformed YAML ({problem or type(e).__name__})") from None


def _init_method_name(value: Any) -> Any:
    """collie's name for an init method given CoLLiE's way (a dict naming a torch.nn.init function)."""
    if not isinstance(value, dict):
        return value
    function = getattr(value.get("init_func"), "__name__", value.get("init_func"))
    kwargs = dict(value.get("init_kwargs") or {})
    if function not in _INIT_FUNCTIONS or kwargs not in _INIT_DEFAULT_KWARGS:
        raise ConfigError(f"init_method: collie initialises with {', '.join(_INIT_FUNCTIONS)} (torch.nn.init) "
                          f"at the model config's initializer_range; got {function} with {kwargs}")
    return _INIT_FUNCTIONS[function]


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


def _flat_property(section: str, name: str) -> property:
    def get(config: CollieConfig) -> Any:
        return getattr(getattr(config, section), name)

    def set_(config: CollieConfig, value: Any) -> None:
        setattr(getattr(config, section), name, value)

    return property(get, set_, doc=f"CoLLiE's name for `{section}.{name}`.")


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(CollieConfig))
for _flat, (_section, _name) in FLAT_NAMES.items():
    setattr(CollieConfig, _flat, _flat_property(_section, _name))


def _override_layer(overrides: list[str]):
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    data = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.create(sectioned(data, "the overrides"))


def sectioned(data: dict, where: str) -> dict:
    """YAML or override data with CoLLiE's flat keys moved into their sections; a setting given
    both ways is refused by name."""
    out = {key: value for key, value in data.items() if key not in FLAT_NAMES}
    for key, value in data.items():
        if key not in FLAT_NAMES:
            continue
        section, name = FLAT_NAMES[key]
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: expected a mapping of its settings in {where}")
        if name in target:
            raise ConfigError(f"{key} and {section}.{name}: the same setting is given twice in {where}")
        target[name] = value
    return out
