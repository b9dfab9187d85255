import pytest

from collie import CollieConfig, ConfigError


def test_yaml_round_trip_and_overrides(tmp_path):
    config = CollieConfig.load(None, ["optimizer.lr=0.01", "max_steps=5", "tp_size=2", "logging=[csv]"])
    assert (config.optimizer.lr, config.max_steps, config.tp_size, config.logging) == (0.01, 5, 2, ["csv"])
    config.save(str(tmp_path / "c.yaml"))
    again = CollieConfig.load(str(tmp_path / "c.yaml"), ["seed=7"])
    assert again.optimizer.lr == 0.01 and again.seed == 7 and again.max_steps == 5


def test_apply_overrides_keeps_live_objects():
    config = CollieConfig(model_config=object())
    new = config.apply_overrides(["seed=3"])
    assert new.seed == 3 and new.model_config is config.model_config


@pytest.mark.parametrize("overrides, message", [
    (["max_steps=abc"], "max_steps: Value 'abc'"),
    (["no_such_key=1"], "no_such_key: Key 'no_such_key' not in 'CollieConfig'"),
    (["optimizer.bogus=1"], "optimizer.bogus"),
    (["lr"], "not of the form key=value"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        CollieConfig.load(None, overrides)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.name=adamx"], "optimizer.name: 'adamx' is not one of"),
    (["zero_stage=4"], "zero_stage: 4 is not one of"),
    (["train_micro_batch_size=0"], "train_micro_batch_size: must be >= 1"),
    (["scheduler.name=step"], "scheduler.name"),
    (["logging=[console,mlflow]"], "logging: 'mlflow' is not one of console, csv, tensorboard, plot, wandb"),
    (["optimizer.lr=0"], "optimizer.lr: must be > 0"),
    (["model=x", "init_shape=tiny"], "give one of them"),
    (["peft_config={peft_type: LORA, r: 8}"], "peft_config: takes a peft config object .* use the `peft:` section"),
    (["peft.type=lora", "peft.dropout=1.5"], r"peft.dropout: must be in \[0, 1\), got 1.5"),
    (["quantization_config={load_in_4bit: true}"], "quantization_config: a 4-bit base trains through LoRA"),
    (["quantization_config={load_in_8bit: true}"], "quantization_config.load_in_8bit: 8-bit weights are not"),
    (["quantization_config={load_in_4bit: true}", "peft.type=lora", "tp_size=2"],
     "tp_size: QLoRA runs on one device or replicated data parallel"),
    (["tp_size=2", "sequence_parallel=true", "data.max_length=7"], "data.max_length: .* multiple of it, got 7"),
    (["param_dtype=float8"], "param_dtype: 'float8' is not one of auto, float32, bfloat16, float16, float64"),
])
def test_validate_names_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        CollieConfig.load(None, overrides).validate()


def test_dp_size_follows_the_world_as_in_collie():
    config = CollieConfig(dp_size=2, tp_size=2)
    assert config.resolve_dp_size(4) == 2
    # CoLLiE's scripts say dp_size=1 and launch more ranks: dp is world / (tp * pp).
    assert config.resolve_dp_size(2) == 1
    assert CollieConfig(dp_size=1, tp_size=2).resolve_dp_size(8) == 4
    assert CollieConfig(tp_size=2).resolve_dp_size(8) == 4
    with pytest.raises(ConfigError, match="does not divide the world size 3"):
        CollieConfig(tp_size=2).resolve_dp_size(3)


def test_from_pretrained_reads_hf_config(tmp_path):
    from helpers import save_tiny_hf_model

    save_tiny_hf_model(str(tmp_path))
    config = CollieConfig.from_pretrained(str(tmp_path))
    assert config.model_config.hidden_size == 64
    with pytest.raises(ConfigError, match="no config.json"):
        CollieConfig.from_pretrained(str(tmp_path / "missing"))


def test_missing_yaml_file():
    with pytest.raises(ConfigError, match="config file not found"):
        CollieConfig.load("/nonexistent/cfg.yaml")


def test_every_optimizer_name_has_one_builder():
    from collie.config import OPTIMIZERS
    from collie.trainer.optim_factory import OPTIMIZER_TABLE

    assert tuple(OPTIMIZER_TABLE) == OPTIMIZERS


def test_the_layout_holds_the_sizes_the_rest_asks_for():
    from collie.config import Layout

    layout = Layout.build(CollieConfig(tp_size=2, pp_size=2, pp_virtual_stages=2, pp_schedule="interleaved1f1b",
                                       sequence_parallel=True), world_size=8)
    assert (layout.dp, layout.tp, layout.pp, layout.stages, layout.world_size) == (2, 2, 2, 4, 8)
    assert layout.sequence_multiple == 2 and layout.uses_fsdp and layout.replicates_through_fsdp
    plain = Layout.build(CollieConfig(), world_size=2)
    assert plain.dp == 2 and not plain.uses_fsdp and plain.sequence_multiple == 1
    with pytest.raises(ConfigError, match="pp_virtual_stages: 1f1b runs one stage per rank"):
        Layout.build(CollieConfig(pp_size=2, pp_virtual_stages=2), world_size=2)
