"""CoLLiE's CollieConfig on collie: `ds_config` translated into collie's settings (or refused by
name), hub ids read from the local Hugging Face cache, CoLLiE's spellings and init methods."""

import json
import logging

import pytest
import torch
from helpers import hub_cache_with

from collie import CollieConfig, ConfigError
from collie.models import CollieModel

SEED_DS_CONFIG = {
    "fp16": {"enabled": True},
    "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False}},
    "monitor_config": {"enabled": True, "tag": "adan", "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}


def test_the_seed_ds_config_becomes_collies_settings(caplog):
    config = CollieConfig(train_micro_batch_size=16)
    with caplog.at_level(logging.INFO, logger="collie"):
        config.ds_config = SEED_DS_CONFIG
    assert (config.mixed_precision, config.zero_stage, config.cpu_offload) == ("fp16", 3, True)
    assert "csv" in config.logging and config.monitor.dir.startswith("./ds_logs/adan20")
    assert "zero_allow_untested_optimizer, zero_force_ds_cpu_optimizer tune DeepSpeed's own engine" in caplog.text
    assert "fp16 mixed precision" in caplog.text
    config.validate(world_size=2)
    # A saved config holds what the ds_config meant.
    assert config.to_dict()["parallel"]["zero_stage"] == 3 and not config.to_dict()["ds_config"]


def test_ds_config_from_a_json_file_with_clipping_bf16_wandb_and_tensorboard(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}, "gradient_clipping": 1.5,
                                "zero_optimization": {"stage": 2, "offload_param": {"device": "none"}},
                                "monitor_config": {"tag": "run", "tensorboard": {"enabled": True, "output_path": "tb/"},
                                                   "wandb": {"enabled": True, "team": "t", "group": "g",
                                                             "project": "p"}}}))
    config = CollieConfig(ds_config=str(path))
    assert (config.mixed_precision, config.zero_stage, config.cpu_offload) == ("bf16", 2, False)
    assert config.optimizer.clip_grad_norm == 1.5
    assert {"tensorboard", "wandb"} <= set(config.logging) and config.monitor.dir == "tb/run"
    assert (config.monitor.wandb_project, config.monitor.wandb_entity, config.monitor.wandb_group) == ("p", "t", "g")


@pytest.mark.parametrize("ds,message", [
    ({"optimizer": {"type": "Adam"}, "fp16": {"enabled": True}},
     "ds_config: collie does not support optimizer (supported: "),
    ({"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "nvme"}}},
     "ds_config.zero_optimization offload device 'nvme': collie offloads to cpu only"),
    ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "ds_config: fp16 and bf16 are both enabled"),
    ({"fp16": {"enabled": True, "fp16_master_weights_and_grads": True}},
     "ds_config.fp16: collie does not support fp16_master_weights_and_grads"),
    ({"monitor_config": {"comet": {"enabled": True}}}, "ds_config.monitor_config: collie does not support comet"),
    (3, "ds_config: expected a dict or a JSON file path, got int"),
    ("missing.json", "ds_config: file not found: missing.json"),
])
def test_what_collie_cannot_honour_in_a_ds_config_is_refused_by_name(ds, message):
    with pytest.raises(ConfigError) as refused:
        CollieConfig().ds_config = ds
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_ds_config_batch_sizes_must_agree_with_the_config():
    config = CollieConfig(train_micro_batch_size=4, ds_config={"train_micro_batch_size_per_gpu": 4,
                                                              "gradient_accumulation_steps": 1})
    config.validate(world_size=1)
    config.gradient_accumulation_steps = 2
    with pytest.raises(ConfigError, match=r"ds_config.gradient_accumulation_steps=1 disagrees with "
                                          r"gradient_accumulation_steps=2; set gradient_accumulation_steps only"):
        config.validate()
    config = CollieConfig(train_micro_batch_size=4, ds_config={"train_batch_size": 16})
    config.validate(world_size=4)
    with pytest.raises(ConfigError, match=r"train_batch_size=16 disagrees .* = 8"):
        config.validate(world_size=2)


def test_a_hub_id_resolves_from_the_local_cache_and_trust_remote_code_is_said_once(tmp_path, monkeypatch, caplog):
    snapshot = hub_cache_with(tmp_path / "hf", "fnlp/moss-moon-003-sft", "moss")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with caplog.at_level(logging.INFO, logger="collie"):
        config = CollieConfig.from_pretrained("fnlp/moss-moon-003-sft", trust_remote_code=True, tp_size=1,
                                              n_positions=64)
    assert config.model == snapshot and config.model_config.model_type == "moss"
    assert config.model_config.n_positions == 64  # CoLLiE passed other keywords to the model config
    assert caplog.text.count("never runs a checkpoint's Python files") == 1
    model = CollieModel.from_pretrained("fnlp/moss-moon-003-sft", config=config)
    assert model.source == snapshot
    reference = CollieModel.from_pretrained(snapshot)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(ConfigError, match=r"model: 'org/absent' is neither a directory nor in the Hugging Face cache "
                                          r"\(.*hf\); collie downloads nothing"):
        CollieConfig.from_pretrained("org/absent")


def test_collies_spellings_init_methods_and_partitions():
    config = CollieConfig(initization_method={"init_func": torch.nn.init.xavier_normal_, "init_kwargs": {}})
    assert config.init_method == "xavier_normal"
    config.init_method = {"init_func": torch.nn.init.normal_, "init_kwargs": {"mean": 0.0, "std": 0.02}}
    assert config.init_method == "normal"
    with pytest.raises(ConfigError, match="init_method: collie initialises with normal_, xavier_normal_, "
                                          "kaiming_normal_"):
        config.init_method = {"init_func": torch.nn.init.uniform_, "init_kwargs": {}}
    config.pp_partition_method = "type:LlamaLayer"
    assert config.pp_partition_method == "uniform"
    config.dataloader_num_workers = 2
    with pytest.raises(ConfigError, match="dataloader_num_workers: collie reads samples in the training process"):
        config.validate()
    with pytest.raises(AttributeError, match="CollieConfig has no setting 'vocab_sizes'"):
        config.vocab_sizes = 3
